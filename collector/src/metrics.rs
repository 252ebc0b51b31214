//! The collector's own metrics, so a broken scrape or push shows up in Prometheus.

use std::sync::atomic::AtomicU64;

use dr_common::reload::ReloadCounter;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::CollectError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub instance: String,
    pub result: &'static str,
    /// Why an attempt failed ([`CollectError::reason`]); empty on success, which
    /// Prometheus reads as no label at all.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

#[derive(Clone, Default)]
pub struct CollectorMetrics {
    pub scrapes: Family<ResultLabels, Counter>,
    pub pushes: Family<ResultLabels, Counter>,
    pub last_success: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    pub families_pushed: Family<InstanceLabels, Gauge>,
    /// 1 when the member's last scrape succeeded, 0 when it failed.
    pub target_up: Family<InstanceLabels, Gauge>,
    /// The TLS files read again after a change (`file`, `result` ok or failed).
    pub reloads: ReloadCounter,
}

impl CollectorMetrics {
    /// Registers every metric (names as the design contract gives them) and returns the
    /// handles the collection loop updates.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CollectorMetrics::default();
        registry.register(
            "etcd_dr_collector_scrapes",
            "Scrape attempts of etcd metrics endpoints, by result and, for errors, reason",
            metrics.scrapes.clone(),
        );
        registry.register(
            "etcd_dr_collector_pushes",
            "Push attempts to the Pushgateway, by result and, for errors, reason",
            metrics.pushes.clone(),
        );
        registry.register(
            "etcd_dr_collector_last_success_timestamp_seconds",
            "Unix time of the last scrape that was pushed successfully",
            metrics.last_success.clone(),
        );
        registry.register(
            "etcd_dr_collector_families_pushed",
            "Metric families in the last successful push",
            metrics.families_pushed.clone(),
        );
        registry.register(
            "etcd_dr_collector_target_up",
            "Whether the last scrape of each etcd member succeeded (also pushed in its group)",
            metrics.target_up.clone(),
        );
        registry.register(
            "etcd_dr_collector_reloads",
            "TLS files read again after a change, by file set and result",
            metrics.reloads.clone(),
        );
        metrics
    }

    /// Every result and reason of `instance` at 0 from the start: a series that first
    /// appears at 1 hides that first failure from `increase()`.
    pub fn start_at_zero(&self, instance: &str) {
        let _ = self.scrapes.get_or_create(&labels(instance, ""));
        let _ = self.pushes.get_or_create(&labels(instance, ""));
        for reason in CollectError::SCRAPE_REASONS {
            let _ = self.scrapes.get_or_create(&labels(instance, reason));
        }
        for reason in CollectError::PUSH_REASONS {
            let _ = self.pushes.get_or_create(&labels(instance, reason));
        }
    }

    pub fn set_target_up(&self, instance: &str, up: bool) {
        let labels = InstanceLabels {
            instance: instance.to_string(),
        };
        self.target_up.get_or_create(&labels).set(i64::from(up));
    }

    pub fn count_scrape<T>(&self, instance: &str, outcome: &Result<T, CollectError>) {
        self.scrapes
            .get_or_create(&outcome_labels(instance, outcome))
            .inc();
    }

    pub fn count_push<T>(&self, instance: &str, outcome: &Result<T, CollectError>) {
        self.pushes
            .get_or_create(&outcome_labels(instance, outcome))
            .inc();
    }
}

/// `result="success"` with no reason when `reason` is empty, else `result="error"`.
fn labels(instance: &str, reason: &'static str) -> ResultLabels {
    ResultLabels {
        instance: instance.to_string(),
        result: if reason.is_empty() {
            "success"
        } else {
            "error"
        },
        reason,
    }
}

fn outcome_labels<T>(instance: &str, outcome: &Result<T, CollectError>) -> ResultLabels {
    labels(
        instance,
        outcome.as_ref().err().map_or("", CollectError::reason),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_and_reason_of_a_target_is_there_from_the_start() {
        let mut registry = Registry::default();
        let metrics = CollectorMetrics::register(&mut registry);
        metrics.start_at_zero("etcd-0");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series = |family: &str, result: &str, reason: &str| {
            format!("{family}{{instance=\"etcd-0\",result=\"{result}\",reason=\"{reason}\"}} 0")
        };
        let mut want = vec![
            series("etcd_dr_collector_scrapes_total", "success", ""),
            series("etcd_dr_collector_pushes_total", "success", ""),
        ];
        for reason in CollectError::SCRAPE_REASONS {
            want.push(series("etcd_dr_collector_scrapes_total", "error", reason));
        }
        for reason in CollectError::PUSH_REASONS {
            want.push(series("etcd_dr_collector_pushes_total", "error", reason));
        }
        for sample in want {
            assert!(text.lines().any(|l| l == sample), "no {sample} in {text}");
        }
    }

    #[test]
    fn a_failure_is_counted_under_its_reason() {
        let mut registry = Registry::default();
        let metrics = CollectorMetrics::register(&mut registry);
        let timeout: Result<(), _> = Err(CollectError::EtcdTimeout {
            url: "http://etcd".into(),
            timeout: std::time::Duration::from_secs(1),
        });
        metrics.count_scrape("etcd-0", &timeout);
        metrics.count_scrape("etcd-0", &timeout);
        metrics.count_scrape("etcd-0", &Ok(()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for sample in [
            "etcd_dr_collector_scrapes_total{instance=\"etcd-0\",result=\"error\",reason=\"timeout\"} 2",
            "etcd_dr_collector_scrapes_total{instance=\"etcd-0\",result=\"success\",reason=\"\"} 1",
        ] {
            assert!(text.lines().any(|l| l == sample), "no {sample} in {text}");
        }
    }
}
