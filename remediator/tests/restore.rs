//! When the repair does not make etcd healthy: a cluster that keeps quorum is not restored
//! (a member killed mid-run), and one that is unavailable is restored from the run's
//! verified snapshot through the command templates, keeping the old data dir.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dr_remediator::audit::Phase;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, etcdctl_binary};
use support::{FIRING, bloat, client, remediator, runtime, seeded, step};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// etcd 3.6 panics ("failed to update; member unknown") on a data dir that etcdctl 3.4
/// restored from a 3.6 snapshot under a new cluster token: 3.4's restore does not rewrite
/// the membership 3.6 reads from the backend. Keeping the original token keeps the member
/// IDs, and then 3.6 starts and serves. (etcdutl, which is not available here, is the tool
/// for 3.5+.)
const ORIGINAL_TOKEN: &str = "dr-testkit";

/// Restore commands for testkit members: etcdctl 3.4 restores; "stop" and "start" hand
/// over to the test (which owns the processes) through marker files.
fn restore_flags(workdir: &Path, marker_dir: &Path, token: &str) -> Vec<String> {
    let etcdctl = etcdctl_binary().unwrap();
    vec![
        "--restore-mode".into(),
        "command".into(),
        "--restore-stop-cmd".into(),
        // Returns once the test says the member is down (bounded: 30 s).
        format!(
            "touch {m}/stop-{{member}}; for i in $(seq 300); do \
             [ -e {m}/stopped-{{member}} ] && exit 0; sleep 0.1; done; exit 1",
            m = marker_dir.display()
        ),
        "--restore-cmd".into(),
        format!(
            "ETCDCTL_API=3 {} snapshot restore {{snapshot}} --name {{member}} \
             --initial-cluster {{initial_cluster}} --initial-advertise-peer-urls {{peer_url}} \
             --initial-cluster-token {token} --data-dir {{new_data_dir}}",
            etcdctl.display()
        ),
        "--restore-swap-cmd".into(),
        "mv {data_dir} {old_data_dir} && mv {new_data_dir} {data_dir}".into(),
        "--restore-start-cmd".into(),
        format!("touch {}/start-{{member}}", marker_dir.display()),
        "--member-data-dir".into(),
        format!("{}/{{member}}.data", workdir.display()),
        "--restore-timeout".into(),
        "60s".into(),
        "--health-wait".into(),
        "3s".into(),
        "--etcd-timeout".into(),
        "2s".into(),
    ]
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
    let markers = tempfile::tempdir().unwrap();
    let flags = restore_flags(etcd.workdir(), markers.path(), "{cluster_token}");
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
        assert!(
            std::fs::read_dir(markers.path()).unwrap().next().is_none(),
            "a restore command ran"
        );
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
    let markers = tempfile::tempdir().unwrap();
    let token = match version {
        EtcdVersion::V3_4 => "{cluster_token}",
        EtcdVersion::V3_6 => ORIGINAL_TOKEN,
    };
    let flags = restore_flags(etcd.workdir(), markers.path(), token);
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
    for i in 0..members {
        std::fs::write(markers.path().join(format!("stopped-etcd-{i}")), b"").unwrap();
    }
    // Start the members when the remediator asks for it (bounded).
    let deadline = Instant::now() + RUN_TIMEOUT;
    for i in 0..members {
        let start_marker = markers.path().join(format!("start-etcd-{i}"));
        while !start_marker.exists() {
            assert!(
                Instant::now() < deadline,
                "restore never asked to start: {:#?}",
                r.events_of(&id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for i in 0..members {
        etcd.start_member(i).unwrap();
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
