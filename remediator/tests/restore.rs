//! When the repair does not make etcd healthy: a cluster that keeps quorum is not restored
//! (a member killed mid-run), and one that is unavailable is restored from the run's
//! verified snapshot through the command templates, keeping the old data dir.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dr_remediator::audit::Phase;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, RestoreMarkers};
use support::{FIRING, bloat, client, remediator, runtime, seeded, step};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The restore flags for the harness' members, plus a short health wait and etcd timeout.
fn restore_flags(etcd: &EtcdCluster, markers: &RestoreMarkers) -> Vec<String> {
    let mut flags = markers.remediator_flags(etcd).unwrap();
    flags.extend(["--health-wait", "3s", "--etcd-timeout", "2s"].map(String::from));
    flags
}

#[test]
fn a_member_killed_mid_run_with_quorum_left_is_not_restored() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let marker_dir = tempfile::tempdir().unwrap();
    let markers = RestoreMarkers::new(marker_dir.path()).unwrap();
    let flags = restore_flags(&etcd, &markers);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rt = runtime();
    let r = remediator(&endpoints, dir.path(), &flags);
    let id = rt.block_on(async {
        let mut c = client(&endpoints).await;
        bloat(&mut c, 10, 5, 100 * 1024).await;
        let (status, body) = r.post(FIRING, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["action_id"].as_str().unwrap().to_owned();
        r.wait_step(&id, "snapshot", Phase::Ok, RUN_TIMEOUT).await;
        id
    });
    // Lose a member while the run goes on (the runtime's workers keep it going).
    etcd.stop_member(0).unwrap();
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let verify = step(&events, "verify", Phase::Ok).unwrap();
        assert_eq!(verify.detail["verdict"], "degraded", "{events:#?}");
        assert!(
            verify.detail["detail"].as_str().unwrap().contains("etcd-0"),
            "{verify:?}"
        );
        let skipped = step(&events, "restore_if_unavailable", Phase::Skipped).unwrap();
        assert!(
            skipped.detail.as_str().unwrap().contains("quorum"),
            "{skipped:?}"
        );
        assert!(markers.untouched().unwrap(), "a restore command ran");
        // The remaining two still serve.
        let mut c = client(&endpoints[1..]).await;
        c.put("after", "ok", None).await.unwrap();
    });
}

fn restored_from_the_snapshot(version: EtcdVersion, members: usize) {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version,
        members,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let marker_dir = tempfile::tempdir().unwrap();
    let mut markers = RestoreMarkers::new(marker_dir.path()).unwrap();
    let flags = restore_flags(&etcd, &markers);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rt = runtime();
    let r = remediator(&endpoints, dir.path(), &flags);
    let (id, seeded_before) = rt.block_on(async {
        let mut c = client(&endpoints).await;
        bloat(&mut c, 10, 2, 10 * 1024).await;
        let seeded_before = seeded(&mut c).await;
        let (status, body) = r.post(FIRING, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["action_id"].as_str().unwrap().to_owned();
        r.wait_step(&id, "wait_health", Phase::Start, RUN_TIMEOUT)
            .await;
        (id, seeded_before)
    });
    // Every member dies and its data is gone: only the snapshot can bring it back.
    for i in 0..members {
        etcd.stop_member(i).unwrap();
        let data_dir = etcd.member(i).data_dir.clone();
        std::fs::rename(&data_dir, data_dir.with_extension("lost")).unwrap();
        std::fs::create_dir(&data_dir).unwrap();
    }
    // Answer the remediator's stop and start requests until every member is started
    // again (bounded).
    let deadline = Instant::now() + RUN_TIMEOUT;
    while markers.started() < members {
        assert!(
            Instant::now() < deadline,
            "restore never asked to start every member: {:#?}",
            r.events_of(&id)
        );
        markers.answer(&mut etcd).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let verify = step(&events, "verify", Phase::Ok).unwrap();
        assert_eq!(verify.detail["verdict"], "unavailable", "{events:#?}");
        let restore = step(&events, "restore_if_unavailable", Phase::Ok).unwrap();
        assert_eq!(
            restore.detail["health"]["verdict"], "healthy",
            "{restore:?}"
        );
        let old = restore.detail["old_data_dirs"].as_array().unwrap();
        assert_eq!(old.len(), members);
        assert!(
            old.iter().all(|d| Path::new(d.as_str().unwrap()).is_dir()),
            "old data dirs not kept"
        );
        let mut c = client(&endpoints).await;
        assert_eq!(seeded(&mut c).await, seeded_before, "data not restored");
        c.put("after-restore", "ok", None).await.unwrap();
        let (_, metrics) = r.get("/metrics").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .contains("etcd_dr_restore_total{result=\"success\"} 1")
        );
    });
}

#[test]
fn an_unavailable_single_member_is_restored_from_the_snapshot_3_4() {
    restored_from_the_snapshot(EtcdVersion::V3_4, 1);
}

/// etcdctl 3.4 restores a 3.6 snapshot into a data dir that etcd 3.6 starts on.
#[test]
fn an_unavailable_single_member_is_restored_from_the_snapshot_3_6() {
    restored_from_the_snapshot(EtcdVersion::V3_6, 1);
}

/// Quorum lost for good: the same snapshot restored on every member, under a new token.
#[test]
fn an_unavailable_three_member_cluster_is_restored_from_the_snapshot_3_4() {
    restored_from_the_snapshot(EtcdVersion::V3_4, 3);
}
