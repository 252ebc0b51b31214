//! Start-up recovery: what a killed predecessor left is cleaned or recorded before this
//! process accepts a webhook. Runs the log shows begun and never ended get an
//! `interrupted` event (and a count); partial snapshot files are removed; leases of this
//! replica's identity (its lock, or its place in the lock's queue) are revoked, so the next
//! alert is not skipped for the dead lease's TTL.
//!
//! The snapshot dir, with its audit log and identity file, belongs to one replica: the
//! run it shows unfinished is this replica's, and no other process of it runs now.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::actions::snapshot;
use crate::audit::{self, INTERRUPTED, Phase, Unfinished};
use crate::lock::{self, OwnLease};
use crate::remediation::Remediator;

pub const KIND: &str = "recovery";

/// What start-up recovery found and did.
#[derive(Debug, Default, Serialize)]
pub struct Recovery {
    /// The recovery's own action id in the audit log, when it found anything.
    pub action_id: Option<String>,
    pub interrupted: Vec<Unfinished>,
    pub removed_partials: Vec<PathBuf>,
    pub released_leases: Vec<OwnLease>,
    /// What could not be done (start-up goes on: each is also in the log and the audit).
    pub failures: Vec<String>,
}

impl Recovery {
    pub fn found_anything(&self) -> bool {
        !(self.interrupted.is_empty()
            && self.removed_partials.is_empty()
            && self.released_leases.is_empty()
            && self.failures.is_empty())
    }
}

/// Recovers from a predecessor's death; never fails start-up (a lock that cannot be
/// released now still ends with its lease's TTL).
pub async fn recover(r: &Remediator, identity: &str) -> Recovery {
    let id = audit::new_action_id();
    let mut found = Recovery::default();
    let record = |step: &str, phase: Phase, detail: serde_json::Value| {
        if let Err(err) = r.audit.record(&id, KIND, step, phase, detail, r.dry_run) {
            tracing::warn!(error = %err, step, "cannot record the start-up recovery");
        }
    };

    match r.audit.unfinished() {
        Ok(runs) => {
            for run in runs {
                // Under the run's own id, so `/actions` shows where it ended.
                let detail = json!({
                    "reason": "the remediator stopped before this run ended (found at start-up)",
                    "last_step": run.last_step,
                    "last_phase": run.last_phase,
                    "started": run.started,
                    "last_event": run.last_ts,
                    "found_by": id,
                });
                if let Err(err) = r.audit.record(
                    &run.action_id,
                    &run.kind,
                    INTERRUPTED,
                    Phase::Failed,
                    detail,
                    r.dry_run,
                ) {
                    found.failures.push(format!(
                        "recording run {} as interrupted: {err}",
                        run.action_id
                    ));
                    continue;
                }
                tracing::warn!(action_id = %run.action_id, kind = %run.kind, last_step = %run.last_step, "interrupted run found");
                r.metrics.count_interrupted(&run.kind);
                found.interrupted.push(run);
            }
        }
        Err(err) => found
            .failures
            .push(format!("reading the audit log for interrupted runs: {err}")),
    }

    match snapshot::partials(&r.snapshots.dir) {
        Ok(partials) => {
            for path in partials {
                let size = std::fs::metadata(&path).map(|m| m.len()).ok();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        record(
                            "partial_snapshot",
                            Phase::Ok,
                            json!({ "removed": path, "size_bytes": size }),
                        );
                        found.removed_partials.push(path);
                    }
                    Err(err) => {
                        let why = format!("removing {}: {err}", path.display());
                        record("partial_snapshot", Phase::Failed, json!(why));
                        found.failures.push(why);
                    }
                }
            }
        }
        Err(err) => found
            .failures
            .push(format!("looking for partial snapshots: {err}")),
    }

    if r.dry_run {
        // Dry-run writes nothing to etcd; a predecessor's lock ends with its TTL.
    } else {
        match lock::release_own(&r.access, identity).await {
            Ok(leases) if leases.is_empty() => {}
            Ok(leases) => {
                record(
                    "own_lock",
                    Phase::Ok,
                    json!({ "identity": identity, "revoked": leases }),
                );
                found.released_leases = leases;
            }
            Err(err) => {
                let why = format!(
                    "cannot release locks of identity {identity} (they end with their lease): {err}"
                );
                record("own_lock", Phase::Failed, json!(why));
                found.failures.push(why);
            }
        }
    }

    if found.found_anything() {
        record(
            "summary",
            Phase::Info,
            json!({
                "interrupted": found.interrupted.iter().map(|u| &u.action_id).collect::<Vec<_>>(),
                "removed_partials": found.removed_partials.len(),
                "released_leases": found.released_leases.len(),
                "failures": found.failures,
            }),
        );
        found.action_id = Some(id);
    }
    found
}
