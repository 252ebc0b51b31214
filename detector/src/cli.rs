//! The command line: every flag also reads `DR_DETECTOR_<FLAG>`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dr_common::duration::parse_duration;
use dr_common::process;
use dr_common::telemetry::LogFormat;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::model::features::FeatureSpec;
use crate::model::inference::Scorer;
use crate::model::model_dir::ModelBundle;
use crate::prometheus::PromClient;
use crate::serving::live::LiveScorer;
use crate::training::dataset::Dataset;
use crate::training::train::{EpochReport, TrainOptions};

#[derive(Debug, Parser)]
#[command(
    name = "dr-detector",
    version,
    about = "Scores etcd's health with an LSTM autoencoder over windows of Prometheus metrics"
)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "DR_DETECTOR_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "DR_DETECTOR_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on a labelled CSV (`timestamp,<feature...>,label`) and write MODEL_DIR.
    Train(TrainArgs),
    /// Print JSON with AUC, precision, recall and F1 of a model on a labelled CSV.
    Eval(EvalArgs),
    /// Print JSON with the scores of a few windows of a CSV (for cross-checks).
    Score(ScoreArgs),
    /// Serve /score from live Prometheus data, and the scores on /metrics.
    Serve(ServeArgs),
    /// Write the model's feature queries over a time range as a training CSV.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model whose queries and step to use; default: the built-in model.
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, env = "DR_DETECTOR_PROMETHEUS_URL")]
    pub prometheus_url: String,
    /// Range start: unix seconds, RFC 3339 (2026-11-24T10:00:00Z), or `-6h` (before now).
    #[arg(long, allow_hyphen_values = true, env = "DR_DETECTOR_START")]
    pub start: String,
    /// Range end, in the same forms; default: now.
    #[arg(long, allow_hyphen_values = true, env = "DR_DETECTOR_END")]
    pub end: Option<String>,
    /// The etcd instance to export, when Prometheus knows several.
    #[arg(long, env = "DR_DETECTOR_INSTANCE")]
    pub instance: Option<String>,
    /// Record the built-in etcd queries at this step instead of a model's (for data to
    /// train a model at a new step: the queries' rate windows follow the step).
    #[arg(long, value_parser = parse_duration, conflicts_with = "model", env = "DR_DETECTOR_STEP")]
    pub step: Option<Duration>,
    /// The CSV to write.
    #[arg(long, env = "DR_DETECTOR_OUT")]
    pub out: PathBuf,
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "DR_DETECTOR_PROMETHEUS_TIMEOUT")]
    pub prometheus_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model directory; default: the built-in model.
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    /// Prometheus' base URL, e.g. http://prometheus:9090.
    #[arg(long, env = "DR_DETECTOR_PROMETHEUS_URL")]
    pub prometheus_url: String,
    /// Address to serve /score, /healthz, /readyz and /metrics on.
    #[arg(long, default_value = "0.0.0.0:9311", env = "DR_DETECTOR_LISTEN")]
    pub listen: SocketAddr,
    /// How often the /metrics scores are recomputed.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "DR_DETECTOR_REFRESH")]
    pub refresh: Duration,
    /// How long one pull of all queries from Prometheus may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "DR_DETECTOR_PROMETHEUS_TIMEOUT")]
    pub prometheus_timeout: Duration,
    /// Longest run of missing steps per feature that is filled in rather than refused.
    #[arg(long, default_value_t = 3, env = "DR_DETECTOR_MAX_GAP_STEPS")]
    pub max_gap_steps: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1 << 20, env = "DR_DETECTOR_BODY_LIMIT")]
    pub body_limit: usize,
    /// An instance whose last push to the Pushgateway (`push_time_seconds`) is older than
    /// this gets no score: the Pushgateway serves a dead collector's last push forever.
    /// Default: 3 steps of the model, at least 10s (a few missed pushes, or a collector
    /// restart, are not an outage). 0s turns the check off. Without `push_time_seconds`
    /// (Prometheus scraping etcd directly) nothing is checked.
    #[arg(long, value_parser = parse_duration, env = "DR_DETECTOR_MAX_PUSH_AGE")]
    pub max_push_age: Option<Duration>,
}

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

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model directory; default: the built-in model.
    #[arg(long, env = "DR_DETECTOR_MODEL")]
    pub model: Option<PathBuf>,
    /// A labelled CSV with the model's feature columns.
    #[arg(long, env = "DR_DETECTOR_DATA")]
    pub data: PathBuf,
}

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

const NAME: &str = "dr-detector";

/// Runs one command; its exit code as every etcd-dr binary gives it (`dr_common::process`):
/// 2 for logging it cannot set up or an address it cannot listen on, 1 for a failure.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return process::fail(NAME, format!("starting the async runtime: {err}")),
    };
    runtime.block_on(async {
        let _telemetry =
            match process::telemetry(NAME, "info", cli.log_format, cli.otlp_endpoint.as_deref()) {
                Ok(guard) => guard,
                Err(code) => return code,
            };
        let outcome = match cli.command {
            Command::Train(args) => train(args),
            Command::Eval(args) => eval(args),
            Command::Score(args) => score(args),
            Command::Serve(args) => return serve(args).await,
            Command::Export(args) => export(args).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => process::fail(NAME, err),
        }
    })
}

/// The model in `dir`, or the one built into the binary.
fn load_model(dir: Option<&std::path::Path>) -> anyhow::Result<Scorer> {
    Scorer::new(ModelBundle::load_or_default(dir)?)
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

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = Dataset::read(&args.data)?;
    let mut std_floors = std::collections::BTreeMap::new();
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

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let scorer = load_model(args.model.as_deref())?;
    let data = Dataset::read(&args.data)?;
    let report = crate::training::eval::evaluate(&scorer, &data)?;
    print_stdout(&serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let scorer = load_model(args.model.as_deref())?;
    let meta = &scorer.bundle.meta;
    let data = meta.select_data(&Dataset::read(&args.data)?)?;
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
    let mut windows = Vec::with_capacity(chosen.len());
    for start in chosen {
        let values: Vec<Vec<f64>> = data.rows[start..start + meta.window].to_vec();
        let mask = data.window_mask(start, meta.window);
        let scored = scorer
            .score(&data.window_values(start, meta.window), &mask)
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

async fn serve(args: ServeArgs) -> ExitCode {
    let (state, app) = match serving_state(&args) {
        Ok(ready) => ready,
        Err(err) => return process::fail(NAME, err),
    };
    process::serve(NAME, args.listen, |listener| async move {
        tracing::info!(listen = %args.listen, prometheus = %args.prometheus_url, "serving");
        let refresher = tokio::spawn(crate::serving::live::refresh_loop(state, args.refresh));
        // A request waits at most for one Prometheus pull plus the scoring.
        let request_timeout = args.prometheus_timeout + Duration::from_secs(5);
        let served = dr_common::http::serve(
            listener,
            app,
            request_timeout,
            dr_common::shutdown::signal(),
        )
        .await;
        refresher.abort();
        served.context("serving HTTP")?;
        tracing::info!("drained, exiting");
        anyhow::Ok(())
    })
    .await
}

/// The model loaded and the detector with its routes, before anything listens.
fn serving_state(args: &ServeArgs) -> anyhow::Result<(Arc<LiveScorer>, axum::Router)> {
    let scorer = load_model(args.model.as_deref())?;
    let meta = &scorer.bundle.meta;
    tracing::info!(
        model = %scorer.bundle.source,
        window = meta.window,
        step_seconds = meta.step_seconds,
        features = meta.features.len(),
        threshold = meta.threshold,
        "model loaded"
    );
    let max_push_age = args
        .max_push_age
        .unwrap_or_else(|| crate::serving::freshness::default_max_push_age(meta.step_seconds));
    tracing::info!(
        max_push_age = %humantime::format_duration(max_push_age),
        "instances whose last push is older get no score"
    );
    let mut registry = Registry::default();
    let state = Arc::new(LiveScorer::new(
        scorer,
        PromClient::new(&args.prometheus_url, args.prometheus_timeout)?,
        args.max_gap_steps,
        max_push_age,
        &mut registry,
    ));
    let app = crate::serving::http::app(state.clone(), registry, args.body_limit);
    Ok((state, app))
}

/// Unix seconds, RFC 3339, or `-<duration>` before `now`.
fn parse_time(text: &str, now: f64) -> anyhow::Result<f64> {
    let text = text.trim();
    if let Some(ago) = text.strip_prefix('-') {
        let ago = parse_duration(ago).map_err(anyhow::Error::msg)?;
        return Ok(now - ago.as_secs_f64());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    let at = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("`{text}` is not unix seconds, an RFC 3339 time or -<duration> like -6h")
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .context("a time before 1970")?
        .as_secs_f64())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    // Only the queries and the step are needed: no weights to lay out.
    let mut meta = ModelBundle::load_or_default(args.model.as_deref())?.meta;
    if let Some(step) = args.step {
        let step = step.as_secs_f64();
        anyhow::ensure!(step >= 1.0, "--step must be at least 1s");
        meta.step_seconds = step;
        meta.features = crate::model::features::default_features(step);
        meta.mask = Some(crate::model::features::default_mask(step));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64();
    let start = parse_time(&args.start, now).context("--start")?;
    let end = match &args.end {
        Some(end) => parse_time(end, now).context("--end")?,
        None => now,
    };
    let client = PromClient::new(&args.prometheus_url, args.prometheus_timeout)?;
    let exported =
        crate::training::export::export(&client, &meta, start, end, args.instance.as_deref())
            .await?;
    std::fs::write(&args.out, &exported.csv)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} rows for instance {} to {} ({} steps skipped for missing values)",
        exported.rows,
        exported.instance,
        args.out.display(),
        exported.skipped_steps
    );
    Ok(())
}

/// One line on stdout. A reader that went away (`| head`) is not an error worth a
/// panic, which `println!` would give: the output was simply not wanted.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(()),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s}: want a fraction between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_forms_operators_write() {
        assert_eq!(parse_time("1700000000", 0.0).unwrap(), 1_700_000_000.0);
        assert_eq!(parse_time("-1h", 10_000.0).unwrap(), 6_400.0);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", 0.0).unwrap(),
            1_700_000_000.0
        );
        assert!(parse_time("yesterday", 0.0).is_err());
    }

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let missing = dr_common::process::flags_without_env(&Cli::command(), "DR_DETECTOR_");
        assert!(missing.is_empty(), "{missing:?}");
    }
}
