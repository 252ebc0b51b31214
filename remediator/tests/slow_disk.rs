//! A stalling disk, the incident a slow-disk alert calls about, must not keep the
//! remediator from acting: every member's fsyncs are delayed (strace, on a real etcd)
//! beyond the deadline of an ordinary call, and the lock is still taken and released; and
//! a decision slower than the caller's patience still ends, recorded.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use dr_remediator::audit::{Phase, read_all};
use dr_remediator::etcd::EtcdAccess;
use dr_remediator::lock::EtcdLock;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, SlowDisk};

const SYNC_DELAY: Duration = Duration::from_millis(600);

#[test]
fn the_lock_is_taken_on_a_disk_slower_than_the_call_deadline() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let access = EtcdAccess {
        endpoints: etcd.client_endpoints(),
        tls: None,
        // Shorter than one write takes on this disk (a fsync on the leader, then on a
        // follower, each 600 ms).
        timeout: Duration::from_millis(500),
        default_quota_bytes: 2 << 30,
    };
    let logs = tempfile::tempdir().unwrap();
    let pids: Vec<u32> = (0..3).filter_map(|i| etcd.pid(i)).collect();
    let _slow = SlowDisk::attach(&pids, SYNC_DELAY, logs.path()).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let lock = EtcdLock::try_acquire(
            &access,
            "slow-disk-test",
            Duration::from_secs(15),
            Duration::from_secs(2),
        )
        .await
        .unwrap()
        .expect("nobody else holds the lock");
        let took = started.elapsed();
        assert!(
            took >= SYNC_DELAY,
            "the lock took {took:?}: the disk was not slow, the test proves nothing"
        );
        assert!(took < Duration::from_secs(30), "the lock took {took:?}");
        lock.release().await;
    });
}

/// Alertmanager hangs up on a webhook after its timeout; a decision that takes longer
/// (here a detector slow to confirm) must not die with the connection: the run it starts
/// is still recorded and carried out.
#[test]
fn a_webhook_whose_caller_hangs_up_is_still_decided_and_carried_out() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::runtime().block_on(async {
        let answer = serde_json::json!({"instance": "127.0.0.1:2379", "score": 3.2,
            "threshold": 1.0, "anomalous": true, "step_seconds": 1.0, "model": "test",
            "masked_steps": 0, "feature_shares": {"wal_fsync_p99": 0.7, "backend_commit_p99": 0.3}});
        let detector = support::detector_answering_after(answer, Duration::from_secs(2)).await;

        let served = support::serve(
            &etcd.client_endpoints(),
            dir.path(),
            &["--detector-url", &detector],
        )
        .await;
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let hung_up = impatient
            .post(format!("http://{}/webhook", served.addr))
            .header("content-type", "application/json")
            .body(support::FIRING)
            .send()
            .await;
        assert!(hung_up.is_err(), "the caller was meant to give up first: {hung_up:?}");

        let until = Instant::now() + Duration::from_secs(60);
        let events = loop {
            let events = read_all(&dir.path().join("audit.jsonl")).unwrap_or_default();
            if support::step(&events, "escalate", Phase::Ok).is_some()
                || Instant::now() > until
            {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            support::step(&events, "accepted", Phase::Info).is_some(),
            "{events:#?}"
        );
        let escalation = support::step(&events, "escalate", Phase::Ok).unwrap();
        assert_eq!(escalation.detail["diagnosis"], "slow_disk", "{events:#?}");
        served.stop().await;
    });
}
