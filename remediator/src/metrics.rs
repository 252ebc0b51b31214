//! The remediator's own metrics, as DESIGN.md names them.

use std::sync::atomic::AtomicU64;

use dr_common::reload::ReloadCounter;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::diagnosis::Diagnosis;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiagnosisLabel {
    pub diagnosis: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// The kinds of run an interrupted one can be.
pub const INTERRUPTIBLE: [&str; 3] = ["remediation", "scheduled_snapshot", "retry"];

/// How a retry of a skipped alert ends.
pub const RETRY_OUTCOMES: [&str; 4] = ["started", "not_firing", "gave_up", "stopped"];

#[derive(Clone)]
pub struct Metrics {
    /// Accepted runs by diagnosis.
    pub diagnoses: Family<DiagnosisLabel, Counter>,
    /// Runs that ended saying a person is needed, by diagnosis.
    pub escalations: Family<DiagnosisLabel, Counter>,
    pub snapshot_success: Counter,
    pub snapshot_failure: Counter,
    pub defrag: Family<ResultLabel, Counter>,
    pub restore: Family<ResultLabel, Counter>,
    pub remediation_duration: Histogram,
    pub last_snapshot_timestamp: Gauge<f64, AtomicU64>,
    pub webhooks: Family<OutcomeLabel, Counter>,
    /// The token and certificate files read again (`file`, `result` ok or failed).
    pub reloads: ReloadCounter,
    /// Runs a killed predecessor left unfinished, found at start-up, by kind.
    pub interrupted_runs: Family<KindLabel, Counter>,
    /// Retries of alerts skipped as busy, by how they ended.
    pub retries: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            diagnoses: Family::default(),
            escalations: Family::default(),
            snapshot_success: Counter::default(),
            snapshot_failure: Counter::default(),
            defrag: Family::default(),
            restore: Family::default(),
            // Seconds to tens of minutes: a defrag of a large db, then the health wait.
            remediation_duration: Histogram::new([
                5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
            ]),
            last_snapshot_timestamp: Gauge::default(),
            webhooks: Family::default(),
            reloads: ReloadCounter::default(),
            interrupted_runs: Family::default(),
            retries: Family::default(),
        };
        registry.register(
            "etcd_dr_interrupted_runs",
            "Runs a killed predecessor left unfinished, found and recorded at start-up, by kind",
            metrics.interrupted_runs.clone(),
        );
        registry.register(
            "etcd_dr_retries",
            "Retries of alerts skipped because another run held the lock, by outcome",
            metrics.retries.clone(),
        );
        // At 0 from the start, so that the predecessor's series exists: a restart that
        // finds an interrupted run then reads as an increase, not a new series at 1.
        for kind in INTERRUPTIBLE {
            let _ = metrics.interrupted_runs.get_or_create(&KindLabel {
                kind: kind.to_owned(),
            });
        }
        for outcome in RETRY_OUTCOMES {
            let _ = metrics.retries.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        registry.register(
            "etcd_dr_reloads",
            "Token and certificate files read again after a change, by file set and result",
            metrics.reloads.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_success",
            "Snapshots written and verified",
            metrics.snapshot_success.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_failure",
            "Snapshots that failed or did not verify",
            metrics.snapshot_failure.clone(),
        );
        registry.register(
            "etcd_dr_defrag",
            "Member defragmentations by result",
            metrics.defrag.clone(),
        );
        registry.register(
            "etcd_dr_restore",
            "Restores by result",
            metrics.restore.clone(),
        );
        registry.register(
            "etcd_dr_remediation_duration_seconds",
            "Wall time of one remediation, decision to verdict",
            metrics.remediation_duration.clone(),
        );
        registry.register(
            "etcd_dr_last_snapshot_timestamp_seconds",
            "Unix time of the last verified snapshot",
            metrics.last_snapshot_timestamp.clone(),
        );
        registry.register(
            "etcd_dr_webhooks",
            "Webhook requests by outcome",
            metrics.webhooks.clone(),
        );
        registry.register(
            "etcd_dr_diagnoses",
            "Remediations started, by diagnosis",
            metrics.diagnoses.clone(),
        );
        registry.register(
            "etcd_dr_escalations",
            "Remediations that ended saying a person is needed, by diagnosis",
            metrics.escalations.clone(),
        );
        for diagnosis in Diagnosis::ALL {
            let _ = metrics.diagnoses.get_or_create(&label(diagnosis));
            let _ = metrics.escalations.get_or_create(&label(diagnosis));
        }
        // Both results exist from the start, at 0: a series that first appears at 1 hides
        // that first defrag or restore from `increase()` (the dashboard's query).
        for ok in [true, false] {
            let _ = metrics.defrag.get_or_create(&result(ok));
            let _ = metrics.restore.get_or_create(&result(ok));
        }
        metrics
    }

    pub fn count_diagnosis(&self, diagnosis: Diagnosis) {
        self.diagnoses.get_or_create(&label(diagnosis)).inc();
    }

    pub fn count_escalation(&self, diagnosis: Diagnosis) {
        self.escalations.get_or_create(&label(diagnosis)).inc();
    }

    pub fn count_defrag(&self, ok: bool) {
        self.defrag.get_or_create(&result(ok)).inc();
    }

    pub fn count_restore(&self, ok: bool) {
        self.restore.get_or_create(&result(ok)).inc();
    }

    pub fn count_webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn count_interrupted(&self, kind: &str) {
        self.interrupted_runs
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn count_retry(&self, outcome: &str) {
        self.retries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn snapshot_done(&self, ok: bool) {
        if ok {
            self.snapshot_success.inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.last_snapshot_timestamp.set(now);
        } else {
            self.snapshot_failure.inc();
        }
    }
}

fn label(diagnosis: Diagnosis) -> DiagnosisLabel {
    DiagnosisLabel {
        diagnosis: diagnosis.as_str().to_owned(),
    }
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel {
        result: if ok { "success" } else { "failure" }.to_owned(),
    }
}
