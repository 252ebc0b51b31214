//! The detector's own metrics: each instance's anomaly score, the threshold, the time of
//! a forward pass, and the background refreshes by result.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The detector's own metrics.
#[derive(Clone)]
pub struct Metrics {
    score: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The instances that have a score gauge, so a refresh removes just the ones that lost
    /// their score (clearing all would leave a scrape between clear and set with none).
    scored: Arc<Mutex<BTreeSet<String>>>,
    threshold: Gauge<f64, AtomicU64>,
    /// Registered only for a model with a fast alert: without one, its rule has no series
    /// and never fires.
    fast_threshold: Gauge<f64, AtomicU64>,
    /// The fast alert's score per instance, kept for the same instances as `score`.
    fast_score: Family<Labels, Gauge<f64, AtomicU64>>,
    fast_scored: Arc<Mutex<BTreeSet<String>>>,
    /// 1 once an instance's own baseline has enough history to alert on, 0 while it warms
    /// up; kept for the same instances as `score` plus the warming-up ones.
    baseline_ready: Family<Labels, Gauge>,
    with_baseline: Arc<Mutex<BTreeSet<String>>>,
    inference: Histogram,
    refreshes: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            score: Family::default(),
            scored: Arc::default(),
            threshold: Gauge::default(),
            fast_threshold: Gauge::default(),
            fast_score: Family::default(),
            fast_scored: Arc::default(),
            baseline_ready: Family::default(),
            with_baseline: Arc::default(),
            // 5 us .. ~20 ms: a fused forward is tens of microseconds.
            inference: Histogram::new(exponential_buckets(5e-6, 2.0, 12)),
            refreshes: Family::default(),
        };
        registry.register(
            "etcd_dr_anomaly_score",
            "Reconstruction error of the latest window per etcd instance",
            metrics.score.clone(),
        );
        registry.register(
            "etcd_dr_anomaly_threshold",
            "Score above which a window is anomalous",
            metrics.threshold.clone(),
        );
        registry.register(
            "etcd_dr_detector_baseline_ready",
            "1 when the instance's own baseline has enough history to alert, 0 while it warms up (format 2 models)",
            metrics.baseline_ready.clone(),
        );
        registry.register(
            "etcd_dr_detector_inference_duration_seconds",
            "Time of one forward pass and scoring of a window",
            metrics.inference.clone(),
        );
        registry.register(
            "etcd_dr_detector_refreshes",
            "Background score refreshes by result",
            metrics.refreshes.clone(),
        );
        metrics
    }

    /// The model's threshold, set once: a served model does not change.
    pub fn set_threshold(&self, threshold: f64) {
        self.threshold.set(threshold);
    }

    /// The fast alert's score and threshold (a model with one), registered once.
    pub fn register_fast_alert(&self, registry: &mut Registry, threshold: f64) {
        registry.register(
            "etcd_dr_anomaly_fast_score",
            "The fast alert's score of the latest window per etcd instance: the largest calibrated error of the features it watches",
            self.fast_score.clone(),
        );
        registry.register(
            "etcd_dr_anomaly_fast_threshold",
            "Fast score above which a short run of windows alerts (the model's fast alert)",
            self.fast_threshold.clone(),
        );
        self.fast_threshold.set(threshold);
    }

    /// Each alerting instance's fast score; the others lose their gauge, as in
    /// [`Metrics::set_scores`].
    pub fn set_fast_scores(&self, scores: &[(String, f64)]) {
        replace_family(&self.fast_score, &self.fast_scored, scores);
    }

    /// No instance has a score now (Prometheus did not answer): neither alert may fire
    /// on the last values.
    pub fn clear_scores(&self) {
        self.set_scores(&[]);
        self.set_fast_scores(&[]);
    }

    /// One forward pass and scoring took `seconds`.
    pub fn observe_inference(&self, seconds: f64) {
        self.inference.observe(seconds);
    }

    /// One background refresh ended, `success` or `failure`.
    pub fn count_refresh(&self, result: &str) {
        self.refreshes
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    fn score_labels(instance: &str) -> Labels {
        vec![("instance".to_string(), instance.to_string())]
    }

    /// Sets the gauge of every scored instance and removes the gauges of instances that
    /// have none now (vanished, or unscorable), so an alert never fires on a stale value.
    pub fn set_scores(&self, scores: &[(String, f64)]) {
        replace_family(&self.score, &self.scored, scores);
    }

    /// Each instance's baseline readiness (instances with a window scored); the others
    /// lose their gauge.
    pub fn set_baseline_ready(&self, ready: &[(String, bool)]) {
        let values: Vec<(String, i64)> = ready
            .iter()
            .map(|(i, r)| (i.clone(), i64::from(*r)))
            .collect();
        replace_family(&self.baseline_ready, &self.with_baseline, &values);
    }
}

/// Sets one gauge per instance of `values` in `family`, and removes the gauges of the
/// instances in `kept` that are not there any more; `kept` becomes this round's set.
fn replace_family<N, A>(
    family: &Family<Labels, Gauge<N, A>>,
    kept: &Mutex<BTreeSet<String>>,
    values: &[(String, N)],
) where
    N: Copy,
    A: prometheus_client::metrics::gauge::Atomic<N> + Default,
{
    let mut kept = kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let now: BTreeSet<String> = values.iter().map(|(i, _)| i.clone()).collect();
    for gone in kept.difference(&now) {
        family.remove(&Metrics::score_labels(gone));
    }
    for (instance, value) in values {
        family
            .get_or_create(&Metrics::score_labels(instance))
            .set(*value);
    }
    *kept = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_keeps_the_gauges_of_instances_still_scored_and_drops_the_rest() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let encoded = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        metrics.set_scores(&[("a".into(), 0.5), ("b".into(), 0.7)]);
        // A handle on a's series, as a scrape in progress would hold it: a round that
        // re-creates the series (clear, then set) would leave it behind.
        let a = metrics
            .score
            .get_or_create(&Metrics::score_labels("a"))
            .clone();
        metrics.set_scores(&[("a".into(), 0.9)]);
        assert_eq!(a.get(), 0.9, "a's series was replaced, not updated");
        let text = encoded();
        assert!(
            text.contains("etcd_dr_anomaly_score{instance=\"a\"} 0.9"),
            "{text}"
        );
        assert!(!text.contains("instance=\"b\""), "{text}");
        metrics.set_scores(&[]);
        assert!(!encoded().contains("instance=\"a\""));
    }

    #[test]
    fn a_failed_refresh_drops_both_alerts_scores_and_keeps_the_thresholds() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_threshold(7.9);
        metrics.register_fast_alert(&mut registry, 8.5);
        metrics.set_scores(&[("a".into(), 12.0)]);
        metrics.set_fast_scores(&[("a".into(), 11.0)]);
        let encoded = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let text = encoded();
        assert!(
            text.contains("etcd_dr_anomaly_fast_score{instance=\"a\"} 11.0"),
            "{text}"
        );
        assert!(
            text.contains("etcd_dr_anomaly_fast_threshold 8.5"),
            "{text}"
        );
        metrics.clear_scores();
        let text = encoded();
        assert!(!text.contains("instance=\"a\""), "{text}");
        assert!(
            text.contains("etcd_dr_anomaly_fast_threshold 8.5"),
            "{text}"
        );
        assert!(text.contains("etcd_dr_anomaly_threshold 7.9"), "{text}");
    }
}
