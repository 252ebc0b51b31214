//! The HTTP service: `POST /webhook`, `GET /actions`, the ops endpoints, and the scheduled
//! snapshots, until shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use dr_common::http::{ApiError, Readiness, ops_router, spawn_serve};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::actions::snapshot;
use crate::audit::{Audit, Phase};
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::lock::{self, EtcdLock, LockError};
use crate::metrics::Metrics;
use crate::remediation::Remediator;
use crate::webhook::{Payload, Trigger, authorized};
use crate::{confirm, remediation};

/// Alertmanager bodies are a few KB; this leaves room for large groups.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A webhook answers within this; the remediation itself runs in the background.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DETECTOR_TIMEOUT: Duration = Duration::from_secs(5);
/// The cross-replica lock's lease TTL; kept alive while a run lasts.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long to wait for the lock before deciding another replica holds it.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long shutdown waits for a running remediation.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Shared by the handlers and the scheduler.
pub struct App {
    pub remediator: Arc<Remediator>,
    config: Config,
    running: Arc<tokio::sync::Mutex<()>>,
    cooldowns: Mutex<HashMap<String, Instant>>,
    http: reqwest::Client,
}

impl App {
    pub fn new(config: Config, registry: &mut Registry) -> Result<Arc<Self>, String> {
        let audit = Arc::new(Audit::open(&config.snapshot_dir)?);
        let metrics = Metrics::register(registry);
        let remediator = Arc::new(Remediator {
            access: config.etcd_access(),
            snapshot_dir: config.snapshot_dir.clone(),
            snapshot_retain: config.snapshot_retain,
            snapshot_timeout: config.snapshot_timeout,
            defrag_timeout: config.defrag_timeout,
            health_wait: config.health_wait,
            restore: config.restore.clone(),
            dry_run: config.dry_run,
            audit,
            metrics,
        });
        let http = reqwest::Client::builder()
            .timeout(DETECTOR_TIMEOUT)
            .build()
            .map_err(|err| format!("building the HTTP client: {err}"))?;
        Ok(Arc::new(App {
            remediator,
            config,
            running: Arc::new(tokio::sync::Mutex::new(())),
            cooldowns: Mutex::new(HashMap::new()),
            http,
        }))
    }

    /// Time, a per-process random tag (replicas in containers all run as PID 1) and a
    /// process-wide sequence: unique across replicas and across apps in one process.
    fn new_action_id(&self) -> String {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        static TAG: OnceLock<u64> = OnceLock::new();
        let tag = TAG.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is seeded from the OS's randomness once per process.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish() & 0xffff_ffff
        });
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        format!("{millis:x}-{tag:08x}-{n}")
    }

    fn in_cooldown(&self, fingerprint: &str) -> Option<Duration> {
        let cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        cooldowns
            .get(fingerprint)
            .and_then(|until| until.checked_duration_since(Instant::now()))
    }

    fn start_cooldown(&self, fingerprint: String) {
        let mut cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cooldowns.retain(|_, until| *until > now);
        cooldowns.insert(fingerprint, now + self.config.cooldown);
    }

    fn skip(&self, action_id: &str, reason: String) -> (StatusCode, Json<Value>) {
        self.remediator.metrics.count_webhook("skipped");
        let _ = self.remediator.audit.record(
            action_id,
            "webhook",
            "decide",
            Phase::Skipped,
            json!(reason),
            self.config.dry_run,
        );
        (StatusCode::OK, Json(json!({ "skipped": reason })))
    }

    /// Decides on a parsed, authenticated webhook; starts the remediation in the
    /// background when every check passes.
    async fn decide(self: &Arc<Self>, payload: Payload) -> (StatusCode, Json<Value>) {
        let action_id = self.new_action_id();
        let fingerprint = match payload.trigger(&self.config.alert_name) {
            Trigger::Fire { fingerprint } => fingerprint,
            Trigger::Skip(reason) => return self.skip(&action_id, reason),
        };
        if let Some(left) = self.in_cooldown(&fingerprint) {
            return self.skip(
                &action_id,
                format!(
                    "cooldown: alert {fingerprint} was remediated recently ({} left)",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ),
            );
        }
        // Held from here to the end of the run: a second webhook sees "already running".
        let Ok(guard) = self.running.clone().try_lock_owned() else {
            return self.skip(
                &action_id,
                "already running: a remediation is under way".into(),
            );
        };
        if let Some(detector) = &self.config.detector_url {
            match confirm::ask(&self.http, detector, DETECTOR_TIMEOUT).await {
                Ok(detail) => tracing::info!(%detail, "detector confirms"),
                Err(reason) => return self.skip(&action_id, format!("not confirmed: {reason}")),
            }
        }
        let access = &self.remediator.access;
        let view = match ClusterView::observe(access).await {
            Ok(view) => view,
            Err(err) => return self.skip(&action_id, format!("etcd not safe to act on: {err}")),
        };
        if let Err(reason) = view.safe_to_act() {
            return self.skip(&action_id, format!("etcd not safe to act on: {reason}"));
        }
        // Dry-run writes nothing to etcd, not even a lock key.
        let lock = if self.config.dry_run {
            None
        } else {
            match EtcdLock::try_acquire(access, LOCK_TTL, LOCK_WAIT).await {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    return self.skip(
                        &action_id,
                        "already running: another remediator holds the etcd lock".into(),
                    );
                }
                // Under NOSPACE etcd refuses the lease and the lock key; the repair is what
                // lifts that, so it proceeds unlocked and a restore will not run. The alarm
                // may be raised between reading the view and writing the lock key.
                Err(err) if view.nospace || matches!(err, LockError::Nospace(_)) => {
                    let _ = self.remediator.audit.record(
                        &action_id,
                        remediation::KIND,
                        "lock",
                        Phase::Info,
                        json!(format!(
                            "proceeding without the etcd lock under NOSPACE: {err}"
                        )),
                        false,
                    );
                    None
                }
                Err(err) => {
                    return self.skip(&action_id, format!("cannot take the etcd lock: {err}"));
                }
            }
        };
        // Checked under the lock: a replica that waited for it must not repeat the run the
        // holder just finished.
        if lock.is_some() {
            match lock::in_shared_cooldown(access, &fingerprint).await {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(lock) = lock {
                        lock.release().await;
                    }
                    return self.skip(
                        &action_id,
                        format!("cooldown: alert {fingerprint} was remediated recently by another replica"),
                    );
                }
                // The cooldown damps flapping; the lock is what keeps runs apart.
                Err(err) => tracing::warn!(error = %err, "cannot read the shared cooldown"),
            }
        }
        if self
            .remediator
            .audit
            .record(
                &action_id,
                remediation::KIND,
                "accepted",
                Phase::Info,
                json!({ "fingerprint": fingerprint, "lock": lock.as_ref().map(EtcdLock::key) }),
                self.config.dry_run,
            )
            .is_err()
        {
            if let Some(lock) = lock {
                lock.release().await;
            }
            self.remediator.metrics.count_webhook("failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "cannot write the audit log; not acting" })),
            );
        }
        self.remediator.metrics.count_webhook("started");
        let app = self.clone();
        let id = action_id.clone();
        tokio::spawn(async move {
            let outcome = app.remediator.run(&id, view, lock.is_some()).await;
            tracing::info!(action_id = %id, ?outcome, "remediation finished");
            if !app.config.dry_run {
                // Before the lock goes, so a replica waiting for it sees the cooldown.
                let access = &app.remediator.access;
                if let Err(err) =
                    lock::mark_cooldown(access, &fingerprint, app.config.cooldown).await
                {
                    tracing::warn!(error = %err, "cannot share the cooldown with other replicas");
                }
            }
            if let Some(lock) = lock {
                lock.release().await;
            }
            app.start_cooldown(fingerprint);
            drop(guard);
        });
        (
            StatusCode::ACCEPTED,
            Json(json!({ "action_id": action_id })),
        )
    }

    /// One scheduled snapshot, unless a remediation (which takes its own) is running.
    pub async fn scheduled_snapshot(&self) {
        let Ok(_guard) = self.running.try_lock() else {
            return;
        };
        let id = self.new_action_id();
        let audit = &self.remediator.audit;
        if audit
            .record(
                &id,
                "scheduled_snapshot",
                "snapshot",
                Phase::Start,
                Value::Null,
                false,
            )
            .is_err()
        {
            return;
        }
        let r = &self.remediator;
        let taken = snapshot::take(
            &r.access,
            &r.snapshot_dir,
            r.snapshot_retain,
            r.snapshot_timeout,
        )
        .await;
        r.metrics.snapshot_done(taken.is_ok());
        let (phase, detail) = match taken {
            Ok(info) => (Phase::Ok, json!(info)),
            Err(err) => (Phase::Failed, json!(err)),
        };
        let _ = audit.record(&id, "scheduled_snapshot", "snapshot", phase, detail, false);
    }
}

async fn webhook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(token) = &app.config.webhook_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !authorized(given, token) {
            app.remediator.metrics.count_webhook("unauthorized");
            return Err(ApiError::Unauthorized(
                "missing or wrong bearer token".into(),
            ));
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            app.remediator.metrics.count_webhook("too_large");
            ApiError::PayloadTooLarge(format!("webhook body over {MAX_BODY_BYTES} bytes"))
        })?;
    let payload = Payload::parse(&bytes).map_err(|err| {
        app.remediator.metrics.count_webhook("malformed");
        ApiError::BadRequest(err)
    })?;
    Ok(app.decide(payload).await)
}

#[derive(Deserialize)]
struct ActionsQuery {
    limit: Option<usize>,
}

async fn actions(
    State(app): State<Arc<App>>,
    query: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // axum's own rejection is plain text; errors here are JSON.
    let Query(query) = query.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let limit = query.limit.unwrap_or(50).min(1000);
    Ok(Json(
        json!({ "actions": app.remediator.audit.actions(limit) }),
    ))
}

/// `/webhook`, `/actions` and the ops endpoints.
pub fn router(app: Arc<App>, readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/actions", get(actions))
        .with_state(app)
        .merge(ops_router(readiness, registry))
}

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
    let app = App::new(config, &mut registry).map_err(anyhow::Error::msg)?;
    let readiness = Readiness::not_ready("etcd not reached yet");
    let mut stop = dr_common::shutdown::flag(shutdown);
    let server = spawn_serve(
        listener,
        router(app.clone(), readiness.clone(), Arc::new(registry)),
        REQUEST_TIMEOUT,
        stop.clone(),
    );
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
                    app.scheduled_snapshot().await;
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
        let wake = next_snapshot.min(tokio::time::Instant::now() + Duration::from_secs(15));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    server.await??;
    // Let a remediation under way reach its verdict, within a pod's usual grace period;
    // past that, etcd finishes a started defrag on its own and the audit log shows the
    // last step begun.
    if tokio::time::timeout(DRAIN_TIMEOUT, app.running.lock())
        .await
        .is_err()
    {
        tracing::warn!("shutting down with a remediation still running");
    }
    Ok(())
}
