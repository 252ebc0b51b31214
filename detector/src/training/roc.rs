//! ROC analysis of window scores against labels: AUC, the threshold that maximises
//! Youden's J (TPR - FPR), and precision/recall/F1 at a given threshold. A window is
//! anomalous when its score is strictly above the threshold.

use serde::Serialize;

/// The area under the ROC curve (the Mann-Whitney U statistic, ties counted half), or
/// `None` when one class is absent.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// A point of the ROC curve chosen as the operating threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct YoudenPoint {
    pub threshold: f64,
    pub youden_j: f64,
    pub tpr: f64,
    pub fpr: f64,
}

/// The threshold that maximises TPR - FPR. It lies halfway between the lowest score
/// flagged and the next lower score, so small numeric differences do not flip a decision;
/// among equal J the highest threshold (fewest false alarms) wins. `None` when one class
/// is absent.
pub fn best_youden(scores: &[f64], labels: &[bool]) -> Option<YoudenPoint> {
    best_youden_within(scores, labels, 1.0)
}

/// [`best_youden`] among the ROC points whose false-positive rate is at most `max_fpr`:
/// a needless repair costs more than a later one, so the operating point may not flag
/// more than that share of normal windows. `None` also when no point qualifies.
pub fn best_youden_within(scores: &[f64], labels: &[bool], max_fpr: f64) -> Option<YoudenPoint> {
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut best: Option<YoudenPoint> = None;
    let mut i = 0;
    while i < order.len() {
        let cut = scores[order[i]];
        while i < order.len() && scores[order[i]] == cut {
            if labels[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        let below = order.get(i).map(|&k| scores[k]);
        let threshold = match below {
            Some(next) => (cut + next) / 2.0,
            None => cut - cut.abs().max(1e-12) * 1e-6,
        };
        let point = YoudenPoint {
            threshold,
            youden_j: tp / positives - fp / negatives,
            tpr: tp / positives,
            fpr: fp / negatives,
        };
        if point.fpr <= max_fpr && best.is_none_or(|b| point.youden_j > b.youden_j) {
            best = Some(point);
        }
    }
    best
}

/// How a threshold does on labelled windows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Confusion {
    pub true_positives: usize,
    pub false_positives: usize,
    pub true_negatives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn confusion(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
    let (mut tp, mut fp, mut tn, mut fneg) = (0, 0, 0, 0);
    for (&s, &l) in scores.iter().zip(labels) {
        match (s > threshold, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fneg += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fneg);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Confusion {
        true_positives: tp,
        false_positives: fp,
        true_negatives: tn,
        false_negatives: fneg,
        precision,
        recall,
        f1,
    }
}

/// The `q` quantile (0..=1) by linear interpolation; `None` for no values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_reversed_and_tied_scores() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn auc_of_a_hand_computed_example() {
        // Pairs (positive, negative): (0.35,0.1) win, (0.35,0.4) loss, (0.8,*) two wins: 3/4.
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [false, false, true, true];
        assert!((auc(&scores, &labels).unwrap() - 0.75).abs() < 1e-12);
        // One tie between a positive and a negative counts half: (1 + 0.5 + 1 + 1) / 4.
        let scores = [0.1, 0.4, 0.4, 0.8];
        assert!((auc(&scores, &labels).unwrap() - 0.875).abs() < 1e-12);
    }

    #[test]
    fn youden_picks_the_separating_threshold() {
        let scores = [0.1, 0.2, 0.3, 0.7, 0.9];
        let labels = [false, false, false, true, true];
        let best = best_youden(&scores, &labels).unwrap();
        assert!((best.threshold - 0.5).abs() < 1e-12, "{best:?}");
        assert_eq!((best.youden_j, best.tpr, best.fpr), (1.0, 1.0, 0.0));
        let c = confusion(&scores, &labels, best.threshold);
        assert_eq!((c.precision, c.recall, c.f1), (1.0, 1.0, 1.0));
    }

    #[test]
    fn youden_prefers_fewer_false_alarms_among_equal_j() {
        // Cutting below 0.8 and below 0.35 both give J = 0.5; the higher one wins.
        let best = best_youden(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((best.threshold - 0.6).abs() < 1e-12, "{best:?}");
        assert!((best.youden_j - 0.5).abs() < 1e-12);
    }

    #[test]
    fn confusion_counts_strictly_above() {
        let c = confusion(&[1.0, 2.0, 3.0], &[false, true, true], 2.0);
        assert_eq!(
            (c.true_positives, c.false_negatives, c.true_negatives),
            (1, 1, 1)
        );
        assert_eq!((c.precision, c.recall), (1.0, 0.5));
        assert!((c.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(4.0));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_false_positive_cap_moves_the_threshold_up() {
        // Positives 5..=9 mostly above the negatives 0..=9, with two negatives high.
        let scores = [9.0, 8.5, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2];
        let labels = [
            false, true, true, false, true, true, false, false, false, false, true, false,
        ];
        let free = best_youden(&scores, &labels).unwrap();
        let capped = best_youden_within(&scores, &labels, 0.15).unwrap();
        assert!(capped.fpr <= 0.15, "{capped:?}");
        assert!(free.fpr > 0.15, "{free:?}");
        assert!(capped.threshold > free.threshold);
        assert!(capped.youden_j <= free.youden_j);
        assert!(best_youden_within(&scores, &labels, 0.0).is_none_or(|p| p.fpr == 0.0));
    }
}
