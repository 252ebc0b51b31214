//! Whether a webhook starts a remediation: every check in the order it runs, each reason to
//! skip ([`Skip`]), and the [`Permit`] a run holds until it ends.
//!
//! In order: the alert is ours and firing (the model's alert, or one of `--space-alerts`);
//! its fingerprint is not in this replica's cooldown; no run holds this process; the
//! detector confirms (the model's alert only); etcd's member list answers and no member
//! reports CORRUPT; the diagnosis ([`crate::diagnosis`]) and its plan ([`crate::plan`]); a
//! repair of space needs every member answering with a leader; the etcd lock is free (under
//! NOSPACE, or with quorum lost, the run goes on without it); under the lock, no other
//! replica has just remediated the same alert. Every decision is in the audit log.
//! [`Gate::preview`] runs the same checks that touch nothing, for `POST /plan`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde_json::json;
use tokio::sync::{MutexGuard, OwnedMutexGuard};

use crate::audit::{self, Audit, Phase};
use crate::cluster::{ClusterView, NotSafe};
use crate::config::Config;
use crate::confirm::{self, Unconfirmed};
use crate::diagnosis::{self, AlertFacts, Finding, MemberSigns};
use crate::error::AuditError;
use crate::etcd::{EtcdAccess, EtcdError};
use crate::lock::{self, EtcdLock};
use crate::plan::{self, Step};
use crate::remediation::{self, Remediator};
use crate::signs;
use crate::webhook::{Payload, Trigger};

/// How long the detector has to answer.
pub const DETECTOR_TIMEOUT: Duration = Duration::from_secs(5);
/// The cross-replica lock's lease TTL; kept alive while a run lasts.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long to wait for the lock before deciding another replica holds it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why a webhook did not start a remediation; the text is the answer's `skipped`.
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    #[error("resolved: {alert} is no longer firing")]
    Resolved { alert: String },
    #[error("other alert ({}), not {wanted}", .names.join(", "), wanted = .wanted.join(", "))]
    OtherAlert {
        names: Vec<String>,
        wanted: Vec<String>,
    },
    /// This replica remediated the alert less than `--cooldown` ago.
    #[error(
        "cooldown: alert {fingerprint} was remediated recently ({} left)",
        humantime::format_duration(Duration::from_secs(.left.as_secs()))
    )]
    Cooldown { fingerprint: String, left: Duration },
    #[error("already running: a remediation is under way")]
    Running,
    #[error("not confirmed: {0}")]
    NotConfirmed(Unconfirmed),
    #[error("etcd not safe to act on: {0}")]
    EtcdUnreachable(EtcdError),
    #[error("etcd not safe to act on: {0}")]
    NotSafe(NotSafe),
    #[error("already running: another remediator holds the etcd lock")]
    LockHeld,
    #[error("cannot take the etcd lock: {0}")]
    NoLock(EtcdError),
    /// Seen under the lock: the replica that held it before remediated this alert.
    #[error("cooldown: alert {fingerprint} was remediated recently by another replica")]
    SharedCooldown { fingerprint: String },
}

impl Skip {
    /// The skips that mean only "busy": another run holds this process or the etcd lock.
    /// These are retried ([`crate::retry`]); every other skip is a verdict on the alert or
    /// the cluster that a retry would only repeat.
    pub fn is_busy(&self) -> bool {
        matches!(self, Skip::Running | Skip::LockHeld)
    }
}

/// What the gate decided about one webhook; each outcome is already in the audit log.
pub enum Decision {
    Skip {
        action_id: String,
        reason: Skip,
    },
    /// Every check passed: run under this permit.
    Run(Permit),
    /// Every check passed, but the audit log refused to record it: not acting.
    Unrecorded {
        action_id: String,
        err: AuditError,
    },
}

/// The admission gate, one per process.
pub struct Gate {
    alert_name: String,
    /// Alerts that start the space plan without the detector.
    space_alerts: Vec<String>,
    health_wait: Duration,
    restore: bool,
    detector: Option<Url>,
    http: reqwest::Client,
    cooldown: Duration,
    dry_run: bool,
    access: EtcdAccess,
    /// Names the owner key of the etcd lock this replica takes.
    identity: String,
    audit: Arc<Audit>,
    /// Held by a run (or a scheduled snapshot) for its whole length: one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
    /// Fingerprint to the end of its cooldown in this replica.
    cooldowns: Mutex<HashMap<String, Instant>>,
}

impl Gate {
    pub fn new(config: &Config, audit: Arc<Audit>) -> Result<Self, reqwest::Error> {
        Ok(Gate {
            alert_name: config.alert_name.clone(),
            space_alerts: config.space_alerts.clone(),
            health_wait: config.health_wait,
            restore: config.restore.is_some(),
            detector: config.detector_url.clone(),
            http: reqwest::Client::builder()
                .timeout(DETECTOR_TIMEOUT)
                .build()?,
            cooldown: config.cooldown,
            dry_run: config.dry_run,
            access: config.etcd_access(),
            identity: config.identity.clone(),
            audit,
            running: Arc::new(tokio::sync::Mutex::new(())),
            cooldowns: Mutex::new(HashMap::new()),
        })
    }

    /// Decides on a parsed, authenticated webhook.
    pub async fn admit(self: &Arc<Self>, payload: &Payload) -> Decision {
        self.admit_as(payload, "webhook").await
    }

    /// [`admit`](Self::admit), a skip recorded as of `kind` (`webhook`, or `retry` for the
    /// remediator's own second try).
    pub async fn admit_as(self: &Arc<Self>, payload: &Payload, kind: &str) -> Decision {
        let action_id = audit::new_action_id();
        match self.check(payload, &action_id).await {
            Ok(permit) => self.accept(action_id, permit).await,
            Err(reason) => {
                let _ = self.audit.record(
                    &action_id,
                    kind,
                    "decide",
                    Phase::Skipped,
                    json!(reason.to_string()),
                    self.dry_run,
                );
                Decision::Skip { action_id, reason }
            }
        }
    }

    /// Holds the one-run slot for other work (a scheduled snapshot); `None` while a run
    /// holds it. A webhook meanwhile is skipped as already running.
    pub fn try_hold(&self) -> Option<MutexGuard<'_, ()>> {
        self.running.try_lock().ok()
    }

    /// What the payload asks, by this gate's alert names.
    pub fn trigger(&self, payload: &Payload) -> Trigger {
        payload.trigger(&self.alert_name, &self.space_alerts)
    }

    /// True when a model alert is confirmed by the detector (one is configured).
    pub fn confirms_with_detector(&self) -> bool {
        self.detector.is_some()
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// A look that takes nothing: does a run hold this process, or anyone the etcd lock?
    /// `Some(reason)` when busy. An etcd that cannot be read is not called busy: the full
    /// checks then say what is wrong.
    pub async fn busy(&self) -> Option<Skip> {
        if self.running.try_lock().is_err() {
            return Some(Skip::Running);
        }
        match lock::held_by_anyone(&self.access).await {
            Ok(true) => Some(Skip::LockHeld),
            _ => None,
        }
    }

    /// Returns once no run holds the slot (shutdown waits for this).
    pub async fn idle(&self) {
        drop(self.running.lock().await);
    }

    /// The checks that need nothing held: which alert, the detector's word, etcd's view,
    /// the diagnosis and its plan.
    fn assess(&self, payload: &Payload) -> Result<Assessment, Skip> {
        let (fingerprint, alert, by_rule) =
            match payload.trigger(&self.alert_name, &self.space_alerts) {
                Trigger::Fire {
                    fingerprint,
                    alert,
                    by_rule,
                } => (fingerprint, alert, by_rule),
                Trigger::Resolved { alert } => return Err(Skip::Resolved { alert }),
                Trigger::Other { names } => {
                    let mut wanted = vec![self.alert_name.clone()];
                    wanted.extend(self.space_alerts.iter().cloned());
                    return Err(Skip::OtherAlert { names, wanted });
                }
            };
        Ok(Assessment {
            fingerprint,
            alert,
            by_rule,
            finding: None,
            steps: Vec::new(),
            view: None,
        })
    }

    /// The detector (model alert only), etcd's view, the diagnosis and the plan.
    async fn diagnose(&self, assessment: &mut Assessment) -> Result<(), Skip> {
        let mut explanation = None;
        if let (Some(detector), false) = (&self.detector, assessment.by_rule) {
            let confirmed = confirm::ask(&self.http, detector, DETECTOR_TIMEOUT)
                .await
                .map_err(Skip::NotConfirmed)?;
            tracing::info!(detail = %confirmed.detail, "detector confirms");
            // Whatever shape the answer has: no usable explanation is no evidence.
            explanation = diagnosis::explanation(&confirmed.answer);
        }
        let view = ClusterView::observe(&self.access)
            .await
            .map_err(Skip::EtcdUnreachable)?;
        if view.corrupt {
            return Err(Skip::NotSafe(NotSafe::Corrupt));
        }
        // The members' metrics only where they could change the answer: not with a member
        // down or NOSPACE raised (those decide first).
        let all_answer = view.members.iter().all(|m| m.status.is_some());
        let signs = if all_answer && !view.nospace && view.leader().is_some() {
            signs::sample(&self.access, &view).await
        } else {
            MemberSigns::default()
        };
        let finding = diagnosis::diagnose(&assessment.alert, explanation.as_ref(), &view, &signs);
        if finding.diagnosis.reclaims_space() {
            // A repair that touches data needs every member, a leader and known alarms.
            view.safe_to_act().map_err(Skip::NotSafe)?;
        }
        assessment.steps = plan::build(&finding, &view, self.health_wait, self.restore);
        assessment.finding = Some(finding);
        assessment.view = Some(view);
        Ok(())
    }

    /// What a webhook with this payload would get, touching nothing: no cooldown, slot or
    /// lock is taken and nothing is written (`POST /plan`).
    pub async fn preview(&self, payload: &Payload) -> Result<Preview, Skip> {
        let mut assessment = self.assess(payload)?;
        self.diagnose(&mut assessment).await?;
        let cooldown = assessment
            .finding
            .as_ref()
            .and_then(|f| self.in_cooldown(&cooldown_key(&assessment.fingerprint, f)));
        Ok(Preview {
            alert: assessment.alert.name,
            by_rule: assessment.by_rule,
            finding: assessment.finding,
            steps: assessment.steps,
            in_cooldown: cooldown.is_some(),
            dry_run: self.dry_run,
        })
    }

    /// Every check, in order; the permit holds what they took.
    async fn check(self: &Arc<Self>, payload: &Payload, action_id: &str) -> Result<Permit, Skip> {
        let mut assessment = self.assess(payload)?;
        // Held from here to the end of the run: a second webhook sees "already running".
        let running = self
            .running
            .clone()
            .try_lock_owned()
            .map_err(|_| Skip::Running)?;
        self.diagnose(&mut assessment).await?;
        let (Some(finding), Some(view)) = (assessment.finding, assessment.view) else {
            return Err(Skip::EtcdUnreachable(EtcdError::Unexpected(
                "no cluster view after the diagnosis",
            )));
        };
        // The cooldown is per alert and diagnosis: an alert escalated as `unknown` that
        // turns into `space` (NOSPACE raised since) is repaired at once.
        let fingerprint = cooldown_key(&assessment.fingerprint, &finding);
        if let Some(left) = self.in_cooldown(&fingerprint) {
            return Err(Skip::Cooldown { fingerprint, left });
        }
        let lock = self.lock(&view, &finding, action_id).await?;
        let permit = Permit {
            gate: self.clone(),
            action_id: action_id.to_owned(),
            fingerprint,
            by_rule: assessment.by_rule,
            alert: assessment.alert.name,
            finding,
            steps: assessment.steps,
            view,
            lock,
            _running: running,
        };
        // Checked under the lock: a replica that waited for it must not repeat the run the
        // holder just finished.
        if permit.lock.is_some() {
            match lock::in_shared_cooldown(&self.access, &permit.fingerprint).await {
                Ok(false) => {}
                Ok(true) => {
                    let fingerprint = permit.give_back().await;
                    return Err(Skip::SharedCooldown { fingerprint });
                }
                // The cooldown damps flapping; the lock is what keeps runs apart.
                Err(err) => tracing::warn!(error = %err, "cannot read the shared cooldown"),
            }
        }
        Ok(permit)
    }

    /// The etcd lock, or `None` where a run goes on without it: in dry-run (which writes
    /// nothing to etcd, not even a lock key) and under NOSPACE.
    async fn lock(
        &self,
        view: &ClusterView,
        finding: &Finding,
        action_id: &str,
    ) -> Result<Option<EtcdLock>, Skip> {
        if self.dry_run {
            return Ok(None);
        }
        if finding.quorum == Some(false) {
            // etcd grants no lease without quorum, to anyone: the lost-quorum plan goes on
            // without the lock (its restore checks again that quorum is still lost).
            let _ = self.audit.record(
                action_id,
                remediation::KIND,
                "lock",
                Phase::Info,
                json!("proceeding without the etcd lock: quorum is lost"),
                false,
            );
            return Ok(None);
        }
        match EtcdLock::try_acquire(&self.access, &self.identity, LOCK_TTL, LOCK_WAIT).await {
            Ok(Some(lock)) => Ok(Some(lock)),
            Ok(None) => Err(Skip::LockHeld),
            // Under NOSPACE etcd refuses the lease and the lock key; the repair is what
            // lifts that, so it proceeds unlocked and a restore will not run. The alarm
            // may be raised between reading the view and writing the lock key.
            Err(err) if view.nospace || err.is_nospace() => {
                let _ = self.audit.record(
                    action_id,
                    remediation::KIND,
                    "lock",
                    Phase::Info,
                    json!(format!(
                        "proceeding without the etcd lock under NOSPACE: {err}"
                    )),
                    false,
                );
                Ok(None)
            }
            Err(err) => Err(Skip::NoLock(err)),
        }
    }

    /// Records the accepted run; a run that cannot be recorded does not start.
    async fn accept(&self, action_id: String, permit: Permit) -> Decision {
        let recorded = self.audit.record(
            &action_id,
            remediation::KIND,
            "accepted",
            Phase::Info,
            json!({
                "fingerprint": permit.fingerprint,
                "alert": permit.alert,
                "trigger": if permit.by_rule { "rule" } else { "model" },
                "diagnosis": permit.finding.diagnosis,
                "lock": permit.lock.as_ref().map(EtcdLock::key),
            }),
            self.dry_run,
        );
        match recorded {
            Ok(()) => Decision::Run(permit),
            Err(err) => {
                permit.give_back().await;
                Decision::Unrecorded { action_id, err }
            }
        }
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
        cooldowns.insert(fingerprint, now + self.cooldown);
    }
}

/// What an admitted run holds: the process's one-run slot, the etcd lock (if it got it)
/// and the alert's fingerprint. [`run`](Self::run) releases all of them when it ends.
pub struct Permit {
    gate: Arc<Gate>,
    action_id: String,
    fingerprint: String,
    alert: String,
    by_rule: bool,
    finding: Finding,
    steps: Vec<Step>,
    /// The cluster as the checks saw it; the plan is built from it.
    view: ClusterView,
    lock: Option<EtcdLock>,
    _running: OwnedMutexGuard<()>,
}

impl Permit {
    pub fn action_id(&self) -> &str {
        &self.action_id
    }

    pub fn finding(&self) -> &Finding {
        &self.finding
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs the remediation, then lets go of what the permit holds: the shared cooldown
    /// first (before the lock goes, so a replica waiting for it sees the cooldown), then
    /// the lock, then this replica's cooldown, and last the one-run slot.
    pub async fn run(self, remediator: &Remediator) {
        let outcome = remediator
            .run(
                &self.action_id,
                &self.finding,
                &self.steps,
                &self.view,
                self.lock.is_some(),
            )
            .await;
        tracing::info!(action_id = %self.action_id, ?outcome, "remediation finished");
        let gate = &self.gate;
        if !gate.dry_run {
            if let Err(err) =
                lock::mark_cooldown(&gate.access, &self.fingerprint, gate.cooldown).await
            {
                tracing::warn!(error = %err, "cannot share the cooldown with other replicas");
            }
        }
        if let Some(lock) = self.lock {
            lock.release().await;
        }
        gate.start_cooldown(self.fingerprint);
    }

    /// Gives the permit back unused (no cooldown starts); returns the fingerprint.
    async fn give_back(self) -> String {
        if let Some(lock) = self.lock {
            lock.release().await;
        }
        self.fingerprint
    }
}

/// What keys the cooldown (here and in etcd): the alert's fingerprint and the diagnosis.
fn cooldown_key(fingerprint: &str, finding: &Finding) -> String {
    format!("{fingerprint}-{}", finding.diagnosis)
}

/// What the checks found before anything is held.
struct Assessment {
    fingerprint: String,
    alert: AlertFacts,
    by_rule: bool,
    finding: Option<Finding>,
    steps: Vec<Step>,
    view: Option<ClusterView>,
}

/// `POST /plan`'s answer: what a webhook would do now.
#[derive(Debug, serde::Serialize)]
pub struct Preview {
    pub alert: String,
    /// A rule alert (no detector asked), or the model's.
    pub by_rule: bool,
    pub finding: Option<Finding>,
    pub steps: Vec<Step>,
    /// The webhook would be skipped for the cooldown.
    pub in_cooldown: bool,
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_read_as_the_webhook_answers_them() {
        let resolved = Skip::Resolved {
            alert: "EtcdAnomalyScoreHigh".into(),
        };
        assert_eq!(
            resolved.to_string(),
            "resolved: EtcdAnomalyScoreHigh is no longer firing"
        );
        let other = Skip::OtherAlert {
            names: vec!["A".into(), "B".into()],
            wanted: vec!["EtcdAnomalyScoreHigh".into()],
        };
        assert_eq!(
            other.to_string(),
            "other alert (A, B), not EtcdAnomalyScoreHigh"
        );
        let cooldown = Skip::Cooldown {
            fingerprint: "f1".into(),
            left: Duration::from_millis(61_500),
        };
        assert_eq!(
            cooldown.to_string(),
            "cooldown: alert f1 was remediated recently (1m 1s left)"
        );
        assert_eq!(
            Skip::NotSafe(NotSafe::NoLeader).to_string(),
            "etcd not safe to act on: no leader"
        );
    }
}
