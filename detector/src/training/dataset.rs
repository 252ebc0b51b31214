//! The training CSV (`timestamp,<feature...>[,defrag_inflight],label`, one row per step),
//! time-contiguous windows over it, and the per-feature normalisation saved with a model.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::model::features::DEFRAG_MASK;

/// A parsed CSV: rows in time order, optional labels and defrag mask.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub feature_names: Vec<String>,
    pub timestamps: Vec<f64>,
    /// `rows[i][j]`: feature `j` at step `i`.
    pub rows: Vec<Vec<f64>>,
    /// 1 for incident steps; `None` when the file has no `label` column.
    pub labels: Option<Vec<u8>>,
    /// True where a defrag was in flight; `None` without a `defrag_inflight` column.
    pub mask: Option<Vec<bool>>,
}

impl Dataset {
    pub fn read(path: &Path) -> anyhow::Result<Dataset> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Dataset::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Dataset> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty());
        let Some((_, header)) = lines.next() else {
            bail!("the file is empty; expected a header `timestamp,<feature...>,label`");
        };
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        if columns.first() != Some(&"timestamp") {
            bail!("line 1: the first column must be `timestamp`, found `{header}`");
        }
        let label_col = (columns.last() == Some(&"label")).then_some(columns.len() - 1);
        let mask_col = columns.iter().position(|c| *c == DEFRAG_MASK);
        let feature_cols: Vec<usize> = (1..columns.len())
            .filter(|&i| Some(i) != label_col && Some(i) != mask_col)
            .collect();
        if feature_cols.is_empty() {
            bail!("line 1: no feature columns between `timestamp` and `label`");
        }
        let mut dataset = Dataset {
            feature_names: feature_cols
                .iter()
                .map(|&i| columns[i].to_string())
                .collect(),
            timestamps: Vec::new(),
            rows: Vec::new(),
            labels: label_col.map(|_| Vec::new()),
            mask: mask_col.map(|_| Vec::new()),
        };
        for (line_no, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != columns.len() {
                bail!(
                    "line {line_no}: expected {} fields like the header, found {}",
                    columns.len(),
                    fields.len()
                );
            }
            let number = |i: usize| -> anyhow::Result<f64> {
                let value: f64 = fields[i].parse().map_err(|_| {
                    anyhow::anyhow!(
                        "line {line_no}: column `{}` is `{}`, not a number",
                        columns[i],
                        fields[i]
                    )
                })?;
                if !value.is_finite() {
                    bail!("line {line_no}: column `{}` is not finite", columns[i]);
                }
                Ok(value)
            };
            let timestamp = number(0)?;
            if let Some(&last) = dataset.timestamps.last()
                && timestamp <= last
            {
                bail!("line {line_no}: timestamp {timestamp} does not increase (previous {last})");
            }
            dataset.timestamps.push(timestamp);
            dataset.rows.push(
                feature_cols
                    .iter()
                    .map(|&i| number(i))
                    .collect::<anyhow::Result<_>>()?,
            );
            if let (Some(col), Some(labels)) = (label_col, dataset.labels.as_mut()) {
                match fields[col] {
                    "0" => labels.push(0),
                    "1" => labels.push(1),
                    other => bail!("line {line_no}: label is `{other}`, expected 0 or 1"),
                }
            }
            if let (Some(col), Some(mask)) = (mask_col, dataset.mask.as_mut()) {
                mask.push(number(col)? > 0.0);
            }
        }
        if dataset.rows.is_empty() {
            bail!("the file has a header but no rows");
        }
        Ok(dataset)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The typical spacing of the rows (the median difference), in seconds.
    pub fn step_seconds(&self) -> anyhow::Result<f64> {
        let mut diffs: Vec<f64> = self.timestamps.windows(2).map(|p| p[1] - p[0]).collect();
        if diffs.is_empty() {
            bail!("one row gives no step; the data needs at least two rows");
        }
        diffs.sort_by(f64::total_cmp);
        Ok(diffs[diffs.len() / 2])
    }

    /// Start indices of every `window`-row stretch without a time gap (no step longer than
    /// 1.5 steps), so no window spans a hole in the data.
    pub fn window_starts(&self, window: usize, step_seconds: f64) -> Vec<usize> {
        if window == 0 || self.len() < window {
            return Vec::new();
        }
        let mut starts = Vec::new();
        // Length of the gap-free run ending at row i.
        let mut run = 0usize;
        for i in 0..self.len() {
            let contiguous =
                i > 0 && self.timestamps[i] - self.timestamps[i - 1] <= 1.5 * step_seconds;
            run = if contiguous { run + 1 } else { 1 };
            if run >= window {
                starts.push(i + 1 - window);
            }
        }
        starts
    }

    pub fn label_any(&self, start: usize, window: usize) -> Option<bool> {
        self.labels
            .as_ref()
            .map(|labels| labels[start..start + window].contains(&1))
    }

    pub fn masked_any(&self, start: usize, window: usize) -> bool {
        self.mask
            .as_ref()
            .is_some_and(|mask| mask[start..start + window].iter().any(|&m| m))
    }

    pub fn window_mask(&self, start: usize, window: usize) -> Vec<bool> {
        match &self.mask {
            Some(mask) => mask[start..start + window].to_vec(),
            None => vec![false; window],
        }
    }

    /// The window's rows flattened step-major (`[step][feature]`).
    pub fn window_values(&self, start: usize, window: usize) -> Vec<f64> {
        self.rows[start..start + window]
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Reorders the columns to `names` (a model's feature order), or names what is missing.
    pub fn select_features(&self, names: &[String]) -> anyhow::Result<Dataset> {
        let mut indices = Vec::with_capacity(names.len());
        let mut missing = Vec::new();
        for name in names {
            match self.feature_names.iter().position(|n| n == name) {
                Some(i) => indices.push(i),
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            bail!(
                "the data lacks the model's feature column(s) {} (it has {})",
                missing.join(", "),
                self.feature_names.join(", ")
            );
        }
        Ok(Dataset {
            feature_names: names.to_vec(),
            timestamps: self.timestamps.clone(),
            rows: self
                .rows
                .iter()
                .map(|row| indices.iter().map(|&i| row[i]).collect())
                .collect(),
            labels: self.labels.clone(),
            mask: self.mask.clone(),
        })
    }
}

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

    const CSV: &str =
        "timestamp,a,b,label\n0,1.0,10,0\n2,2.0,20,0\n4,3.0,30,1\n8,4.0,40,0\n10,5.0,50,0\n";

    #[test]
    fn parses_features_labels_and_step() {
        let data = Dataset::parse(CSV).unwrap();
        assert_eq!(data.feature_names, ["a", "b"]);
        assert_eq!(data.rows[2], [3.0, 30.0]);
        assert_eq!(data.labels.as_deref(), Some(&[0, 0, 1, 0, 0][..]));
        assert_eq!(data.step_seconds().unwrap(), 2.0);
        assert!(data.mask.is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let bad_number = "timestamp,a,label\n0,1,0\n1,x,0\n";
        let err = format!("{:#}", Dataset::parse(bad_number).unwrap_err());
        assert!(err.contains("line 3") && err.contains("`a`"), "{err}");
        let short = "timestamp,a,label\n0,1,0\n1,0\n";
        let err = format!("{:#}", Dataset::parse(short).unwrap_err());
        assert!(
            err.contains("line 3") && err.contains("expected 3 fields"),
            "{err}"
        );
        let bad_label = "timestamp,a,label\n0,1,2\n";
        assert!(format!("{:#}", Dataset::parse(bad_label).unwrap_err()).contains("label"));
        let backwards = "timestamp,a,label\n5,1,0\n4,1,0\n";
        assert!(format!("{:#}", Dataset::parse(backwards).unwrap_err()).contains("line 3"));
        assert!(Dataset::parse("").is_err());
        assert!(Dataset::parse("time,a\n").is_err());
    }

    #[test]
    fn mask_column_is_not_a_feature() {
        let data = Dataset::parse("timestamp,a,defrag_inflight,label\n0,1,0,0\n1,1,1,0\n").unwrap();
        assert_eq!(data.feature_names, ["a"]);
        assert_eq!(data.mask.as_deref(), Some(&[false, true][..]));
        assert!(data.masked_any(0, 2) && !data.masked_any(0, 1));
    }

    #[test]
    fn windows_never_span_a_time_gap() {
        let data = Dataset::parse(CSV).unwrap();
        // Rows 0,1,2 are contiguous; the 4 -> 8 jump breaks the run; 3,4 are contiguous.
        assert_eq!(data.window_starts(2, 2.0), [0, 1, 3]);
        assert_eq!(data.window_starts(3, 2.0), [0]);
        assert_eq!(data.window_values(0, 2), [1.0, 10.0, 2.0, 20.0]);
        assert_eq!(data.label_any(1, 2), Some(true));
        assert_eq!(data.label_any(0, 2), Some(false));
    }

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

    #[test]
    fn select_features_reorders_or_names_what_is_missing() {
        let data = Dataset::parse(CSV).unwrap();
        let swapped = data.select_features(&["b".into(), "a".into()]).unwrap();
        assert_eq!(swapped.rows[0], [10.0, 1.0]);
        let err = data.select_features(&["c".into()]).unwrap_err().to_string();
        assert!(err.contains("c") && err.contains("a, b"), "{err}");
    }
}
