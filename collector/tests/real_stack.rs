//! The collector against a real etcd (3.4 from Debian, 3.6 vendored) and a real
//! Pushgateway: what the Pushgateway serves afterwards is what etcd exposed, filtered.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

mod support;

use std::collections::BTreeSet;

use dr_collector::allowlist::Allowlist;
use dr_collector::exposition::{self, MetricKind};
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, Pushgateway};
use support::{buckets, collector, config, family, group, pushgateway_page};

fn single(version: EtcdVersion) -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version,
        ..EtcdOptions::default()
    })
    .unwrap()
}

async fn families_and_buckets_survive_the_push(version: EtcdVersion) {
    let etcd = single(version);
    let pushgateway = Pushgateway::start().unwrap();
    let metrics_url = format!("{}/metrics", etcd.member(0).metrics_url);
    let config = config(&[
        "--etcd-metrics-url",
        &metrics_url,
        "--pushgateway-url",
        &pushgateway.url(),
        "--instance",
        "member-0",
    ]);
    let pushed = collector(&config)
        .collect_once(&config.targets[0])
        .await
        .unwrap();

    // What etcd exposes now, filtered the same way: the set of names to expect.
    let (_, etcd_page) = dr_testkit::http_get(&metrics_url).unwrap();
    let allow = Allowlist::new(&[]).unwrap();
    let allowed: BTreeSet<String> = exposition::parse(&etcd_page)
        .unwrap()
        .iter()
        .filter(|f| allow.allows(f.name))
        .map(|f| f.name.to_string())
        .collect();
    // Plus the collector's own word that this member answered.
    let mut expected = allowed.clone();
    expected.insert(dr_collector::push::TARGET_UP.to_owned());

    let page = pushgateway_page(&pushgateway.url());
    let got = group(&page, "etcd", "member-0");
    let got_names: BTreeSet<String> = got.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(
        got_names, expected,
        "pushed families differ from etcd's allowed ones"
    );
    assert_eq!(pushed.families, allowed.len());
    assert!(
        got_names.contains("etcd_mvcc_db_total_size_in_bytes")
            && got_names.contains("etcd_server_quota_backend_bytes"),
        "{got_names:?}"
    );
    assert!(
        !got_names.iter().any(|n| n.starts_with("go_")),
        "go_* was not filtered"
    );

    // Histograms keep every bucket and their HELP/TYPE.
    let etcd_families = exposition::parse(&etcd_page).unwrap();
    for name in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
    ] {
        let pushed = family(&got, name);
        let original = family(&etcd_families, name);
        assert_eq!(pushed.kind, MetricKind::Histogram, "{name}");
        assert_eq!(buckets(pushed), buckets(original), "{name} buckets");
        assert_eq!(buckets(pushed).last().map(String::as_str), Some("+Inf"));
        assert_eq!(pushed.help, original.help, "{name} HELP");
    }
    // Gauges keep their values: the quota does not move between two scrapes.
    let quota = |families: &[exposition::MetricFamily<'_>]| {
        family(families, "etcd_server_quota_backend_bytes").samples[0].value
    };
    assert_eq!(quota(&got), quota(&etcd_families));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_4_families_and_buckets_survive_the_push() {
    families_and_buckets_survive_the_push(EtcdVersion::V3_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_6_families_and_buckets_survive_the_push() {
    families_and_buckets_survive_the_push(EtcdVersion::V3_6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_push_replaces_the_first() {
    let etcd = single(EtcdVersion::V3_4);
    let pushgateway = Pushgateway::start().unwrap();
    let metrics_url = format!("{}/metrics", etcd.member(0).metrics_url);
    let base = [
        "--etcd-metrics-url",
        &metrics_url,
        "--pushgateway-url",
        &pushgateway.url(),
    ];
    let instance = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();

    // First push with one extra family allowed, then the default allowlist again.
    let extra = "etcd_debugging_store_reads_total";
    let mut wide: Vec<&str> = base.to_vec();
    wide.extend(["--allow", extra]);
    let wide = config(&wide);
    collector(&wide)
        .collect_once(&wide.targets[0])
        .await
        .unwrap();
    let first = pushgateway_page(&pushgateway.url());
    assert!(
        group(&first, "etcd", &instance)
            .iter()
            .any(|f| f.name == extra),
        "the extra family was not pushed"
    );

    let narrow = config(&base);
    collector(&narrow)
        .collect_once(&narrow.targets[0])
        .await
        .unwrap();
    let second = pushgateway_page(&pushgateway.url());
    let families = group(&second, "etcd", &instance);
    assert!(
        !families.iter().any(|f| f.name == extra),
        "a PUT must replace the group: {extra} survived"
    );
    assert!(families.iter().any(|f| f.name == "etcd_server_has_leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_of_a_cluster_is_its_own_instance() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let urls: Vec<String> = etcd
        .members()
        .iter()
        .map(|m| format!("{}/metrics", m.metrics_url))
        .collect();
    let config = config(&[
        "--etcd-metrics-url",
        &urls.join(","),
        "--instance",
        "m0,m1,m2",
        "--pushgateway-url",
        &pushgateway.url(),
    ]);
    let collector = collector(&config);
    for target in &config.targets {
        collector.collect_once(target).await.unwrap();
    }
    let page = pushgateway_page(&pushgateway.url());
    let mut leaders = 0.0;
    for instance in ["m0", "m1", "m2"] {
        let families = group(&page, "etcd", instance);
        // Peer metrics exist only where there are peers: proof these are the members' pages.
        assert_eq!(
            family(&families, "etcd_network_active_peers").samples.len(),
            2,
            "{instance} sees two peers"
        );
        leaders += family(&families, "etcd_server_is_leader").samples[0].value;
    }
    assert_eq!(leaders, 1.0, "exactly one member reports itself leader");
}
