//! `serve`: the model loaded, the live scorer and its routes built, then `/score` and the
//! refresh loop served until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dr_common::duration::parse_duration;
use dr_common::process;
use prometheus_client::registry::Registry;

use crate::commands::{NAME, load_model};
use crate::prometheus::PromClient;
use crate::serving::live::LiveScorer;

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
    /// Label matchers added to every etcd and gRPC-server metric of the model's queries,
    /// e.g. `job="etcd"`: other jobs export the same families (kube-prometheus-stack's own
    /// etcd job, every other gRPC server), and the queries would add them in.
    #[arg(long, value_parser = crate::model::selector::parse, env = "DR_DETECTOR_ETCD_SELECTOR")]
    pub etcd_selector: Option<String>,
    /// The step windows are pulled at: the collector's push (or Prometheus' scrape)
    /// interval, 1s to 60s. Default: the model's own (1s for the shipped model, which
    /// recorded compressed time). A format 2 model serves at any step: its queries' ranges
    /// and its transforms are moved to it (see `model::step`).
    #[arg(long, value_parser = parse_duration, env = "DR_DETECTOR_STEP")]
    pub step: Option<Duration>,
}

pub async fn run(args: ServeArgs) -> ExitCode {
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

/// The model loaded and the live scorer with its routes, before anything listens.
fn serving_state(args: &ServeArgs) -> anyhow::Result<(Arc<LiveScorer>, axum::Router)> {
    let mut scorer = load_model(args.model.as_deref())?;
    if let Some(step) = args.step {
        crate::model::step::retarget(&mut scorer.bundle.meta, step.as_secs_f64())?;
    }
    if let Some(selector) = &args.etcd_selector {
        let meta = &mut scorer.bundle.meta;
        crate::model::selector::scope_all(&mut meta.features, meta.mask.as_mut(), selector);
    }
    let meta = &scorer.bundle.meta;
    tracing::info!(
        model = %scorer.bundle.source,
        etcd_selector = args.etcd_selector.as_deref().unwrap_or(""),
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
