//! Every etcd the harness runs (3.4, 3.5, 3.6, 3.7) exports the metrics the default
//! model's queries read: a family renamed or dropped in a version would leave a feature
//! with no series, and that instance without a score. The defrag mask reads either of two
//! families (3.4 has no `etcd_disk_defrag_inflight`), so one of them is enough.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::collections::BTreeSet;

use dr_detector::model::features::{default_features, default_mask};
use dr_testkit::http::http_get;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion};
use regex::Regex;

/// The etcd and gRPC-server metric names a query reads (histograms as their family).
fn metric_names(query: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\b((?:etcd|grpc_server)_[A-Za-z0-9_]*)").unwrap();
    re.captures_iter(query).map(|c| c[1].to_string()).collect()
}

/// The metric names (samples, with `_bucket` and the like kept) one `/metrics` page has.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_etcd_version_exports_what_the_default_features_read() {
    for version in EtcdVersion::ALL {
        let etcd = EtcdCluster::start(EtcdOptions {
            version,
            members: 1,
            ..EtcdOptions::default()
        })
        .unwrap();
        // Some traffic, so the request and latency families have samples.
        for i in 0..20 {
            etcd.etcdctl(&["put", &format!("k{i}"), "v"]).unwrap();
        }
        let url = format!("{}/metrics", etcd.metrics_urls()[0]);
        let (status, page) = http_get(&url).unwrap();
        assert_eq!(status, 200, "etcd {}: {url}", version.as_str());
        let have = exported(&page);
        for spec in default_features(1.0) {
            for name in metric_names(&spec.query) {
                assert!(
                    have.contains(&name),
                    "etcd {}: feature `{}` reads {name}, which it does not export",
                    version.as_str(),
                    spec.name
                );
            }
        }
        let mask = metric_names(&default_mask(1.0).query);
        assert!(
            mask.iter().any(|m| have.contains(m)),
            "etcd {}: none of the defrag mask's families {mask:?}",
            version.as_str()
        );
    }
}
