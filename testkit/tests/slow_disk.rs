//! A slow disk on a real etcd: while attached, a write cannot commit faster than the
//! added fsync delay; once detached, writes are fast again and the tracer is gone.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, SlowDisk, pid_alive};

const DELAY: Duration = Duration::from_millis(700);

/// The fastest of three `etcdctl put`s (process start-up included).
fn fastest_put(etcd: &EtcdCluster) -> Duration {
    (0..3)
        .map(|i| {
            let started = Instant::now();
            etcd.etcdctl(&["put", &format!("dr/slow/{i}"), "v"])
                .unwrap();
            started.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn writes_wait_for_the_delayed_fsync_until_detached() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        ..EtcdOptions::default()
    })
    .unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let pid = etcd.pid(0).unwrap();

    let mut slow = SlowDisk::attach(&[pid], DELAY, log_dir.path()).unwrap();
    let stalled = fastest_put(&etcd);
    assert!(
        stalled >= DELAY,
        "a put took {stalled:?} with syncs delayed {DELAY:?}"
    );

    slow.stop().unwrap();
    let fast = fastest_put(&etcd);
    assert!(fast < DELAY, "a put still took {fast:?} after detaching");
    assert!(pid_alive(pid), "etcd died when the tracer detached");
    let keys = etcd
        .etcdctl(&["get", "dr/slow/", "--prefix", "--keys-only"])
        .unwrap();
    assert_eq!(keys.lines().filter(|l| !l.trim().is_empty()).count(), 3);
}

#[test]
fn attaching_to_no_process_or_a_gone_one_is_refused() {
    let log_dir = tempfile::tempdir().unwrap();
    let err = SlowDisk::attach(&[], DELAY, log_dir.path()).unwrap_err();
    assert!(err.to_string().contains("at least one process"), "{err:#}");

    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let err = SlowDisk::attach(&[pid], DELAY, log_dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("attaching"), "{err:#}");
}
