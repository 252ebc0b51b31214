//! `export`: the model's feature queries over a time range, written as a training CSV.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dr_common::duration::parse_duration;

use crate::model::model_dir::ModelBundle;
use crate::prometheus::PromClient;

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
    /// Label matchers added to every etcd and gRPC-server metric of the queries, e.g.
    /// `job="etcd"` (as `serve --etcd-selector`).
    #[arg(long, value_parser = crate::model::selector::parse, env = "DR_DETECTOR_ETCD_SELECTOR")]
    pub etcd_selector: Option<String>,
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

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    // Only the queries and the step are needed: no weights to lay out.
    let mut meta = ModelBundle::load_or_default(args.model.as_deref())?.meta;
    if let Some(step) = args.step {
        let step = step.as_secs_f64();
        anyhow::ensure!(step >= 1.0, "--step must be at least 1s");
        meta.step_seconds = step;
        meta.features = crate::model::features::default_features(step);
        meta.mask = Some(crate::model::features::default_mask(step));
    }
    if let Some(selector) = &args.etcd_selector {
        crate::model::selector::scope_all(&mut meta.features, meta.mask.as_mut(), selector);
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
}
