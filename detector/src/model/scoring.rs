//! From a raw window to a score: fill masked (defrag) steps, normalise, and turn a
//! reconstruction into the mean squared error and each feature's share of it. The candle
//! model, the fused forward and the numpy reference all go through these same rules.

use serde::{Deserialize, Serialize};

use crate::model::normalisation::Normalisation;
use crate::model::transform::Transform;

/// A window's anomaly score and which features drove it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean squared reconstruction error over the unmasked steps and all features.
    pub score: f64,
    /// Each feature's share of the error (sums to 1 unless the error is 0).
    pub feature_shares: Vec<f64>,
    pub masked_steps: usize,
    /// Format 2 with a fast alert: the largest calibrated error of the features that
    /// alert watches (`scoring_v2.fast_alert.features`).
    pub fast_score: Option<f64>,
}

/// Replaces masked steps by the nearest earlier unmasked step (or the first later one at
/// the start), so the encoder sees etcd's state around the defrag, not the defrag itself.
/// Returns `None` when every step is masked.
pub fn fill_masked(values: &[f64], mask: &[bool], n_features: usize) -> Option<Vec<f64>> {
    let first = mask.iter().position(|&m| !m)?;
    let mut out = values.to_vec();
    let mut source = first;
    for (step, &masked) in mask.iter().enumerate() {
        if masked {
            let (dst, src) = (step * n_features, source * n_features);
            out.copy_within(src..src + n_features, dst);
        } else {
            source = step;
        }
    }
    Some(out)
}

/// `mask` with the `lead` steps before each masked run masked too. A maintenance defrag
/// follows a compaction, whose writes grow the db a step before the defrag shows: left
/// unmasked, that step would fill the masked run after it and hold an alarm. Only steps
/// inside the window move, so the newest step is never masked for a run not yet seen
/// (serving cannot know it), and a window scores the same live and offline.
pub fn lead_mask(mask: &[bool], lead: usize) -> Vec<bool> {
    let mut out = mask.to_vec();
    for (step, _) in mask.iter().enumerate().filter(|&(_, &m)| m) {
        for before in out.iter_mut().take(step).skip(step.saturating_sub(lead)) {
            *before = true;
        }
    }
    out
}

/// The model's input for a raw step-major window: masked steps filled, then normalised.
pub fn prepare(values: &[f64], mask: &[bool], norm: &Normalisation) -> Option<Vec<f32>> {
    let filled = fill_masked(values, mask, norm.n_features())?;
    Some(norm.apply(&filled))
}

/// Scores a reconstruction of `input` (both normalised, step-major, `mask.len()` steps).
pub fn score_reconstruction(input: &[f32], recon: &[f32], mask: &[bool]) -> Score {
    let steps = mask.len();
    let n_features = input.len() / steps.max(1);
    let mut per_feature = vec![0.0f64; n_features];
    let mut counted = 0usize;
    for (step, &masked) in mask.iter().enumerate() {
        if masked {
            continue;
        }
        counted += 1;
        let row = step * n_features..(step + 1) * n_features;
        for ((acc, &x), &y) in per_feature
            .iter_mut()
            .zip(&input[row.clone()])
            .zip(&recon[row])
        {
            let d = f64::from(x) - f64::from(y);
            *acc += d * d;
        }
    }
    let total: f64 = per_feature.iter().sum();
    let cells = (counted * n_features).max(1) as f64;
    Score {
        score: total / cells,
        feature_shares: per_feature
            .iter()
            .map(|e| if total > 0.0 { e / total } else { 0.0 })
            .collect(),
        masked_steps: steps - counted,
        fast_score: None,
    }
}

/// Format 2's input for a raw step-major window: masked steps filled, each value
/// transformed, then set against `baseline` (`clip((t - centre) / scale)`).
pub fn prepare_v2(
    values: &[f64],
    mask: &[bool],
    transforms: &[Transform],
    baseline: &Normalisation,
) -> Option<Vec<f32>> {
    let f = transforms.len();
    let mut filled = fill_masked(values, mask, f)?;
    for (i, v) in filled.iter_mut().enumerate() {
        *v = transforms[i % f].apply(*v);
    }
    Some(baseline.apply(&filled))
}

/// How the tail's steps combine into one error per feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TailAggregate {
    /// The mean of the steps' squared errors (what a model.json without the field means).
    #[default]
    Mean,
    /// The largest single step's squared error: one slow step among the tail's counts in
    /// full instead of a fifth of it, so the alert starts with the first bad step.
    Max,
}

/// How format 2 turns a window's input and reconstruction into per-feature errors.
#[derive(Clone, Copy, Debug)]
pub struct TailRule<'a> {
    /// Over the last this many unmasked steps (fewer when the window has fewer): the
    /// newest, so an incident a few steps old is not diluted by the normal before it.
    pub tail: usize,
    /// How those steps' squared errors combine: their mean or their max.
    pub aggregate: TailAggregate,
    /// Per feature (empty: none): only values above the reconstruction (and above the
    /// baseline) count. A db smaller, a latency lower or fewer elections than usual are
    /// not incidents, and a churn's shrink after a defrag would otherwise alarm.
    pub upward: &'a [bool],
    /// Also the input's own distance from the baseline, and the larger of the two: an
    /// autoencoder learns to reconstruct a shift that fills its whole window (a db
    /// growing fast for minutes), which a robust level still sees.
    pub level: bool,
}

/// Each feature's squared error over the tail, the mean or the max of its steps' (see
/// [`TailRule`]). `None` when every step is masked.
pub fn tail_errors(
    input: &[f32],
    recon: &[f32],
    mask: &[bool],
    rule: &TailRule,
) -> Option<Vec<f64>> {
    let steps = mask.len();
    let n_features = input.len() / steps.max(1);
    let mut errors = vec![0.0f64; n_features];
    let mut levels = vec![0.0f64; n_features];
    let upward = |j: usize| rule.upward.get(j).copied().unwrap_or(false);
    let combine = |acc: &mut f64, v: f64| match rule.aggregate {
        TailAggregate::Mean => *acc += v,
        TailAggregate::Max => *acc = acc.max(v),
    };
    let mut counted = 0usize;
    for step in (0..steps).rev().filter(|&s| !mask[s]).take(rule.tail) {
        counted += 1;
        let row = step * n_features..(step + 1) * n_features;
        for (j, (&x, &y)) in input[row.clone()].iter().zip(&recon[row]).enumerate() {
            let (x, d) = (f64::from(x), f64::from(x) - f64::from(y));
            if d > 0.0 || !upward(j) {
                combine(&mut errors[j], d * d);
            }
            if x > 0.0 || !upward(j) {
                combine(&mut levels[j], x * x);
            }
        }
    }
    if counted == 0 {
        return None;
    }
    if rule.level {
        for (e, l) in errors.iter_mut().zip(&levels) {
            *e = e.max(*l);
        }
    }
    if rule.aggregate == TailAggregate::Mean {
        errors.iter_mut().for_each(|e| *e /= counted as f64);
    }
    Some(errors)
}

/// Format 2's score: each scored feature's tail error divided by its calibration, and the
/// max of them, so one feature far out alerts on its own; `feature_shares` are each
/// feature's calibrated error over their sum (0 for context features), so the largest
/// share names the feature that drove the score. With `fast` (one flag per feature), the
/// max over the flagged ones is the fast alert's score.
pub fn score_calibrated(
    input: &[f32],
    recon: &[f32],
    mask: &[bool],
    rule: &TailRule,
    calibration: &[f64],
    scored: &[bool],
    fast: Option<&[bool]>,
) -> Option<Score> {
    let errors = tail_errors(input, recon, mask, rule)?;
    let calibrated: Vec<f64> = errors
        .iter()
        .zip(calibration)
        .zip(scored)
        .map(|((e, c), &s)| if s { e / c } else { 0.0 })
        .collect();
    let total: f64 = calibrated.iter().sum();
    Some(Score {
        score: calibrated.iter().copied().fold(0.0, f64::max),
        feature_shares: calibrated
            .iter()
            .map(|e| if total > 0.0 { e / total } else { 0.0 })
            .collect(),
        masked_steps: mask.iter().filter(|&&m| m).count(),
        fast_score: fast.map(|flags| {
            calibrated
                .iter()
                .zip(flags)
                .filter(|(_, f)| **f)
                .map(|(e, _)| *e)
                .fold(0.0, f64::max)
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_mask_masks_the_steps_before_each_run_and_nothing_else() {
        let mask = [false, false, false, true, true, false, false, true];
        assert_eq!(
            lead_mask(&mask, 1),
            [false, false, true, true, true, false, true, true]
        );
        assert_eq!(
            lead_mask(&mask, 2),
            [false, true, true, true, true, true, true, true]
        );
        assert_eq!(lead_mask(&mask, 0), mask);
        // A run at the start has nothing before it; the newest step stays as it was.
        assert_eq!(lead_mask(&[true, false, false], 1), [true, false, false]);
    }

    #[test]
    fn masked_steps_take_the_nearest_earlier_value() {
        let values = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        let filled = fill_masked(&values, &[true, false, true], 2).unwrap();
        assert_eq!(filled, [2.0, 20.0, 2.0, 20.0, 2.0, 20.0]);
        assert!(fill_masked(&values, &[true, true, true], 2).is_none());
    }

    #[test]
    fn score_is_mse_and_shares_name_the_feature() {
        let input = [0.0, 0.0, 0.0, 0.0];
        let recon = [0.0, 2.0, 0.0, 0.0];
        let s = score_reconstruction(&input, &recon, &[false, false]);
        assert!((s.score - 1.0).abs() < 1e-12, "4 / 4 cells");
        assert_eq!(s.feature_shares, [0.0, 1.0]);
        // Masking the step with the error removes it from the score.
        let s = score_reconstruction(&input, &recon, &[true, false]);
        assert_eq!(s.score, 0.0);
        assert_eq!(s.masked_steps, 1);
    }

    #[test]
    fn tail_errors_skip_masked_steps_and_keep_the_newest() {
        // 4 steps x 1 feature; errors 1, 4, 9, 16 by step.
        let input = [1.0, 2.0, 3.0, 4.0];
        let recon = [0.0; 4];
        let rule = two_sided(2);
        let e = tail_errors(&input, &recon, &[false; 4], &rule).unwrap();
        assert_eq!(e, [12.5], "steps 2 and 3");
        // Step 3 masked: the last two unmasked are 1 and 2.
        let e = tail_errors(&input, &recon, &[false, false, false, true], &rule).unwrap();
        assert_eq!(e, [6.5]);
        assert!(tail_errors(&input, &recon, &[true; 4], &rule).is_none());
    }

    #[test]
    fn with_the_max_one_slow_step_in_the_tail_scores_fully() {
        // 5 steps x 2 features: feature 0 is 3 off at one step of the tail only, feature 1
        // is 1 off at every step. The mean dilutes the one step to a fifth; the max keeps it.
        let mut input = [0.0f32; 10];
        input[2 * 2] = 3.0;
        (0..5).for_each(|s| input[s * 2 + 1] = 1.0);
        let recon = [0.0f32; 10];
        let mut rule = two_sided(5);
        let e = tail_errors(&input, &recon, &[false; 5], &rule).unwrap();
        assert_eq!(e, [9.0 / 5.0, 1.0]);
        rule.aggregate = TailAggregate::Max;
        let e = tail_errors(&input, &recon, &[false; 5], &rule).unwrap();
        assert_eq!(e, [9.0, 1.0]);
        // The level takes the max of the steps too: 4 scales out at one step.
        input[2 * 2] = 4.0;
        let near = [0.0, 0.0, 0.0, 0.0, 3.9, 0.0, 0.0, 0.0, 0.0, 0.0];
        rule.level = true;
        let e = tail_errors(&input, &near, &[false; 5], &rule).unwrap();
        assert!((e[0] - 16.0).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn with_the_max_masked_steps_are_skipped() {
        // 4 steps x 1 feature; errors 1, 4, 9, 16 by step; a tail of 2.
        let input = [1.0, 2.0, 3.0, 4.0];
        let recon = [0.0; 4];
        let rule = TailRule {
            aggregate: TailAggregate::Max,
            ..two_sided(2)
        };
        let e = tail_errors(&input, &recon, &[false; 4], &rule).unwrap();
        assert_eq!(e, [16.0]);
        // The largest step masked: the tail is steps 1 and 2.
        let e = tail_errors(&input, &recon, &[false, false, false, true], &rule).unwrap();
        assert_eq!(e, [9.0]);
        // Masked steps do not count towards the tail either: step 0 is outside it.
        let big = [25.0, 2.0, 3.0, 1.0];
        let e = tail_errors(&big, &recon, &[false, false, true, false], &rule).unwrap();
        assert_eq!(e, [4.0]);
        assert!(tail_errors(&input, &recon, &[true; 4], &rule).is_none());
    }

    fn two_sided(tail: usize) -> TailRule<'static> {
        TailRule {
            tail,
            aggregate: TailAggregate::Mean,
            upward: &[],
            level: false,
        }
    }

    #[test]
    fn an_upward_feature_counts_only_values_above_their_reconstruction() {
        // 2 steps x 2 features: both 2 below their reconstruction at step 0, 3 above at 1.
        let input = [-2.0, -2.0, 3.0, 3.0];
        let recon = [0.0; 4];
        let rule = TailRule {
            tail: 2,
            aggregate: TailAggregate::Mean,
            upward: &[true, false],
            level: false,
        };
        let e = tail_errors(&input, &recon, &[false; 2], &rule).unwrap();
        assert_eq!(e, [4.5, 6.5]);
    }

    #[test]
    fn the_level_catches_a_shift_the_autoencoder_reconstructs() {
        // 3 steps x 1 feature, 4 scales above the baseline throughout and reconstructed
        // almost exactly: the reconstruction error is tiny, the level is not.
        let input = [4.0, 4.0, 4.0];
        let recon = [3.9, 3.9, 3.9];
        let mut rule = TailRule {
            tail: 3,
            aggregate: TailAggregate::Mean,
            upward: &[true],
            level: false,
        };
        let e = tail_errors(&input, &recon, &[false; 3], &rule).unwrap();
        assert!(e[0] < 0.02, "{e:?}");
        rule.level = true;
        let e = tail_errors(&input, &recon, &[false; 3], &rule).unwrap();
        assert!((e[0] - 16.0).abs() < 1e-9, "{e:?}");
        // Below the baseline, an upward feature's level is nothing.
        let e = tail_errors(&[-4.0; 3], &[-4.0; 3], &[false; 3], &rule).unwrap();
        assert_eq!(e, [0.0]);
    }

    #[test]
    fn one_feature_far_out_crosses_the_threshold_where_the_mean_would_not() {
        // 30 steps x 9 features, all reconstructed exactly but feature 3 (leader changes)
        // off by 3 scales in the last 5 steps: an election storm.
        let (steps, f) = (30, 9);
        let input = vec![0.0f32; steps * f];
        let mut recon = input.clone();
        for step in steps - 5..steps {
            recon[step * f + 3] = 3.0;
        }
        let mask = vec![false; steps];
        let mean = score_reconstruction(&input, &recon, &mask);
        // Format 1: 45 / 270 cells, far below a threshold near 1.
        assert!(mean.score < 0.2, "{}", mean.score);
        let calibration = vec![1.0; f];
        let mut scored = vec![true; f];
        let rule = two_sided(5);
        let s =
            score_calibrated(&input, &recon, &mask, &rule, &calibration, &scored, None).unwrap();
        assert!((s.score - 9.0).abs() < 1e-9, "{}", s.score);
        assert_eq!(s.feature_shares[3], 1.0);
        assert_eq!(s.fast_score, None);
        // The fast alert's score is the max over its own features only.
        let fast_score = |watched: &[usize]| {
            let fast: Vec<bool> = (0..f).map(|j| watched.contains(&j)).collect();
            score_calibrated(
                &input,
                &recon,
                &mask,
                &rule,
                &calibration,
                &scored,
                Some(&fast),
            )
            .unwrap()
            .fast_score
            .unwrap()
        };
        assert_eq!(fast_score(&[0]), 0.0);
        assert!((fast_score(&[0, 3]) - 9.0).abs() < 1e-9);
        // The calibration divides; a context feature is never scored.
        let mut calibration = calibration;
        calibration[3] = 4.5;
        let s =
            score_calibrated(&input, &recon, &mask, &rule, &calibration, &scored, None).unwrap();
        assert!((s.score - 2.0).abs() < 1e-9);
        scored[3] = false;
        let s =
            score_calibrated(&input, &recon, &mask, &rule, &calibration, &scored, None).unwrap();
        assert_eq!(s.score, 0.0);
        assert_eq!(s.feature_shares[3], 0.0);
    }

    #[test]
    fn prepare_v2_transforms_then_sets_against_the_baseline() {
        let transforms = [Transform::Log10 { floor: 1e-4 }, Transform::Identity];
        let baseline = Normalisation {
            mean: vec![-2.0, 0.5],
            std: vec![0.5, 0.25],
            std_floor: vec![],
        };
        // Step 1 masked: it takes step 0's values.
        let x = prepare_v2(
            &[0.1, 1.0, 5.0, 9.0],
            &[false, true],
            &transforms,
            &baseline,
        )
        .unwrap();
        assert_eq!(x, [2.0, 2.0, 2.0, 2.0]);
    }
}
