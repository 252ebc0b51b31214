//! The service's life: serves HTTP until shutdown, keeps readiness current, takes the
//! scheduled snapshots, then drains.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dr_common::http::{Readiness, spawn_serve};
use dr_common::https::TlsListener;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{self, Phase};
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::http::router;

/// A webhook answers within this; the remediation itself runs in the background.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for a running remediation.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// How often readiness is checked between snapshots.
const READINESS_PERIOD: Duration = Duration::from_secs(15);

/// Serves until `shutdown`, taking scheduled snapshots every interval. Work under way when
/// shutdown comes (a remediation, or a readiness check and scheduled snapshot) gets
/// `DRAIN_TIMEOUT` to finish.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let interval = config.snapshot_interval;
    let dry_run = config.dry_run;
    crate::actions::store::register(&mut registry, &config.snapshots.stores());
    let app = App::new(config, &mut registry)?;
    // Before the listener serves: a webhook must not meet a predecessor's lock or run.
    let recovered = crate::recovery::recover(&app.remediator, &app.identity).await;
    if recovered.found_anything() {
        tracing::warn!(recovery = %json!(recovered), "recovered from an earlier process's end");
    }
    let readiness = Readiness::not_ready("etcd not reached yet");
    let mut stop = dr_common::shutdown::flag(shutdown);
    let router = router(app.clone(), readiness.clone(), Arc::new(registry));
    let server = match &app.listener_tls {
        Some(tls) => spawn_serve(
            TlsListener::new(listener, tls.clone())?,
            router,
            REQUEST_TIMEOUT,
            stop.clone(),
        ),
        None => spawn_serve(listener, router, REQUEST_TIMEOUT, stop.clone()),
    };
    let proofs = app.prover.clone().and_then(|prover| {
        let interval = prover.settings.interval?;
        Some(tokio::spawn(scheduled_proofs(prover, interval)))
    });
    // Ready once etcd answers; re-checked each interval of the readiness loop.
    let mut next_snapshot = tokio::time::Instant::now() + interval;
    loop {
        {
            let work = async {
                match ClusterView::observe(&app.remediator.access).await {
                    Ok(_) => readiness.set_ready(),
                    Err(err) => readiness.set_not_ready(format!("etcd: {err}")),
                }
                if !dry_run && tokio::time::Instant::now() >= next_snapshot {
                    scheduled_snapshot(&app).await;
                    next_snapshot = tokio::time::Instant::now() + interval;
                }
            };
            tokio::pin!(work);
            let stopped = tokio::select! {
                () = &mut work => false,
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if stopped {
                // A snapshot download may take --snapshot-timeout; a drain may not. An
                // abandoned download leaves no file behind.
                if tokio::time::timeout(DRAIN_TIMEOUT, work).await.is_err() {
                    tracing::warn!("shutting down with a scheduled snapshot unfinished");
                }
                break;
            }
        }
        let wake = next_snapshot.min(tokio::time::Instant::now() + READINESS_PERIOD);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    // A proof under way is dropped: its throwaway etcd is killed, its scratch dir removed.
    if let Some(proofs) = proofs {
        proofs.abort();
        let _ = proofs.await;
    }
    server.await??;
    app.retries.shutdown().await;
    // Let a remediation under way reach its verdict, within a pod's usual grace period;
    // past that, etcd finishes a started defrag on its own and the audit log shows the
    // last step begun.
    if tokio::time::timeout(DRAIN_TIMEOUT, app.gate.idle())
        .await
        .is_err()
    {
        tracing::warn!("shutting down with a remediation still running");
    }
    Ok(())
}

/// One scheduled snapshot, unless a remediation (which takes its own) is running.
async fn scheduled_snapshot(app: &App) {
    let Some(_slot) = app.gate.try_hold() else {
        return;
    };
    let id = audit::new_action_id();
    let r = &app.remediator;
    let record = |phase, detail| {
        r.audit
            .record(&id, "scheduled_snapshot", "snapshot", phase, detail, false)
    };
    if record(Phase::Start, Value::Null).is_err() {
        return;
    }
    let _ = match r.take_snapshot().await {
        Ok(info) => {
            let recorded = record(Phase::Ok, json!(info));
            r.upload_later(&id, &info);
            recorded
        }
        Err(err) => record(Phase::Failed, json!(err.to_string())),
    };
}

/// The first scheduled proof comes this soon after start (or after the interval, if
/// shorter), so a pod restarted more often than the interval still proves its snapshots.
const FIRST_PROOF_AFTER: Duration = Duration::from_secs(600);

/// Proves the stores every `interval` (a round already running on demand is not doubled).
async fn scheduled_proofs(prover: Arc<crate::actions::proof::Prover>, interval: Duration) {
    tokio::time::sleep(interval.min(FIRST_PROOF_AFTER)).await;
    loop {
        if prover.round_now().await.is_none() {
            tracing::info!("scheduled proof skipped: one is running");
        }
        tokio::time::sleep(interval).await;
    }
}
