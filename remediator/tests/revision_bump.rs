//! `--bump-revision-past` on a real etcd: the revision moved past the one given, the
//! history compacted there (a read or a watch from before is told so), the keys as they
//! were; a gap over the limit refused with nothing written.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dr_remediator::actions::bump::BUMP_KEY;
use dr_testkit::{EtcdCluster, EtcdOptions, output_within};
use etcd_client::{GetOptions, WatchOptions};
use support::runtime;

const BINARY_TIMEOUT: Duration = Duration::from_secs(120);

fn bump(etcd: &EtcdCluster, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
        .args(["--etcd-endpoints", &etcd.client_endpoints().join(",")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    output_within(child, BINARY_TIMEOUT).unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    support::assert_success(output);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_revision_moves_past_the_old_one_and_older_watches_are_told_it_was_compacted() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let rt = runtime();
    let written = rt.block_on(async {
        let mut client = support::client(&etcd.client_endpoints()).await;
        let mut last = 0;
        for i in 0..20 {
            let put = client
                .put(format!("/kept/{i:02}"), format!("v{i}"), None)
                .await
                .unwrap();
            last = put.header().unwrap().revision();
        }
        last
    });

    let bumped = json(&bump(&etcd, &["--bump-revision-past", "2000"]));
    assert_eq!(bumped["revision_before"], written, "{bumped}");
    assert_eq!(bumped["writes"], 2000 - written + 1, "{bumped}");
    let after = bumped["revision_after"].as_i64().unwrap();
    assert!(after > 2000, "{bumped}");
    assert_eq!(bumped["compacted_at"], after);

    rt.block_on(async {
        let mut client = support::client(&etcd.client_endpoints()).await;
        let now = client.get(BUMP_KEY, None).await.unwrap();
        assert_eq!(now.count(), 0, "the key used for the writes is gone");
        assert_eq!(now.header().unwrap().revision(), after);
        let kept = client
            .get("/kept/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let values: Vec<String> = kept
            .kvs()
            .iter()
            .map(|kv| kv.value_str().unwrap().to_owned())
            .collect();
        assert_eq!(values, (0..20).map(|i| format!("v{i}")).collect::<Vec<_>>());
        // A read at an old revision, and a watch resumed from one, are refused as compacted.
        let old = client
            .get(
                "/kept/",
                Some(GetOptions::new().with_prefix().with_revision(5)),
            )
            .await
            .unwrap_err();
        assert!(old.to_string().contains("compacted"), "{old}");
        let mut stream = client
            .watch(
                "/kept/",
                Some(WatchOptions::new().with_prefix().with_start_revision(5)),
            )
            .await
            .unwrap();
        let told = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let response = stream.message().await.unwrap().unwrap();
                if response.canceled() || response.compact_revision() > 0 {
                    return response;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(told.compact_revision(), after);
    });

    // Already past: one write all the same, so the compaction is at a revision no client
    // of the old cluster saw.
    let again = json(&bump(&etcd, &["--bump-revision-past", "100"]));
    assert_eq!(again["revision_before"], after);
    assert_eq!(again["writes"], 1);
    assert_eq!(again["revision_after"], after + 2);
}

#[test]
fn a_gap_over_the_limit_is_refused_with_nothing_written() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let out = bump(
        &etcd,
        &[
            "--bump-revision-past",
            "5000000",
            "--bump-revision-max-writes",
            "1000",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("more than --bump-revision-max-writes 1000"),
        "{stderr}"
    );
    let rt = runtime();
    rt.block_on(async {
        let mut client = support::client(&etcd.client_endpoints()).await;
        let now = client.get(BUMP_KEY, None).await.unwrap();
        assert!(now.header().unwrap().revision() < 10, "nothing written");
    });
    // A bad flag is a message, not a run.
    let bad = bump(&etcd, &["--bump-revision-past", "0"]);
    assert_eq!(bad.status.code(), Some(2));
}
