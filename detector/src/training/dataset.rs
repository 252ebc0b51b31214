//! The training CSV (`timestamp,<feature...>[,defrag_inflight],label`, one row per step)
//! and time-contiguous windows over it.

use std::path::Path;

use anyhow::{Context, bail, ensure};

use crate::model::features::DEFRAG_MASK;
use crate::model::model_dir::ModelMeta;

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

/// The longest time between two rows, in steps, that still counts as contiguous: up to two
/// missing rows (a gap of 3 steps, with some slack for jitter). See
/// [`Dataset::window_starts`].
pub const MAX_CONTIGUOUS_STEPS: f64 = 3.5;

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
    /// [`MAX_CONTIGUOUS_STEPS`] steps), so no window spans a hole in the data. One or two
    /// missing rows are not a hole: the live detector reads Prometheus range queries, which
    /// fill a missed scrape with the last sample within the lookback, so it never sees
    /// them, and counting them as one would leave the next `window - 1` steps of a
    /// recording unscored and break an alert's run (a slow disk missed its `for` over a
    /// single dropped row).
    pub fn window_starts(&self, window: usize, step_seconds: f64) -> Vec<usize> {
        if window == 0 || self.len() < window {
            return Vec::new();
        }
        let mut starts = Vec::new();
        // Length of the gap-free run ending at row i.
        let mut run = 0usize;
        for i in 0..self.len() {
            let contiguous = i > 0
                && self.timestamps[i] - self.timestamps[i - 1]
                    <= MAX_CONTIGUOUS_STEPS * step_seconds;
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

    /// The columns `model` reads, in its feature order, once the rows are known to be its
    /// `step_seconds` apart (to 1%): the queries' rate windows and the window's span are
    /// for that step, so data at another step scores as nonsense. What `eval` and `score`
    /// read a CSV through.
    pub fn for_model(&self, model: &ModelMeta) -> anyhow::Result<Dataset> {
        let selected = self.select_features(&model.feature_names())?;
        let step = self.step_seconds()?;
        ensure!(
            (step - model.step_seconds).abs() <= 0.01 * model.step_seconds,
            "the data's step is {step}s but the model was trained at {}s; its queries and windows are for that step",
            model.step_seconds
        );
        Ok(selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::model_dir::tests::meta;

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
        let csv =
            "timestamp,a,b,label\n0,1.0,10,0\n2,2.0,20,0\n4,3.0,30,1\n12,4.0,40,0\n14,5.0,50,0\n";
        let data = Dataset::parse(csv).unwrap();
        // Rows 0,1,2 are contiguous; the 4 -> 12 jump (three rows missing) breaks the
        // run; 3,4 are contiguous.
        assert_eq!(data.window_starts(2, 2.0), [0, 1, 3]);
        assert_eq!(data.window_starts(3, 2.0), [0]);
        assert_eq!(data.window_values(0, 2), [1.0, 10.0, 2.0, 20.0]);
        assert_eq!(data.label_any(1, 2), Some(true));
        assert_eq!(data.label_any(0, 2), Some(false));
    }

    #[test]
    fn one_or_two_missing_rows_are_not_a_gap() {
        // A 1 s step with one row missing (3 -> 5), then two (7 -> 10), then three (12 -> 16).
        let rows: String = [0, 1, 2, 3, 5, 6, 7, 10, 11, 12, 16, 17]
            .iter()
            .map(|t| format!("{t},1.0,0\n"))
            .collect();
        let data = Dataset::parse(&format!("timestamp,a,label\n{rows}")).unwrap();
        assert_eq!(data.step_seconds().unwrap(), 1.0);
        // Rows 0..=9 (timestamps 0 to 12) are one stretch; rows 10, 11 another.
        assert_eq!(data.window_starts(10, 1.0), [0]);
        assert_eq!(data.window_starts(3, 1.0), (0..=7).collect::<Vec<_>>());
        assert_eq!(data.window_starts(2, 1.0), [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]);
        // The 4 s jump at a 2 s step (CSV: one row missing) does not break the run either.
        let data = Dataset::parse(CSV).unwrap();
        assert_eq!(data.window_starts(5, 2.0), [0]);
    }

    #[test]
    fn select_features_reorders_or_names_what_is_missing() {
        let data = Dataset::parse(CSV).unwrap();
        let swapped = data.select_features(&["b".into(), "a".into()]).unwrap();
        assert_eq!(swapped.rows[0], [10.0, 1.0]);
        let err = data.select_features(&["c".into()]).unwrap_err().to_string();
        assert!(err.contains("c") && err.contains("a, b"), "{err}");
    }

    #[test]
    fn data_is_read_in_the_models_order_and_only_at_its_step() {
        let m = meta(2, 4, 5);
        let (a, b) = (&m.features[0].name, &m.features[1].name);
        let at = |step: f64| {
            let rows: String = (0..4)
                .map(|k| format!("{},{k},{}\n", k as f64 * step, 10 * k))
                .collect();
            Dataset::parse(&format!("timestamp,{b},{a}\n{rows}")).unwrap()
        };
        let data = at(2.0).for_model(&m).unwrap();
        assert_eq!(data.feature_names, m.feature_names());
        assert_eq!(data.rows[1], [10.0, 1.0]);
        let err = at(1.0).for_model(&m).unwrap_err().to_string();
        assert!(
            err.contains("step is 1s") && err.contains("trained at 2s"),
            "{err}"
        );
        let err = Dataset::parse(&format!("timestamp,{a}\n0,1\n2,1\n"))
            .unwrap()
            .for_model(&m)
            .unwrap_err()
            .to_string();
        assert!(err.contains(b.as_str()), "{err}");
    }
}
