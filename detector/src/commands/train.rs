//! `train`: a labelled CSV in, a model directory out, and a JSON summary on stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::commands::print_stdout;
use crate::model::features::FeatureSpec;
use crate::training::dataset::Dataset;
use crate::training::train::{EpochReport, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training CSV.
    #[arg(long, env = "DR_DETECTOR_DATA")]
    pub data: PathBuf,
    /// Where to write model.safetensors and model.json.
    #[arg(long, env = "DR_DETECTOR_OUT")]
    pub out: PathBuf,
    /// Steps per window.
    #[arg(long, default_value_t = 30, env = "DR_DETECTOR_WINDOW")]
    pub window: usize,
    /// LSTM hidden size (encoder and decoder).
    #[arg(long, default_value_t = 32, env = "DR_DETECTOR_HIDDEN")]
    pub hidden: usize,
    /// Most epochs; early stopping may end sooner.
    #[arg(long, default_value_t = 20, env = "DR_DETECTOR_EPOCHS")]
    pub epochs: usize,
    /// Seed for weights and batch order: same seed and data, same model.
    #[arg(long, default_value_t = 42, env = "DR_DETECTOR_SEED")]
    pub seed: u64,
    #[arg(long, default_value_t = 64, env = "DR_DETECTOR_BATCH_SIZE")]
    pub batch_size: usize,
    #[arg(long, default_value_t = 3e-3, env = "DR_DETECTOR_LEARNING_RATE")]
    pub learning_rate: f64,
    /// The threshold maximises Youden's J among ROC points that flag at most this share
    /// of the normal validation windows: a needless repair costs more than a later one.
    /// 1 gives plain Youden's J.
    #[arg(long, default_value_t = 0.02, value_parser = fraction, env = "DR_DETECTOR_MAX_FPR")]
    pub max_fpr: f64,
    /// Epochs without a better validation loss before stopping.
    #[arg(long, default_value_t = 5, env = "DR_DETECTOR_PATIENCE")]
    pub patience: usize,
    /// Training windows used per epoch at most (evenly strided), bounding the time.
    #[arg(long, default_value_t = 4096, env = "DR_DETECTOR_MAX_TRAIN_WINDOWS")]
    pub max_train_windows: usize,
    /// JSON list of {"name", "query"} for the CSV's features, each with an optional
    /// "std_floor" (the smallest normalisation std, in the feature's units); default: the
    /// built-in etcd queries for the data's step, with their floors.
    #[arg(long, env = "DR_DETECTOR_FEATURES")]
    pub features: Option<PathBuf>,
}

/// One entry of `train --features FILE.json`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureEntry {
    name: String,
    query: String,
    #[serde(default)]
    std_floor: Option<f64>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let data = Dataset::read(&args.data)?;
    let mut std_floors = BTreeMap::new();
    let features = match &args.features {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let entries: Vec<FeatureEntry> = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a JSON list of {{name, query[, std_floor]}}",
                    path.display()
                )
            })?;
            let mut specs = Vec::with_capacity(entries.len());
            for entry in entries {
                if let Some(floor) = entry.std_floor {
                    anyhow::ensure!(
                        floor.is_finite() && floor > 0.0,
                        "{}: std_floor of `{}` must be a positive number",
                        path.display(),
                        entry.name
                    );
                    std_floors.insert(entry.name.clone(), floor);
                }
                specs.push(FeatureSpec {
                    name: entry.name,
                    query: entry.query,
                });
            }
            Some(specs)
        }
        None => None,
    };
    let opts = TrainOptions {
        window: args.window,
        hidden: args.hidden,
        epochs: args.epochs,
        seed: args.seed,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        max_fpr: args.max_fpr,
        patience: args.patience,
        max_train_windows: args.max_train_windows,
        features,
        std_floors,
        ..TrainOptions::default()
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |r: EpochReport| show_epoch(r, tty);
    let bundle = crate::training::train::train(&data, &opts, &mut progress)?;
    if tty {
        eprintln!();
    }
    bundle.save(&args.out)?;
    let threshold_warning =
        crate::training::train::threshold_warning(&bundle.meta.threshold_method);
    if let Some(warning) = threshold_warning {
        tracing::warn!("{warning}");
    }
    let t = &bundle.meta.training;
    let summary = json!({
        "out": args.out.display().to_string(),
        "rows": t.data_rows,
        "step_seconds": bundle.meta.step_seconds,
        "window": bundle.meta.window,
        "features": bundle.meta.feature_names(),
        "train_windows": t.train_windows,
        "validation_windows": t.validation_windows,
        "validation_anomalous_windows": t.validation_anomalous_windows,
        "epochs_run": t.epochs_run,
        "best_epoch": t.best_epoch,
        "train_loss": t.train_loss,
        "validation_loss": t.validation_loss,
        "validation_auc": t.validation_auc,
        "threshold": bundle.meta.threshold,
        "threshold_method": bundle.meta.threshold_method,
        "threshold_windows": t.threshold_windows,
        "threshold_warning": threshold_warning,
        "std_floor": bundle.meta.normalisation.std_floor,
        "seconds": t.seconds,
    });
    print_stdout(&serde_json::to_string_pretty(&summary)?)?;
    Ok(())
}

fn show_epoch(r: EpochReport, tty: bool) {
    let mark = if r.best { " *" } else { "" };
    let line = format!(
        "epoch {}/{}  train loss {:.5}  validation loss {:.5}{mark}",
        r.epoch, r.epochs, r.train_loss, r.validation_loss
    );
    if tty {
        // One line rewritten in place; a log file gets one line per epoch instead.
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    } else {
        eprintln!("{line}");
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s}: want a fraction between 0 and 1")),
    }
}
