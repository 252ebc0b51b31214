//! From a raw window to a score: fill masked (defrag) steps, normalise, and turn a
//! reconstruction into the mean squared error and each feature's share of it. The candle
//! model, the fused forward and the numpy reference all go through these same rules.

use serde::Serialize;

use crate::model::normalisation::Normalisation;

/// A window's anomaly score and which features drove it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean squared reconstruction error over the unmasked steps and all features.
    pub score: f64,
    /// Each feature's share of the error (sums to 1 unless the error is 0).
    pub feature_shares: Vec<f64>,
    pub masked_steps: usize,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
