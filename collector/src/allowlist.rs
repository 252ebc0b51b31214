//! Which metric families are worth pushing. etcd exposes ~120 families; the detector and
//! the dashboards need a few dozen, and pushing less keeps the Pushgateway and Prometheus
//! small.

use regex::RegexSet;

/// The families that matter when etcd is in trouble: size against quota, fragmentation,
/// leadership, proposals, disk latency (WAL fsync, backend commit), slow applies and read
/// indexes, peer round trips and send failures, gRPC traffic and latency, defrag in flight.
pub const DEFAULT_PATTERNS: &[&str] = &[
    // size, quota, fragmentation (size vs size in use), revisions and keys
    "etcd_mvcc_db_total_size_in(_use_in)?_bytes",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_server_quota_backend_bytes",
    "etcd_debugging_mvcc_(current|compact)_revision",
    "etcd_debugging_mvcc_keys_total",
    "etcd_mvcc_(put|range|delete|txn)_total",
    "etcd_mvcc_db_open_read_transactions",
    // leadership and proposals
    "etcd_server_(has_leader|is_leader|is_learner)",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_(committed_total|applied_total|pending|failed_total)",
    "etcd_server_heartbeat_send_failures_total",
    // disk
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_disk_backend_defrag_duration_seconds",
    "etcd_disk_defrag_inflight",
    // slow paths
    "etcd_server_slow_apply_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_server_read_indexes_failed_total",
    "etcd_server_health_(failures|success)",
    // peers (present on multi-member clusters only)
    "etcd_network_peer_round_trip_time_seconds",
    "etcd_network_peer_(sent|received)_failures_total",
    "etcd_network_active_peers",
    // client traffic (grpc_server_handling_seconds needs etcd --metrics=extensive)
    "grpc_server_(handled|started)_total",
    "grpc_server_handling_seconds",
    // versions, for dashboards that group by them
    "etcd_server_version",
    "etcd_cluster_version",
];

/// A set of anchored regular expressions over family names.
#[derive(Clone, Debug)]
pub struct Allowlist {
    set: RegexSet,
}

impl Allowlist {
    /// The defaults plus `extra` patterns. Each pattern must match a whole family name.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let anchored = DEFAULT_PATTERNS
            .iter()
            .map(|p| (*p).to_string())
            .chain(extra.iter().cloned())
            .map(|p| format!("^(?:{p})$"));
        let set = RegexSet::new(anchored).map_err(|err| format!("--allow: {err}"))?;
        Ok(Allowlist { set })
    }

    pub fn allows(&self, family: &str) -> bool {
        self.set.is_match(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trouble_families_and_drops_the_rest() {
        let allow = Allowlist::new(&[]).unwrap();
        for name in [
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "etcd_server_quota_backend_bytes",
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_server_proposals_pending",
            "grpc_server_handled_total",
        ] {
            assert!(allow.allows(name), "{name} should be kept");
        }
        for name in [
            "go_goroutines",
            "process_resident_memory_bytes",
            "etcd_debugging_store_reads_total",
            // anchoring: a prefix or suffix of an allowed name is not allowed
            "etcd_mvcc_db_total_size_in_bytes_extra",
            "xetcd_server_has_leader",
        ] {
            assert!(!allow.allows(name), "{name} should be dropped");
        }
    }

    #[test]
    fn extra_patterns_add_to_the_defaults() {
        let allow = Allowlist::new(&["go_.*".into()]).unwrap();
        assert!(allow.allows("go_goroutines"));
        assert!(allow.allows("etcd_server_has_leader"));
    }

    #[test]
    fn a_bad_pattern_is_a_clear_error() {
        let err = Allowlist::new(&["(unclosed".into()]).unwrap_err();
        assert!(err.starts_with("--allow:"), "{err}");
    }
}
