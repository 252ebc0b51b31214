//! `eval`: how a model does on labelled CSVs: per window (AUC, precision, recall, F1) and
//! as an alert beside the static rules, per incident kind. A table on a terminal; JSON with
//! `--json` or when stdout is not a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dr_common::duration::parse_duration;

use crate::commands::{load_model, print_stdout};
use crate::training::dataset::Dataset;
use crate::training::eval::{AlertingOptions, Recording, alerting, evaluate_all};
use crate::training::provenance::reuse_warnings;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model directory; default: the built-in model.
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    /// Labelled CSVs with the model's feature columns, one member's recording each
    /// (repeat the flag, or separate with commas). Incident kinds come from
    /// `<recording>.incidents.csv` beside each when present.
    #[arg(long, env = "DR_DETECTOR_DATA", required = true, value_delimiter = ',')]
    pub data: Vec<PathBuf>,
    /// How long the score must stay above the threshold before the alert fires, in the
    /// time the data stands for (the chart's `prometheusRule.anomaly.for`).
    #[arg(long, env = "DR_DETECTOR_ALERT_FOR", default_value = "3m", value_parser = parse_duration)]
    pub alert_for: Duration,
    /// What one step of the data stands for: the step itself for a real cluster (the
    /// default); `1m` for the compressed recordings, whose 1 s step stands for a minute.
    #[arg(long, env = "DR_DETECTOR_REPRESENTS", value_parser = parse_duration)]
    pub represents: Option<Duration>,
    /// JSON on stdout (also when stdout is not a terminal).
    #[arg(long, env = "DR_DETECTOR_JSON")]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let scorer = load_model(args.model.as_deref())?;
    let recordings = args
        .data
        .iter()
        .map(|path| {
            Ok(Recording {
                name: path.display().to_string(),
                data: Dataset::read(path)?,
                kinds: incident_kinds(path)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let datasets: Vec<Dataset> = recordings.iter().map(|r| r.data.clone()).collect();
    let mut report = evaluate_all(&scorer, &datasets)?;
    let paths: Vec<&Path> = args.data.iter().map(PathBuf::as_path).collect();
    report.warnings = reuse_warnings(&scorer.bundle.meta, &paths)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let represents = args
        .represents
        .map_or(scorer.bundle.meta.step_seconds, |d| d.as_secs_f64());
    anyhow::ensure!(represents > 0.0, "--represents must be positive");
    let alerts = alerting(
        &scorer,
        &recordings,
        AlertingOptions {
            alert_for_seconds: args.alert_for.as_secs_f64(),
            represents_seconds: represents,
        },
    )?;
    if args.json || !std::io::stdout().is_terminal() {
        report.alerting = Some(alerts);
        print_stdout(&serde_json::to_string_pretty(&report)?)
    } else {
        let auc = report
            .auc
            .map_or_else(|| "-".to_string(), |a| format!("{a:.3}"));
        print_stdout(&format!(
            "{}\nper window: {} windows, {} anomalous, AUC {auc}, precision {:.3}, recall {:.3}, F1 {:.3}\n",
            alerts.table(),
            report.windows,
            report.anomalous_windows,
            report.precision,
            report.recall,
            report.f1
        ))
    }
}

/// The kinds column of `<recording>.incidents.csv` (the recorder writes one per recording;
/// its members' files `<recording>.<member>.csv` share it), or `None` without one.
fn incident_kinds(path: &Path) -> anyhow::Result<Option<Vec<String>>> {
    let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let mut candidates = vec![stem.clone()];
    if let Some((recording, _member)) = stem.rsplit_once('.') {
        candidates.push(recording.to_string());
    }
    for name in candidates {
        let sidecar = path.with_file_name(format!("{name}.incidents.csv"));
        if sidecar.is_file() {
            let text = std::fs::read_to_string(&sidecar)
                .with_context(|| format!("reading {}", sidecar.display()))?;
            let kinds = text
                .lines()
                .skip(1)
                .filter_map(|line| line.split(',').next())
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            return Ok(Some(kinds));
        }
    }
    Ok(None)
}
