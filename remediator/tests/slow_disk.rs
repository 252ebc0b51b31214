//! A stalling disk, the incident a slow-disk alert calls about, must not keep the
//! remediator from taking its lock: every member's fsyncs are delayed (strace, on a real
//! etcd) beyond the deadline of an ordinary call, and the lock is still taken and released.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

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
