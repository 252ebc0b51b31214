//! The report a run ends with: human text, or one line of JSON for scripts (`--json`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::histogram::Histogram;
use crate::size::human;
use crate::stats::Recorded;
use crate::stop::StopReason;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub key_prefix: String,
    pub seed: u64,
    pub target_rate: f64,
    pub elapsed_seconds: f64,
    pub stop_reason: StopReason,
    /// etcd refused a write for lack of space at least once.
    pub nospace: bool,
    pub operations_total: u64,
    pub operations: BTreeMap<&'static str, u64>,
    /// Successful operations per second.
    pub achieved_rate: f64,
    pub errors_total: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Keys and values of successful writes.
    pub bytes_written: u64,
    /// Of successful operations.
    pub latency_ms: Percentiles,
    pub latency_ms_by_operation: BTreeMap<&'static str, Percentiles>,
    pub watch_events: u64,
    /// As reported by the member that answered, before and after the run.
    pub revision: Span,
    pub db_size_bytes: Span,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(histogram: &Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.count(),
            p50: ms(histogram.quantile(0.5)),
            p90: ms(histogram.quantile(0.9)),
            p99: ms(histogram.quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// A value at the start and at the end of the run; `None` where etcd did not say.
#[derive(Debug, Default, Serialize)]
pub struct Span {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// What the run was, besides what it recorded.
pub struct Run {
    pub scenario: &'static str,
    pub key_prefix: String,
    pub seed: u64,
    pub target_rate: f64,
    pub elapsed: Duration,
    pub stop_reason: StopReason,
    pub revision: Span,
    pub db_size_bytes: Span,
}

impl Summary {
    pub fn new(run: Run, recorded: Recorded) -> Self {
        let operations_total = recorded.ops.values().sum();
        let seconds = run.elapsed.as_secs_f64();
        Self {
            scenario: run.scenario,
            key_prefix: run.key_prefix,
            seed: run.seed,
            target_rate: run.target_rate,
            elapsed_seconds: seconds,
            stop_reason: run.stop_reason,
            nospace: run.stop_reason == StopReason::Nospace
                || recorded.errors.contains_key("nospace"),
            operations_total,
            achieved_rate: if seconds > 0.0 {
                operations_total as f64 / seconds
            } else {
                0.0
            },
            operations: recorded.ops,
            errors_total: recorded.errors.values().sum(),
            errors: recorded.errors,
            bytes_written: recorded.bytes_written,
            latency_ms: Percentiles::of(&recorded.latency),
            latency_ms_by_operation: recorded
                .latency_by_op
                .iter()
                .map(|(op, h)| (*op, Percentiles::of(h)))
                .collect(),
            watch_events: recorded.watch_events,
            revision: run.revision,
            db_size_bytes: run.db_size_bytes,
        }
    }

    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|err| format!("writing the summary as JSON: {err}"))
    }
}

/// `: put 3, get 5`, or nothing when empty.
fn counts(map: &BTreeMap<&'static str, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<_> = map.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    format!(": {}", parts.join(", "))
}

fn span(span: &Span, show: impl Fn(i64) -> String) -> String {
    let side = |v: Option<i64>| v.map_or_else(|| "?".to_owned(), &show);
    format!("{} -> {}", side(span.start), side(span.end))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dr-loadgen {}: stopped by {} after {:.2}s (seed {}, keys under {})",
            self.scenario,
            self.stop_reason.as_str(),
            self.elapsed_seconds,
            self.seed,
            self.key_prefix
        )?;
        writeln!(
            f,
            "  operations  {} ({:.1}/s of {} wanted){}",
            self.operations_total,
            self.achieved_rate,
            self.target_rate,
            counts(&self.operations)
        )?;
        writeln!(
            f,
            "  errors      {}{}",
            self.errors_total,
            counts(&self.errors)
        )?;
        writeln!(
            f,
            "  written     {} ({} bytes)",
            human(self.bytes_written),
            self.bytes_written
        )?;
        let l = &self.latency_ms;
        if l.count == 0 {
            writeln!(f, "  latency     none: no request succeeded")?;
        } else {
            writeln!(
                f,
                "  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                l.p50, l.p90, l.p99, l.max
            )?;
        }
        if self.watch_events > 0 {
            writeln!(f, "  watch       {} events", self.watch_events)?;
        }
        writeln!(
            f,
            "  etcd        revision {}, db size {}",
            span(&self.revision, |r| r.to_string()),
            span(&self.db_size_bytes, |b| human(
                u64::try_from(b).unwrap_or(0)
            ))
        )?;
        if self.nospace {
            writeln!(
                f,
                "  NOSPACE     etcd answered \"database space exceeded\": the db reached its quota \
                 and the cluster is read-only until space is reclaimed and the alarm disarmed"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Op, Stats};

    fn summary(stop_reason: StopReason) -> Summary {
        let stats = Stats::default();
        stats.success(Op::Put, Duration::from_millis(3), 2048);
        stats.success(Op::Get, Duration::from_millis(1), 0);
        stats.failure("nospace");
        Summary::new(
            Run {
                scenario: "bigkey",
                key_prefix: "/dr-loadgen/bigkey/".into(),
                seed: 9,
                target_rate: 20.0,
                elapsed: Duration::from_secs(2),
                stop_reason,
                revision: Span {
                    start: Some(1),
                    end: Some(2),
                },
                db_size_bytes: Span::default(),
            },
            stats.recorded(),
        )
    }

    #[test]
    fn json_carries_what_scripts_read() {
        let json: serde_json::Value =
            serde_json::from_str(&summary(StopReason::Nospace).to_json().unwrap()).unwrap();
        assert_eq!(json["scenario"], "bigkey");
        assert_eq!(json["stop_reason"], "nospace");
        assert_eq!(json["nospace"], true);
        assert_eq!(json["operations_total"], 2);
        assert_eq!(json["operations"]["put"], 1);
        assert_eq!(json["errors"]["nospace"], 1);
        assert_eq!(json["bytes_written"], 2048);
        assert_eq!(json["achieved_rate"], 1.0);
        assert_eq!(json["latency_ms"]["max"], 3.0);
        assert_eq!(json["latency_ms_by_operation"]["get"]["p50"], 1.0);
        assert_eq!(json["revision"]["end"], 2);
        assert!(json["db_size_bytes"]["start"].is_null());
    }

    #[test]
    fn text_says_why_it_stopped_and_flags_nospace() {
        let text = summary(StopReason::Nospace).to_string();
        assert!(text.contains("stopped by nospace after 2.00s"), "{text}");
        assert!(text.contains("errors      1: nospace 1"), "{text}");
        assert!(text.contains("NOSPACE"), "{text}");
        assert!(text.contains("revision 1 -> 2, db size ? -> ?"), "{text}");
    }
}
