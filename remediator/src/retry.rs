//! A skipped alert is not a lost alert: a firing alert skipped only because another run
//! held this process or the etcd lock ([`Skip::is_busy`]) is tried again by the remediator
//! itself, with backoff, within `--retry-skipped-for` and `--retry-max-attempts`, while the
//! alert still fires. Alertmanager would repeat it only after its `repeat_interval`
//! (hours, in most installs).
//!
//! "Still fires": for the model's alert with a detector, the gate's own confirmation
//! (a calm detector ends the retry); otherwise Alertmanager's `GET /api/v2/alerts`, when
//! `--alertmanager-url` is set, or else the alert is trusted for the window. Not retried:
//! a cooldown (the alert was just remediated), dry-run, and a cluster not safe to act on
//! (a verdict on the cluster, not a wait; the alert's next repeat is judged afresh).
//!
//! Each retry is one action of kind `retry` in the audit log: `scheduled`, an `attempt`
//! per busy try, and a last `retry` event with the outcome (the run's action id when it
//! started one).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::{self, Phase};
use crate::config::RetryPolicy;
use crate::confirm::Unconfirmed;
use crate::gate::{Decision, Gate, Skip};
use crate::remediation::Remediator;
use crate::webhook::{Payload, Trigger};

pub const KIND: &str = "retry";
/// The kind the gate records an attempt's decision under.
pub const CHECK_KIND: &str = "retry_check";
/// Retries waiting at once; past this a busy skip is not retried (a flood of distinct
/// alerts must not grow memory without bound).
const MAX_PENDING: usize = 16;
/// How long Alertmanager has to answer.
const ALERTMANAGER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the retries to record that they stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A retry the skip's answer names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scheduled {
    pub action_id: String,
    /// RFC 3339: no attempt after this.
    pub until: String,
    /// False when a retry of the same alert was already waiting (this is that one).
    pub new: bool,
}

/// Why Alertmanager could not say whether the alert fires.
#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("Alertmanager URL {base}: {reason}")]
    Url { base: Url, reason: String },
    #[error("Alertmanager unreachable at {url}: {error}")]
    Unreachable { url: Url, error: reqwest::Error },
    #[error("Alertmanager answered {status}")]
    Status { status: reqwest::StatusCode },
    #[error("Alertmanager's answer is not a list of alerts: {0}")]
    NotAlerts(reqwest::Error),
}

#[derive(Deserialize)]
struct AmAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    status: AmStatus,
}

#[derive(Deserialize)]
struct AmStatus {
    state: String,
}

/// Whether Alertmanager has an active (not silenced, not inhibited) alert with exactly
/// these labels: the same alert, since Alertmanager's fingerprint is of its labels.
pub async fn firing_in_alertmanager(
    http: &reqwest::Client,
    base: &Url,
    labels: &BTreeMap<String, String>,
) -> Result<bool, AlertmanagerError> {
    let mut url = base
        .join("api/v2/alerts")
        .map_err(|err| AlertmanagerError::Url {
            base: base.clone(),
            reason: err.to_string(),
        })?;
    let name = labels.get("alertname").map_or("", String::as_str);
    url.query_pairs_mut()
        .append_pair("filter", &format!("alertname=\"{name}\""))
        .append_pair("active", "true")
        .append_pair("silenced", "false")
        .append_pair("inhibited", "false");
    let response = http
        .get(url.clone())
        .timeout(ALERTMANAGER_TIMEOUT)
        .send()
        .await
        .map_err(|error| AlertmanagerError::Unreachable { url, error })?;
    let status = response.status();
    if !status.is_success() {
        return Err(AlertmanagerError::Status { status });
    }
    let alerts: Vec<AmAlert> = response
        .json()
        .await
        .map_err(AlertmanagerError::NotAlerts)?;
    Ok(alerts
        .iter()
        .any(|a| a.status.state == "active" && a.labels == *labels))
}

/// One try's result.
enum Attempt {
    /// A remediation started under this action id.
    Started(String),
    /// Still busy, or the alert's state cannot be learned now: try again.
    Again(String),
    /// The alert no longer fires.
    NotFiring(String),
    /// Skipped for a reason a retry would only repeat.
    Stop(String),
}

/// The retries of one process.
pub struct Retries {
    policy: Option<RetryPolicy>,
    gate: Arc<Gate>,
    remediator: Arc<Remediator>,
    alertmanager: Option<Url>,
    http: reqwest::Client,
    /// Alert fingerprint to its waiting retry's id.
    pending: Mutex<HashMap<String, Scheduled>>,
    stop: watch::Sender<bool>,
}

impl Retries {
    pub fn new(
        policy: Option<RetryPolicy>,
        gate: Arc<Gate>,
        remediator: Arc<Remediator>,
        alertmanager: Option<Url>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Retries {
            policy,
            gate,
            remediator,
            alertmanager,
            http: reqwest::Client::builder()
                .timeout(ALERTMANAGER_TIMEOUT)
                .build()?,
            pending: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Scheduled>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Retries waiting now.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    /// Schedules a retry of `payload` after the skip `skip_id` for `reason`, when that skip
    /// is one to retry; `None` otherwise.
    pub fn schedule(
        self: &Arc<Self>,
        payload: Payload,
        skip_id: &str,
        reason: &Skip,
    ) -> Option<Scheduled> {
        let policy = self.policy?;
        if self.gate.dry_run() || !reason.is_busy() || *self.stop.borrow() {
            return None;
        }
        let Trigger::Fire {
            fingerprint, alert, ..
        } = self.gate.trigger(&payload)
        else {
            return None;
        };
        let scheduled = {
            let mut pending = self.pending();
            if let Some(waiting) = pending.get(&fingerprint) {
                return Some(Scheduled {
                    new: false,
                    ..waiting.clone()
                });
            }
            if pending.len() >= MAX_PENDING {
                tracing::warn!(%fingerprint, "not retrying: {MAX_PENDING} retries already wait");
                return None;
            }
            let until = SystemTime::now() + policy.window;
            let scheduled = Scheduled {
                action_id: audit::new_action_id(),
                until: humantime::format_rfc3339_seconds(until).to_string(),
                new: true,
            };
            pending.insert(fingerprint.clone(), scheduled.clone());
            scheduled
        };
        let recorded = self.record(
            &scheduled.action_id,
            "scheduled",
            Phase::Info,
            json!({
                "skipped": skip_id,
                "reason": reason.to_string(),
                "alert": alert.name,
                "fingerprint": fingerprint,
                "until": scheduled.until,
                "max_attempts": policy.max_attempts,
            }),
        );
        if recorded.is_err() {
            // A retry that cannot be recorded is not taken.
            self.pending().remove(&fingerprint);
            return None;
        }
        let this = self.clone();
        let id = scheduled.action_id.clone();
        tokio::spawn(async move {
            this.retry(policy, id, payload, fingerprint, alert.labels)
                .await;
        });
        Some(scheduled)
    }

    fn record(&self, id: &str, step: &str, phase: Phase, detail: Value) -> Result<(), ()> {
        self.remediator
            .audit
            .record(id, KIND, step, phase, detail, false)
            .map_err(|err| tracing::warn!(error = %err, action_id = id, "cannot record the retry"))
    }

    async fn retry(
        self: Arc<Self>,
        policy: RetryPolicy,
        id: String,
        payload: Payload,
        fingerprint: String,
        labels: BTreeMap<String, String>,
    ) {
        let deadline = Instant::now() + policy.window;
        let mut stop = self.stop.subscribe();
        let mut wait = policy.interval;
        let mut attempts = 0u32;
        let (outcome, phase, detail) = loop {
            let wake = (Instant::now() + wait).min(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = stop.wait_for(|stopped| *stopped) => {
                    break ("stopped", Phase::Skipped, json!({
                        "attempts": attempts,
                        "reason": "the remediator is shutting down",
                    }));
                }
            }
            attempts += 1;
            match self.attempt(&payload, &labels).await {
                Attempt::Started(run) => {
                    break (
                        "started",
                        Phase::Ok,
                        json!({ "attempts": attempts, "action_id": run }),
                    );
                }
                Attempt::NotFiring(why) => {
                    break (
                        "not_firing",
                        Phase::Skipped,
                        json!({ "attempts": attempts, "reason": why }),
                    );
                }
                Attempt::Stop(why) => {
                    break (
                        "stopped",
                        Phase::Skipped,
                        json!({ "attempts": attempts, "reason": why }),
                    );
                }
                Attempt::Again(why) => {
                    let _ = self.record(
                        &id,
                        "attempt",
                        Phase::Info,
                        json!({ "attempt": attempts, "again": why }),
                    );
                    if attempts >= policy.max_attempts || Instant::now() >= deadline {
                        break (
                            "gave_up",
                            Phase::Failed,
                            json!({
                                "attempts": attempts,
                                "reason": format!("still not possible after {attempts} attempts: {why}"),
                            }),
                        );
                    }
                }
            }
            wait = policy.next_wait(wait);
        };
        let mut detail = detail;
        detail["outcome"] = json!(outcome);
        let _ = self.record(&id, KIND, phase, detail);
        self.remediator.metrics.count_retry(outcome);
        self.pending().remove(&fingerprint);
    }

    async fn attempt(&self, payload: &Payload, labels: &BTreeMap<String, String>) -> Attempt {
        if let Some(busy) = self.gate.busy().await {
            return Attempt::Again(busy.to_string());
        }
        let by_detector = !matches!(
            self.gate.trigger(payload),
            Trigger::Fire { by_rule: true, .. }
        ) && self.gate.confirms_with_detector();
        if let (false, Some(am)) = (by_detector, &self.alertmanager) {
            match firing_in_alertmanager(&self.http, am, labels).await {
                Ok(true) => {}
                Ok(false) => {
                    return Attempt::NotFiring("Alertmanager has it no longer firing".into());
                }
                Err(err) => return Attempt::Again(err.to_string()),
            }
        }
        match self.gate.admit_as(payload, CHECK_KIND).await {
            Decision::Run(permit) => {
                let run = permit.action_id().to_owned();
                let remediator = self.remediator.clone();
                tokio::spawn(async move { permit.run(&remediator).await });
                Attempt::Started(run)
            }
            Decision::Skip { reason, .. } if reason.is_busy() => Attempt::Again(reason.to_string()),
            Decision::Skip {
                reason:
                    reason
                    @ Skip::NotConfirmed(Unconfirmed::Calm { .. } | Unconfirmed::WarmingUp { .. }),
                ..
            } => Attempt::NotFiring(reason.to_string()),
            // The detector could not be asked: that is no verdict on the alert.
            Decision::Skip {
                reason: reason @ Skip::NotConfirmed(_),
                ..
            } => Attempt::Again(reason.to_string()),
            Decision::Skip { reason, .. } => Attempt::Stop(reason.to_string()),
            Decision::Unrecorded { err, .. } => {
                Attempt::Stop(format!("cannot write the audit log: {err}"))
            }
        }
    }

    /// Stops every waiting retry (each records that it stopped), within a bound.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let deadline = Instant::now() + STOP_WAIT;
        while self.waiting() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
