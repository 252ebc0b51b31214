//! Runs one remediation: the plan's steps in order, each recorded in the audit log before
//! and after it runs. A failed repair step stops the repair (later steps are recorded as
//! skipped) but never the verdict: the health check always runs, and a restore happens only
//! when the cluster is still unavailable and a verified snapshot of this run exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::actions::disarm::{self, Disarm};
use crate::actions::restore::{self, RestoreCommands};
use crate::actions::snapshot;
use crate::actions::snapshot::{SnapshotInfo, SnapshotPolicy};
use crate::actions::verify::{self, Health};
use crate::actions::{compact, defrag};
use crate::audit::{Audit, Phase};
use crate::cluster::ClusterView;
use crate::diagnosis::Finding;
use crate::error::{ActionError, AuditError};
use crate::etcd::EtcdAccess;
use crate::metrics::Metrics;
use crate::plan::Step;

pub const KIND: &str = "remediation";
/// The audit kind of a snapshot's upload to the store, under the action id that took it.
pub const UPLOAD_KIND: &str = "snapshot_upload";

/// Everything a remediation needs, shared by the webhook and the scheduler.
pub struct Remediator {
    pub access: EtcdAccess,
    pub snapshots: SnapshotPolicy,
    pub defrag_timeout: Duration,
    pub health_wait: Duration,
    pub restore: Option<RestoreCommands>,
    pub dry_run: bool,
    pub audit: Arc<Audit>,
    pub metrics: Metrics,
}

/// How a remediation ended.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub health: Option<Health>,
    pub restored: bool,
}

impl Remediator {
    /// A snapshot by the policy, counted in the metrics (the run's first step and the
    /// scheduled ones).
    pub async fn take_snapshot(&self) -> Result<SnapshotInfo, ActionError> {
        let taken = self.snapshots.take(&self.access).await;
        self.metrics.snapshot_done(taken.is_ok());
        taken
    }

    /// Copies a verified snapshot to `--snapshot-store` (and `--snapshot-store-secondary`,
    /// independently: one store's loss never holds up or fails the other's) in the
    /// background: the run goes on with its local copy at once. Each result is recorded
    /// later under the run's `id` as kind `snapshot_upload`, step `upload` (the first store)
    /// or `upload_secondary` (a kind of its own, so an upload still going when the process
    /// dies never makes the run itself look interrupted).
    pub fn upload_later(&self, id: &str, info: &SnapshotInfo) {
        if self.snapshots.upload_inline {
            return;
        }
        let stores = [
            (self.snapshots.store.clone(), "upload"),
            (self.snapshots.secondary.clone(), "upload_secondary"),
        ];
        for (store, step) in stores {
            let Some(store) = store else {
                continue;
            };
            let (audit, id, path) = (self.audit.clone(), id.to_owned(), info.path.clone());
            tokio::spawn(async move {
                let (phase, detail) = match store.upload(&path).await {
                    Ok(uploaded) => (Phase::Ok, json!(uploaded)),
                    Err(err) => (
                        Phase::Failed,
                        json!({ "path": path, "store": store.label(), "error": err.to_string(), "local_copy": "kept" }),
                    ),
                };
                let _ = audit.record(&id, UPLOAD_KIND, step, phase, detail, false);
            });
        }
    }

    fn record(&self, id: &str, step: &str, phase: Phase, detail: Value) -> Result<(), AuditError> {
        self.audit
            .record(id, KIND, step, phase, detail, self.dry_run)
    }

    /// Runs `steps`, the plan built for `finding` from `view`. `locked`: the caller holds
    /// the cross-replica lock (not in dry-run, nor when etcd refuses writes or has lost
    /// quorum); a restore needs it, except when quorum was already lost (etcd then grants
    /// no lock to anyone).
    pub async fn run(
        &self,
        id: &str,
        finding: &Finding,
        steps: &[Step],
        view: &ClusterView,
        locked: bool,
    ) -> Outcome {
        let started = Instant::now();
        self.metrics.count_diagnosis(finding.diagnosis);
        let outcome = if self
            .record(id, "diagnosis", Phase::Info, json!(finding))
            .and_then(|()| {
                self.record(
                    id,
                    "plan",
                    Phase::Info,
                    json!({ "diagnosis": finding.diagnosis, "steps": steps, "cluster": view }),
                )
            })
            .is_err()
        {
            Outcome {
                health: None,
                restored: false,
            }
        } else if self.dry_run {
            tracing::info!(action_id = id, plan = %json!(steps), "dry run: plan only, nothing touched");
            Outcome {
                health: None,
                restored: false,
            }
        } else {
            let may_restore = locked || finding.quorum == Some(false);
            self.execute(id, view, steps, may_restore).await
        };
        let seconds = started.elapsed().as_secs_f64();
        if !self.dry_run {
            self.metrics.remediation_duration.observe(seconds);
        }
        let _ = self.record(
            id,
            "finished",
            Phase::Info,
            json!({ "seconds": seconds, "diagnosis": finding.diagnosis, "health": outcome.health, "restored": outcome.restored }),
        );
        outcome
    }

    async fn execute(&self, id: &str, view: &ClusterView, steps: &[Step], locked: bool) -> Outcome {
        // Only the repair stops without a snapshot: an escalation or a restore from an
        // older verified snapshot still has to happen.
        let repairs = steps.iter().any(|s| matches!(s, Step::Compact));
        let mut snapshot_path: Option<PathBuf> = None;
        let mut repair_stopped: Option<String> = None;
        let mut health: Option<Health> = None;
        let mut restored = false;
        for step in steps {
            let name = step_name(step);
            let repair_step = matches!(
                step,
                Step::Compact | Step::Defrag { .. } | Step::DisarmNospace
            );
            if let (true, Some(reason)) = (repair_step, &repair_stopped) {
                let _ = self.record(id, &name, Phase::Skipped, json!(reason));
                continue;
            }
            if self.record(id, &name, Phase::Start, json!(step)).is_err() {
                // Cannot record it, so do not do it; nor anything after it.
                return Outcome { health, restored };
            }
            let result: Result<Value, ActionError> = match step {
                Step::Snapshot => self.take_snapshot().await.map(|info| {
                    snapshot_path = Some(info.path.clone());
                    self.upload_later(id, &info);
                    json!(info)
                }),
                Step::Compact => compact::to_current_revision(&self.access)
                    .await
                    .map(|revision| json!({ "revision": revision })),
                Step::Defrag { endpoint, .. } => match self.every_member_healthy().await {
                    // No defrag while any member is unhealthy: it would block one more.
                    Err(err) => Err(err),
                    Ok(()) => {
                        let done =
                            defrag::member(&self.access, endpoint, self.defrag_timeout).await;
                        self.metrics.count_defrag(done.is_ok());
                        done.map(|outcome| json!(outcome))
                    }
                },
                Step::DisarmNospace => match disarm::nospace(&self.access).await {
                    Ok(Disarm::TooFull(sizes)) => {
                        let _ = self.record(
                            id,
                            &name,
                            Phase::Skipped,
                            json!(format!("NOSPACE stays: not every member is under 90% of its quota ({sizes})")),
                        );
                        continue;
                    }
                    Ok(done) => Ok(json!(format!("{done:?}"))),
                    Err(err) => Err(err.into()),
                },
                Step::WaitHealth { .. } => {
                    tokio::time::sleep(self.health_wait).await;
                    Ok(Value::Null)
                }
                Step::Verify => {
                    let found = verify::check(&self.access, id).await;
                    health = Some(found.clone());
                    Ok(json!(found))
                }
                Step::Escalate { diagnosis, reason } => {
                    self.metrics.count_escalation(*diagnosis);
                    tracing::warn!(action_id = id, %diagnosis, %reason, "escalation: a person is needed");
                    Ok(json!({
                        "diagnosis": diagnosis,
                        "reason": reason,
                        "snapshot": snapshot_path,
                        "health": health,
                        "restored": restored,
                    }))
                }
                Step::RestoreIfUnavailable => {
                    match self
                        .maybe_restore(id, view, health.as_ref(), snapshot_path.as_deref(), locked)
                        .await
                    {
                        Ok(Some(report)) => {
                            restored = true;
                            health = Some(report.health.clone());
                            Ok(json!(report))
                        }
                        Ok(None) => continue,
                        Err(err) => Err(err),
                    }
                }
            };
            match result {
                Ok(detail) => {
                    let _ = self.record(id, &name, Phase::Ok, detail);
                }
                Err(err) => {
                    let _ = self.record(id, &name, Phase::Failed, json!(err.to_string()));
                    match step {
                        // Nothing is touched without a verified snapshot to fall back on.
                        Step::Snapshot if repairs => return Outcome { health, restored },
                        Step::Compact | Step::Defrag { .. } | Step::DisarmNospace => {
                            repair_stopped = Some(format!("not run: {name} failed ({err})"));
                        }
                        _ => {}
                    }
                }
            }
        }
        Outcome { health, restored }
    }

    /// Restores only an unavailable cluster, only from this run's verified snapshot, and
    /// only while holding the cross-replica lock. `Ok(None)`: skipped (and recorded why).
    async fn maybe_restore(
        &self,
        id: &str,
        view: &ClusterView,
        health: Option<&Health>,
        snapshot: Option<&Path>,
        locked: bool,
    ) -> Result<Option<restore::RestoreReport>, ActionError> {
        let step = "restore_if_unavailable";
        let skip = |reason: String| {
            let _ = self.record(id, step, Phase::Skipped, json!(reason));
            Ok(None)
        };
        let Some(commands) = &self.restore else {
            return skip("restore mode is none".into());
        };
        match health {
            Some(Health::Unavailable(_)) => {}
            Some(Health::Degraded(why)) => {
                return skip(format!(
                    "not restoring: the cluster has quorum (degraded: {why})"
                ));
            }
            Some(Health::Healthy) => return skip("not restoring: the cluster is healthy".into()),
            None => return skip("not restoring: no health verdict".into()),
        }
        // This run's snapshot, else (quorum lost, so none could be taken) the newest kept
        // one: restore::run verifies it again before use.
        let newest = snapshot::list(&self.snapshots.dir)
            .ok()
            .and_then(|found| found.into_iter().next());
        let Some(snapshot) = snapshot.or(newest.as_deref()) else {
            return skip("not restoring: no verified snapshot".into());
        };
        if !locked {
            return skip("not restoring without the cross-replica lock".into());
        }
        if commands.node_local && view.members.len() != 1 {
            return skip(format!(
                "not restoring: the restore commands reach this node's member only and the \
                 cluster has {} members; restore by hand (docs/operations.md)",
                view.members.len()
            ));
        }
        // A last look: a cluster that can still commit is never restored, nor one where a
        // member that answers reports data corruption (a person must look at that).
        if let Ok(now) = ClusterView::observe(&self.access).await {
            if let Some(quorum) = now.quorum_holds() {
                return skip(format!("not restoring: the cluster has quorum ({quorum})"));
            }
            if now.corrupt {
                return skip("not restoring: a member reports a CORRUPT alarm".into());
            }
        }
        let result = restore::run(
            commands,
            &self.access,
            &view.members,
            snapshot,
            &self.snapshots.dir,
            id,
        )
        .await;
        let ok = matches!(&result, Ok(report) if report.health == Health::Healthy);
        self.metrics.count_restore(ok);
        result.map(Some)
    }
}

fn step_name(step: &Step) -> String {
    match step {
        Step::Snapshot => "snapshot".into(),
        Step::Compact => "compact".into(),
        Step::Defrag { member, .. } => format!("defrag {member}"),
        Step::DisarmNospace => "disarm_nospace".into(),
        Step::WaitHealth { .. } => "wait_health".into(),
        Step::Verify => "verify".into(),
        Step::RestoreIfUnavailable => "restore_if_unavailable".into(),
        Step::Escalate { .. } => "escalate".into(),
    }
}

impl Remediator {
    /// `Ok` when every member answers with a leader and no CORRUPT alarm, as seen now.
    async fn every_member_healthy(&self) -> Result<(), ActionError> {
        let view = ClusterView::observe(&self.access)
            .await
            .map_err(|err| ActionError::NotSafe(format!("not defragmenting: {err}")))?;
        view.safe_to_act()
            .map_err(|why| ActionError::NotSafe(format!("not defragmenting: {why}")))
    }
}
