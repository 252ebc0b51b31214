//! The service's life: a collection every interval for each target, and the `/healthz`
//! `/readyz` `/metrics` endpoints, until shutdown; then it drains.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dr_common::http::{Readiness, ops_router, spawn_serve};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::collect::Collector;
use crate::config::Config;
use crate::metrics::CollectorMetrics;

/// A request to `/metrics` or a probe never needs longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown` resolves, then lets the collection under way finish its current
/// attempt (a push in flight completes), stops the server and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = CollectorMetrics::register(&mut registry);
    let collector = Arc::new(Collector::new(&config, metrics).map_err(anyhow::Error::msg)?);
    let readiness = Readiness::not_ready("no successful push yet");

    let stop_rx = dr_common::shutdown::flag(shutdown);
    let server = spawn_serve(
        listener,
        ops_router(readiness.clone(), Arc::new(registry)),
        REQUEST_TIMEOUT,
        stop_rx.clone(),
    );

    let targets = Arc::new(config.targets.clone());
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = stop_rx.clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        // Leave a little of the interval so a retry never runs into the next tick.
        let deadline = Instant::now() + config.interval.mul_f64(0.9);
        let mut cycle = JoinSet::new();
        for index in 0..targets.len() {
            let (collector, targets, stop) = (collector.clone(), targets.clone(), stop_rx.clone());
            cycle.spawn(async move {
                let target = &targets[index];
                let outcome = collector
                    .collect_with_retries(target, deadline, &stop)
                    .await;
                (target.instance.clone(), outcome)
            });
        }
        while let Some(joined) = cycle.join_next().await {
            match joined {
                Ok((instance, Ok(pushed))) => {
                    readiness.set_ready();
                    tracing::info!(%instance, families = pushed.families, samples = pushed.samples, "pushed");
                }
                Ok((instance, Err(err))) => {
                    tracing::warn!(%instance, error = %err, "collection failed this interval");
                }
                Err(err) => tracing::error!(error = %err, "collection task failed"),
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    server.await??;
    Ok(())
}
