//! What the tasks saw while the run goes on: successes and latencies per operation,
//! failures per kind, bytes written, watch events. One lock, taken once per request.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::histogram::Histogram;

/// The requests the scenarios make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Get,
    /// A paginated list under the prefix, as a Kubernetes LIST does.
    Range,
    Put,
    PutWithLease,
    Delete,
    LeaseGrant,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Range => "range",
            Op::Put => "put",
            Op::PutWithLease => "put_with_lease",
            Op::Delete => "delete",
            Op::LeaseGrant => "lease_grant",
        }
    }
}

#[derive(Default)]
struct Counts {
    ops: BTreeMap<Op, u64>,
    latency: BTreeMap<Op, Histogram>,
    errors: BTreeMap<&'static str, u64>,
    bytes_written: u64,
    watch_events: u64,
}

#[derive(Default)]
pub struct Stats(Mutex<Counts>);

/// Running totals for the progress line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub ops: u64,
    pub errors: u64,
    pub bytes_written: u64,
}

/// Everything recorded, for the summary.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ops: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub bytes_written: u64,
    pub watch_events: u64,
    /// All successful requests together.
    pub latency: Histogram,
    pub latency_by_op: BTreeMap<&'static str, Histogram>,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counters stay meaningful even if a task panicked while holding the lock.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A successful request that took `latency` and wrote `bytes` (0 for reads).
    pub fn success(&self, op: Op, latency: Duration, bytes: u64) {
        let mut counts = self.lock();
        *counts.ops.entry(op).or_default() += 1;
        counts
            .latency
            .entry(op)
            .or_default()
            .record_duration(latency);
        counts.bytes_written += bytes;
    }

    /// A failed request, by kind (see `etcd::classify`). Failures have no latency: a
    /// NOSPACE refusal takes microseconds and would flatter the percentiles.
    pub fn failure(&self, kind: &'static str) {
        *self.lock().errors.entry(kind).or_default() += 1;
    }

    pub fn watch_events(&self, events: u64) {
        self.lock().watch_events += events;
    }

    pub fn totals(&self) -> Totals {
        let counts = self.lock();
        Totals {
            ops: counts.ops.values().sum(),
            errors: counts.errors.values().sum(),
            bytes_written: counts.bytes_written,
        }
    }

    pub fn recorded(&self) -> Recorded {
        let counts = self.lock();
        let mut latency = Histogram::default();
        for histogram in counts.latency.values() {
            latency.merge(histogram);
        }
        Recorded {
            ops: counts.ops.iter().map(|(op, n)| (op.as_str(), *n)).collect(),
            errors: counts.errors.clone(),
            bytes_written: counts.bytes_written,
            watch_events: counts.watch_events,
            latency,
            latency_by_op: counts
                .latency
                .iter()
                .map(|(op, h)| (op.as_str(), h.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_successes_failures_and_bytes_by_kind() {
        let stats = Stats::default();
        stats.success(Op::Put, Duration::from_millis(2), 1000);
        stats.success(Op::Put, Duration::from_millis(4), 500);
        stats.success(Op::Get, Duration::from_micros(300), 0);
        stats.failure("nospace");
        stats.failure("nospace");
        stats.watch_events(3);
        let totals = stats.totals();
        assert_eq!(
            (totals.ops, totals.errors, totals.bytes_written),
            (3, 2, 1500)
        );
        let recorded = stats.recorded();
        assert_eq!(recorded.ops["put"], 2);
        assert_eq!(recorded.errors["nospace"], 2);
        assert_eq!(recorded.watch_events, 3);
        assert_eq!(recorded.latency.count(), 3);
        assert_eq!(recorded.latency.max(), 4000);
        assert_eq!(recorded.latency_by_op["get"].max(), 300);
    }
}
