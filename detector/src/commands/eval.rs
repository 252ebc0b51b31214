//! `eval`: how a model does on a labelled CSV, as JSON on stdout.

use std::path::PathBuf;

use clap::Args;

use crate::commands::{load_model, print_stdout};
use crate::training::dataset::Dataset;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model directory; default: the built-in model.
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    /// A labelled CSV with the model's feature columns.
    #[arg(long, env = "DR_DETECTOR_DATA")]
    pub data: PathBuf,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let scorer = load_model(args.model.as_deref())?;
    let data = Dataset::read(&args.data)?;
    let report = crate::training::eval::evaluate(&scorer, &data)?;
    print_stdout(&serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
