//! The per-feature normalisation saved with a model: `(x - mean) / std` with a floor
//! under each std, clipped.

use serde::{Deserialize, Serialize};

/// Normalised values are clipped to this many standard deviations: an incident far out of
/// range still scores high, but no single wild value swamps the error or the recurrence.
pub const CLIP: f64 = 20.0;

/// Per-feature `(x - mean) / std`, fitted on normal training rows and saved in model.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f64>,
    /// Already at least `std_floor`: serving and the numpy reference divide by it as is.
    pub std: Vec<f64>,
    /// The floor each feature's std was held to, in the feature's units (see
    /// `features::std_floor`); for the record and for `validate`. Empty in models saved
    /// before floors were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std_floor: Vec<f64>,
}

impl Normalisation {
    /// Fits on `rows`. A feature that never moves in normal data (leader changes, failed
    /// proposals) would have a zero std; its floor (`floors[j]`, in its own units) keeps a
    /// first event at a few standard deviations instead of the clip limit. A feature
    /// without a known floor gets 0.1% of its mean, at least 1e-6.
    pub fn fit<'a>(rows: impl Iterator<Item = &'a [f64]>, floors: &[Option<f64>]) -> Normalisation {
        let n_features = floors.len();
        let mut count = 0usize;
        let mut sum = vec![0.0; n_features];
        let mut sum_sq = vec![0.0; n_features];
        for row in rows {
            count += 1;
            for (j, &v) in row.iter().enumerate() {
                sum[j] += v;
                sum_sq[j] += v * v;
            }
        }
        let n = count.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std_floor: Vec<f64> = floors
            .iter()
            .zip(&mean)
            .map(|(floor, m)| floor.unwrap_or((1e-3 * m.abs()).max(1e-6)))
            .collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .zip(&std_floor)
            .map(|((sq, m), floor)| (sq / n - m * m).max(0.0).sqrt().max(*floor))
            .collect();
        Normalisation {
            mean,
            std,
            std_floor,
        }
    }

    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Normalises a step-major window into the f32 input of the model.
    pub fn apply(&self, values: &[f64]) -> Vec<f32> {
        let f = self.n_features();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| ((v - self.mean[i % f]) / self.std[i % f]).clamp(-CLIP, CLIP) as f32)
            .collect()
    }

    pub fn invert(&self, normalised: &[f32]) -> Vec<f64> {
        let f = self.n_features();
        normalised
            .iter()
            .enumerate()
            .map(|(i, &z)| f64::from(z) * self.std[i % f] + self.mean[i % f])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_round_trips_and_floors_constant_features() {
        let rows = [[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]];
        let norm = Normalisation::fit(rows.iter().map(|r| &r[..]), &[None, None]);
        assert!((norm.mean[0] - 3.0).abs() < 1e-12);
        assert!(
            norm.std[1] > 0.0,
            "a constant feature must not divide by zero"
        );
        let window = [2.0, 0.0, 4.0, 0.5e-6];
        let z = norm.apply(&window);
        let back = norm.invert(&z);
        for (a, b) in window.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Far outside the normal range is clipped, not infinite.
        assert_eq!(norm.apply(&[1e12, 0.0])[0], CLIP as f32);
    }

    #[test]
    fn a_first_event_scores_by_its_floor_not_the_clip_limit() {
        // Leader changes never moved in training; one election is one event per range.
        let rows = [[0.0, 0.004], [0.0, 0.008], [0.0, 0.006]];
        let norm = Normalisation::fit(rows.iter().map(|r| &r[..]), &[Some(1.0), Some(1e-3)]);
        assert_eq!(norm.std[0], 1.0);
        assert_eq!(norm.std_floor, [1.0, 1e-3]);
        assert!((norm.apply(&[1.0, 0.004])[0] - 1.0).abs() < 1e-6);
        // A std above its floor is kept.
        let sample_std = (8.0f64 / 3.0).sqrt() * 1e-3;
        assert!((norm.std[1] - sample_std).abs() < 1e-9, "{}", norm.std[1]);
    }

    #[test]
    fn models_saved_before_floors_were_recorded_still_load() {
        let old: Normalisation = serde_json::from_str(r#"{"mean": [1.0], "std": [1e-6]}"#).unwrap();
        assert!(old.std_floor.is_empty());
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("std_floor"), "{text}");
    }
}
