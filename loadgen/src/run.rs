//! One run from start to summary: connect (and prove etcd answers), drive the scenario
//! until its first stop reason, drain the tasks, read etcd's state again, report.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::StatusResponse;
use tokio::time::{Instant, timeout};

use crate::config::Config;
use crate::ctx::Ctx;
use crate::etcd::connect;
use crate::progress;
use crate::scenarios;
use crate::stop::StopReason;
use crate::summary::{Run, Span, Summary};

/// How long tasks get to leave after the stop; they leave at their next await, so this
/// only matters if one is stuck.
const DRAIN: Duration = Duration::from_secs(5);

/// Runs the configured scenario until its duration, byte budget, NOSPACE (bigkey), a
/// fatal error or `interrupt` (Ctrl-C, SIGTERM) ends it. Errs only if etcd cannot be reached.
pub async fn run(config: Config, interrupt: impl Future<Output = ()>) -> Result<Summary, String> {
    let (mut client, before) = connect(&config).await?;
    let scenario = config.scenario.name();
    let started = Instant::now();
    let ctx = Arc::new(Ctx::new(client.clone(), config.load.clone(), started));
    tracing::info!(scenario, rate = ctx.load.rate, prefix = %ctx.load.key_prefix, seed = ctx.load.seed, "load started");
    let progress = progress::spawn(ctx.clone(), scenario);
    let mut tasks = tokio::spawn(scenarios::run(ctx.clone(), config.scenario.clone()));

    tokio::select! {
        () = interrupt => ctx.stop.stop(StopReason::Interrupted),
        () = tokio::time::sleep_until(started + config.load.duration) => ctx.stop.stop(StopReason::Duration),
        () = ctx.stop.stopped() => {}
    }
    let elapsed = started.elapsed();
    if timeout(DRAIN, &mut tasks).await.is_err() {
        tracing::warn!("tasks still busy {DRAIN:?} after the stop; abandoning them");
        tasks.abort();
    }
    // The progress task ends with the stop; waiting lets it clear its line first.
    let _ = timeout(DRAIN, progress).await;
    let after = timeout(config.request_timeout, client.status())
        .await
        .ok()
        .and_then(Result::ok);
    let stop_reason = ctx.stop.reason().unwrap_or(StopReason::Duration);
    let revision = |s: &StatusResponse| s.header().map(|h| h.revision());
    Ok(Summary::new(
        Run {
            scenario,
            key_prefix: config.load.key_prefix.clone(),
            seed: config.load.seed,
            target_rate: config.load.rate,
            elapsed,
            stop_reason,
            revision: Span {
                start: revision(&before),
                end: after.as_ref().and_then(revision),
            },
            db_size_bytes: Span {
                start: Some(before.db_size()),
                end: after.as_ref().map(StatusResponse::db_size),
            },
        },
        ctx.stats.recorded(),
    ))
}
