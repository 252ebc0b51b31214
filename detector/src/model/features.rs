//! The model's inputs as data: each feature is a name and the PromQL that computes it per
//! etcd instance. The queries travel in `model.json` with the step they were written for,
//! so serving runs exactly the queries the training data came from.

use serde::{Deserialize, Serialize};

/// One named input series; `query` must return one series per `instance` label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub query: String,
}

impl FeatureSpec {
    /// A latency quantile (`histogram_quantile`). Prometheus answers NaN for it, or nothing,
    /// when the member served no requests in the rate window (0/0 observations); no
    /// requests means no latency, so serving and `export` read that as 0. A quantile of
    /// +Inf (beyond the largest bucket) is still refused: it is not a number to learn from.
    pub fn is_latency_quantile(&self) -> bool {
        self.query.contains("histogram_quantile")
    }

    /// What one step of a Prometheus answer (`None`: no point) is worth to this feature:
    /// a finite value as is; NaN or no point is 0 for a latency quantile and a gap (`None`)
    /// otherwise; an infinity is never a value. Serving (`prometheus::assemble`) and
    /// `export` both read answers through this, so live windows and training data agree.
    pub fn reading(&self, raw: Option<f64>) -> Option<f64> {
        match raw {
            Some(v) if v.is_finite() => Some(v),
            Some(v) if v.is_infinite() => None,
            _ => self.is_latency_quantile().then_some(0.0),
        }
    }
}

/// The range of the default queries' `rate`/`increase`/`deriv`: four steps, at least 4 s.
fn range_seconds(step_seconds: f64) -> f64 {
    (4.0 * step_seconds).max(4.0).round()
}

/// Twelve steps (at least 12 s): the window of the features whose four-step value is
/// noisy over a quiet member's few requests (`write_fraction`, `db_growth_per_request`).
fn long_range_seconds(step_seconds: f64) -> f64 {
    3.0 * range_seconds(step_seconds)
}

/// The name of the column (and model.json entry) that masks steps where etcd was
/// defragmenting.
pub const DEFRAG_MASK: &str = "defrag_inflight";

/// Requests per second below which `db_growth_per_request` divides by this instead.
pub const GROWTH_REQUEST_FLOOR: u32 = 30;

/// The default etcd feature set for a given step. Range windows are four steps (at
/// least 4 s), so `rate` has several samples at the scrape intervals that suit that step.
pub fn default_features(step_seconds: f64) -> Vec<FeatureSpec> {
    let range = format!("{}s", range_seconds(step_seconds) as u64);
    let p99 = |family: &str| {
        format!("histogram_quantile(0.99, sum by (instance, le) (rate({family}_bucket[{range}])))")
    };
    let specs = [
        (
            "db_size_over_quota",
            "max by (instance) (etcd_mvcc_db_total_size_in_bytes / etcd_server_quota_backend_bytes)"
                .to_string(),
        ),
        (
            "fragmentation",
            "max by (instance) (1 - etcd_mvcc_db_total_size_in_use_in_bytes / etcd_mvcc_db_total_size_in_bytes)"
                .to_string(),
        ),
        (
            // As a fraction of the quota per second, so clusters with different quotas
            // share one scale.
            "db_growth_rate",
            format!(
                "max by (instance) (deriv(etcd_mvcc_db_total_size_in_bytes[{range}]) / etcd_server_quota_backend_bytes)"
            ),
        ),
        (
            "leader_changes",
            format!("sum by (instance) (increase(etcd_server_leader_changes_seen_total[{range}]))"),
        ),
        (
            "failed_proposals",
            format!("sum by (instance) (rate(etcd_server_proposals_failed_total[{range}]))"),
        ),
        ("wal_fsync_p99", p99("etcd_disk_wal_fsync_duration_seconds")),
        (
            "backend_commit_p99",
            p99("etcd_disk_backend_commit_duration_seconds"),
        ),
        (
            "grpc_request_rate",
            format!("sum by (instance) (rate(grpc_server_handled_total{{grpc_type=\"unary\"}}[{range}]))"),
        ),
        (
            "slow_applies",
            format!("sum by (instance) (rate(etcd_server_slow_apply_total[{range}]))"),
        ),
        (
            // The share of a member's unary requests that write. A churn (a client
            // rewriting a few keys hundreds of times a second) lifts it at any load,
            // while a cluster ten times busier with the same mix leaves it where it
            // was. Both halves are the member's own requests, so clients moving between
            // members do not move it. A member that served no writes yet reads 0, and
            // fewer than one request a second counts as one (an idle member is not a
            // storm of writes). Its window is three times the others': a quiet member
            // serves a few requests a second, and over four steps the share of 20-odd
            // requests moves by tenths (a churn's hundreds a second still move it in
            // a step or two).
            "write_fraction",
            {
                let range = format!("{}s", long_range_seconds(step_seconds) as u64);
                let unary = "grpc_server_handled_total{grpc_type=\"unary\"";
                let all = format!("sum by (instance) (rate({unary}}}[{range}]))");
                format!(
                    "(sum by (instance) (rate({unary},grpc_method=~\"Put|DeleteRange|Txn\"}}[{range}])) or 0 * {all}) / clamp_min({all}, 1)"
                )
            },
        ),
        (
            // Bytes the db grows by per unary request the member serves: the size of what
            // clients write, which a cluster keeps whatever its load and quota (6-8 KB in
            // every recording, 0.3x to 10x, 64 MiB to 2 GiB), while a storm writing big
            // values lifts it tenfold even when, against a 2 GiB quota, its growth is a
            // fraction of a percent a step. Twelve steps, so a compaction's one-off rewrite
            // is averaged over a dozen steps of requests; and fewer than 30 requests a
            // second count as 30, or a quiet member's compaction reads as a storm.
            "db_growth_per_request",
            {
                let range = format!("{}s", long_range_seconds(step_seconds) as u64);
                format!(
                    "max by (instance) (deriv(etcd_mvcc_db_total_size_in_bytes[{range}])) / clamp_min(sum by (instance) (rate(grpc_server_handled_total{{grpc_type=\"unary\"}}[{range}])), {GROWTH_REQUEST_FLOOR})"
                )
            },
        ),
    ];
    specs
        .into_iter()
        .map(|(name, query)| FeatureSpec {
            name: name.to_string(),
            query,
        })
        .collect()
}

/// The defrag mask: a step is masked when a defrag ran at any point in the last six steps.
/// Masked steps are the remediator's own doing (a blocked member, a shrinking db), so they
/// are neither learned from nor counted in the score. Six steps, because the features' rate
/// windows look back four steps (plus scrape and push lag) and still see the defrag after
/// it ended. `defrag_inflight` is sampled and misses a defrag shorter than a scrape, so the
/// count of finished defrags is asked too.
pub fn default_mask(step_seconds: f64) -> FeatureSpec {
    let range = format!("{}s", (6.0 * step_seconds).max(6.0).round() as u64);
    FeatureSpec {
        name: DEFRAG_MASK.to_string(),
        query: format!(
            "max by (instance) ((max_over_time(etcd_disk_defrag_inflight[{range}]) > 0) \
             or increase(etcd_disk_backend_defrag_duration_seconds_count[{range}]))"
        ),
    }
}

/// The smallest normalisation std of a default feature, in the feature's own units, so that
/// a feature which never moved in training (no election, no failed proposal) scores a
/// first event as a few standard deviations, not as the clip limit. Counts: one event per
/// rate window; fractions of the quota: 1%; latencies: 1 ms; request rates: 1 request/s;
/// db growth: 1e-5 of the quota per second (0.1% in 100 s). `None` for unknown names.
pub fn std_floor(name: &str, step_seconds: f64) -> Option<f64> {
    let one_event_per_range = 1.0 / range_seconds(step_seconds);
    Some(match name {
        "db_size_over_quota" | "fragmentation" => 0.01,
        "db_growth_rate" => 1e-5,
        // `increase` over the range: a count of elections.
        "leader_changes" => 1.0,
        // `rate` over the range: events per second.
        "failed_proposals" | "slow_applies" => one_event_per_range,
        "wal_fsync_p99" | "backend_commit_p99" => 1e-3,
        "grpc_request_rate" => 1.0,
        "write_fraction" => 0.05,
        // Bytes per request: one kilobyte.
        "db_growth_per_request" => 1024.0,
        _ => return None,
    })
}

/// The queries for `names` from the default catalogue, or an error naming the unknown ones.
pub fn catalogue_lookup(names: &[String], step_seconds: f64) -> Result<Vec<FeatureSpec>, String> {
    let catalogue = default_features(step_seconds);
    let mut unknown = Vec::new();
    let mut specs = Vec::with_capacity(names.len());
    for name in names {
        match catalogue.iter().find(|spec| &spec.name == name) {
            Some(spec) => specs.push(spec.clone()),
            None => unknown.push(name.as_str()),
        }
    }
    if unknown.is_empty() {
        Ok(specs)
    } else {
        Err(format!(
            "no built-in query for feature(s) {}; pass --features FILE.json with [{{\"name\", \"query\"}}] for them",
            unknown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_windows_follow_the_step() {
        let fast = default_features(2.0);
        assert!(fast[3].query.contains("[8s]"), "{}", fast[3].query);
        let slow = default_features(15.0);
        assert!(slow[3].query.contains("[60s]"), "{}", slow[3].query);
        assert_eq!(fast.len(), 11);
        let mask = default_mask(2.0).query;
        assert!(mask.contains("etcd_disk_defrag_inflight[12s]"), "{mask}");
        assert!(
            mask.contains("increase(etcd_disk_backend_defrag_duration_seconds_count[12s])"),
            "{mask}"
        );
    }

    /// The catalogue's `name` at `step_seconds`.
    fn catalogue_spec(name: &str, step_seconds: f64) -> FeatureSpec {
        default_features(step_seconds)
            .into_iter()
            .find(|f| f.name == name)
            .unwrap()
    }

    #[test]
    fn write_fraction_divides_the_members_writes_by_all_its_requests() {
        let spec = catalogue_spec("write_fraction", 15.0);
        // Both rates over the same twelve steps, writes by method, a floor of one request.
        assert_eq!(spec.query.matches("[180s]").count(), 3, "{}", spec.query);
        assert!(
            spec.query.contains(r#"grpc_method=~"Put|DeleteRange|Txn""#),
            "{}",
            spec.query
        );
        assert!(spec.query.contains("/ clamp_min("), "{}", spec.query);
        // A member with no write series yet still gets a value (0), not a gap.
        assert!(spec.query.contains(" or 0 * "), "{}", spec.query);
    }

    #[test]
    fn growth_per_request_divides_a_twelve_step_growth_by_at_least_30_requests() {
        let spec = catalogue_spec("db_growth_per_request", 30.0);
        // Twelve steps of 30 s on both sides of the division.
        assert_eq!(spec.query.matches("[360s]").count(), 2, "{}", spec.query);
        assert!(
            spec.query
                .contains("deriv(etcd_mvcc_db_total_size_in_bytes[360s])"),
            "{}",
            spec.query
        );
        assert!(
            spec.query.ends_with("[360s])), 30)"),
            "a quiet member's few requests count as 30: {}",
            spec.query
        );
        // At a 1 s step the windows are 12 s, never less.
        let fast = catalogue_spec("db_growth_per_request", 1.0);
        assert_eq!(fast.query.matches("[12s]").count(), 2, "{}", fast.query);
    }

    #[test]
    fn every_default_feature_has_a_floor_in_its_units() {
        for step in [1.0, 2.0, 15.0] {
            for spec in default_features(step) {
                let floor = std_floor(&spec.name, step);
                assert!(floor.is_some_and(|f| f > 0.0), "{} at {step}s", spec.name);
            }
        }
        // One failed proposal in the 8 s rate window of a 2 s step is 1/8 per second.
        assert_eq!(std_floor("failed_proposals", 2.0), Some(0.125));
        assert_eq!(std_floor("leader_changes", 2.0), Some(1.0));
        assert_eq!(std_floor("cpu_temp", 2.0), None);
    }

    #[test]
    fn only_the_latency_quantiles_read_a_missing_value_as_zero() {
        let quantiles: Vec<String> = default_features(1.0)
            .into_iter()
            .filter(FeatureSpec::is_latency_quantile)
            .map(|f| f.name)
            .collect();
        assert_eq!(quantiles, ["wal_fsync_p99", "backend_commit_p99"]);
    }

    #[test]
    fn answers_are_read_by_the_serving_rules() {
        let features = default_features(1.0);
        let (quota, fsync) = (&features[0], &features[5]);
        assert_eq!(fsync.reading(Some(f64::NAN)), Some(0.0));
        assert_eq!(fsync.reading(None), Some(0.0));
        assert_eq!(fsync.reading(Some(f64::INFINITY)), None);
        assert_eq!(fsync.reading(Some(0.02)), Some(0.02));
        assert_eq!(quota.reading(Some(f64::NAN)), None);
        assert_eq!(quota.reading(None), None);
        assert_eq!(quota.reading(Some(f64::NEG_INFINITY)), None);
    }

    #[test]
    fn lookup_names_the_unknown_features() {
        let names = vec!["wal_fsync_p99".to_string(), "cpu_temp".to_string()];
        let err = catalogue_lookup(&names, 15.0).unwrap_err();
        assert!(
            err.contains("cpu_temp") && !err.contains("wal_fsync"),
            "{err}"
        );
        let ok = catalogue_lookup(&names[..1], 15.0).unwrap();
        assert_eq!(ok[0].name, "wal_fsync_p99");
    }
}
