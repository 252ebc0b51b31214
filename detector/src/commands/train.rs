//! `train`: labelled CSVs in (one for format 1; train and calibration recordings for
//! format 2), a model directory out, and a JSON summary on stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dr_common::duration::parse_duration;
use serde_json::json;

use crate::commands::print_stdout;
use crate::model::baseline::BaselinePolicy;
use crate::model::features::FeatureSpec;
use crate::model::scoring::TailAggregate;
use crate::training::dataset::Dataset;
use crate::training::provenance;
use crate::training::train::{EpochReport, TrainOptions};
use crate::training::train_v2::{Source, V2Options, train_v2};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training CSV. With `--calibrate` (format 2): one or more recordings, one
    /// instance each (repeat the flag, or separate with commas), whose normal windows the
    /// LSTM fits. Without it: exactly one file, a format 1 model as before.
    #[arg(long, env = "DR_DETECTOR_DATA", required = true, value_delimiter = ',')]
    pub data: Vec<PathBuf>,
    /// Recordings (one instance each) that choose the epoch, each feature's calibration
    /// and the threshold, and nothing else: giving any makes a format 2 model, scored
    /// per feature against each instance's own baseline (`model::transform`, `train_v2`).
    #[arg(long, env = "DR_DETECTOR_CALIBRATE", value_delimiter = ',')]
    pub calibrate: Vec<PathBuf>,
    /// Format 2: the threshold is the lowest score whose alert gives at most this many
    /// false alarms per 1000 normal steps of the --calibrate recordings.
    #[arg(
        long,
        default_value_t = 0.5,
        env = "DR_DETECTOR_MAX_FALSE_ALARMS_PER_1000"
    )]
    pub max_false_alarms_per_1000: f64,
    /// Format 2: how long the score must stay above the threshold before the alert fires,
    /// in the time the data stands for (as `eval --alert-for`).
    #[arg(long, env = "DR_DETECTOR_ALERT_FOR", default_value = "3m", value_parser = parse_duration)]
    pub alert_for: Duration,
    /// Format 2: a second, fast alert held this long (shorter than --alert-for) on its own
    /// score, the largest calibrated error of --fast-alert-features, its threshold the
    /// lowest (at least the main one) at which it keeps to --max-false-alarms-per-1000 on
    /// its own: what cannot wait --alert-for (a NOSPACE storm on a small quota) still
    /// alerts early. Default: a fifth of --alert-for, when that is at least one step
    /// shorter; 0 for none.
    #[arg(long, env = "DR_DETECTOR_FAST_ALERT_FOR", value_parser = parse_duration)]
    pub fast_alert_for: Option<Duration>,
    /// Format 2: the scored features the fast alert watches (its score is the largest of
    /// their calibrated errors); default: db_size_over_quota and db_growth_per_request
    /// where the data has them, none: no fast alert.
    #[arg(long, env = "DR_DETECTOR_FAST_ALERT_FEATURES", value_delimiter = ',')]
    pub fast_alert_features: Option<Vec<String>>,
    /// Format 2: what one step of the data stands for (as `eval --represents`); default:
    /// the step itself.
    #[arg(long, env = "DR_DETECTOR_REPRESENTS", value_parser = parse_duration)]
    pub represents: Option<Duration>,
    /// Format 2: each feature's error is over the window's last this many unmasked steps.
    #[arg(long, default_value_t = 5, env = "DR_DETECTOR_TAIL_STEPS")]
    pub tail_steps: usize,
    /// Format 2: how those steps' squared errors combine: `max` (one bad step counts in
    /// full) or `mean` (what models from before this option used).
    #[arg(
        long,
        value_enum,
        default_value_t = TailAggregate::Max,
        env = "DR_DETECTOR_TAIL_AGGREGATE"
    )]
    pub tail_aggregate: TailAggregate,
    /// Format 2: an instance's baseline is fitted on its last this many steps ...
    #[arg(
        long,
        default_value_t = 720,
        env = "DR_DETECTOR_BASELINE_HISTORY_STEPS"
    )]
    pub baseline_history_steps: usize,
    /// ... it may alert once that history has this many unmasked steps (warming up before) ...
    #[arg(long, default_value_t = 60, env = "DR_DETECTOR_BASELINE_MIN_STEPS")]
    pub baseline_min_steps: usize,
    /// ... and it is refitted every this many steps. Training, eval and serving all use
    /// the values saved in model.json.
    #[arg(long, default_value_t = 30, env = "DR_DETECTOR_BASELINE_REFRESH_STEPS")]
    pub baseline_refresh_steps: usize,
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
    let bundle = if args.calibrate.is_empty() {
        let [path] = args.data.as_slice() else {
            anyhow::bail!(
                "a format 1 model trains on one --data file; for several, give --calibrate \
                 recordings too (format 2)"
            );
        };
        crate::training::train::train(&Dataset::read(path)?, &opts, &mut progress)?
    } else {
        let sources = |role: &str, paths: &[PathBuf]| -> anyhow::Result<Vec<Source>> {
            paths
                .iter()
                .map(|p| {
                    Ok(Source {
                        file: provenance::data_file(role, p)?,
                        data: Dataset::read(p)?,
                    })
                })
                .collect()
        };
        let train = sources("train", &args.data)?;
        let calibrate = sources("calibrate", &args.calibrate)?;
        anyhow::ensure!(
            args.max_false_alarms_per_1000.is_finite() && args.max_false_alarms_per_1000 >= 0.0,
            "--max-false-alarms-per-1000 must be a number >= 0"
        );
        let step = train[0].data.step_seconds()?;
        let represents = args.represents.map_or(step, |d| d.as_secs_f64());
        anyhow::ensure!(represents > 0.0, "--represents must be positive");
        let alert_for_steps =
            crate::training::rules::steps(args.alert_for.as_secs_f64(), represents);
        let fast_alert_for_steps = match args.fast_alert_for {
            None => Some(alert_for_steps.div_ceil(5)).filter(|&s| s < alert_for_steps),
            Some(d) if d.is_zero() => None,
            Some(d) => {
                let steps = crate::training::rules::steps(d.as_secs_f64(), represents);
                anyhow::ensure!(
                    steps < alert_for_steps,
                    "--fast-alert-for ({steps} steps) must be shorter than --alert-for ({alert_for_steps} steps); 0 for no fast alert"
                );
                Some(steps)
            }
        };
        let v2 = V2Options {
            tail_steps: args.tail_steps,
            tail_aggregate: args.tail_aggregate,
            max_false_alarms_per_1000: args.max_false_alarms_per_1000,
            alert_for_steps,
            fast_alert_for_steps,
            fast_alert_features: args.fast_alert_features.clone(),
            baseline: BaselinePolicy {
                history_steps: args.baseline_history_steps,
                min_steps: args.baseline_min_steps,
                refresh_steps: args.baseline_refresh_steps,
            },
            ..V2Options::default()
        };
        train_v2(&train, &calibrate, &opts, &v2, &mut progress)?
    };
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
        "format_version": bundle.meta.format_version,
        "scoring_v2": bundle.meta.scoring_v2,
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
