//! `score`: the scores of a few windows of a CSV as JSON on stdout, for the numpy
//! cross-checks (`ci/check-detector-reference.sh`, the notebook).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::commands::{load_model, print_stdout};
use crate::training::dataset::Dataset;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, env = "DR_DETECTOR_DATA")]
    pub data: PathBuf,
    /// How many windows, spread evenly over the data.
    #[arg(long, default_value_t = 8, env = "DR_DETECTOR_COUNT")]
    pub count: usize,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let scorer = load_model(args.model.as_deref())?;
    let meta = &scorer.bundle.meta;
    let data = Dataset::read(&args.data)?.for_model(meta)?;
    let starts = data.window_starts(meta.window, meta.step_seconds);
    anyhow::ensure!(
        !starts.is_empty(),
        "the data has no window of {} steps",
        meta.window
    );
    let count = args.count.clamp(1, starts.len());
    let w = meta.window;
    let mut chosen: Vec<usize> = (0..count)
        .map(|k| starts[k * (starts.len() - 1) / (count - 1).max(1)])
        .collect();
    // Make sure the masked and the incident paths are among them when the data has them.
    let partly_masked =
        |&s: &usize| data.masked_any(s, w) && data.window_mask(s, w).contains(&false);
    if let Some(s) = starts.iter().copied().find(partly_masked) {
        chosen.push(s);
    }
    if let Some(s) = starts
        .iter()
        .copied()
        .find(|&s| data.label_any(s, w) == Some(true))
    {
        chosen.push(s);
    }
    // The CSV is one instance: a format 2 model sets it against its own baseline.
    let baseline = scorer.instance_baseline(&data.rows, data.mask.as_deref());
    let mut windows = Vec::with_capacity(chosen.len());
    for start in chosen {
        let values: Vec<Vec<f64>> = data.rows[start..start + meta.window].to_vec();
        let mask = data.window_mask(start, meta.window);
        let scored = scorer
            .score_against(
                &data.window_values(start, meta.window),
                &mask,
                baseline.as_ref(),
            )
            .map_err(anyhow::Error::msg)?;
        windows.push(json!({
            "start": start,
            "values": values,
            "mask": mask,
            "score": scored.score,
            "feature_shares": scored.feature_shares,
        }));
    }
    print_stdout(&serde_json::to_string(
        &json!({ "model": scorer.bundle.source, "windows": windows }),
    )?)?;
    Ok(())
}
