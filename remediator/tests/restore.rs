//! When the repair does not make etcd healthy: a cluster that keeps quorum is not restored
//! (a member killed mid-run), and one that is unavailable is restored from the run's
//! verified snapshot through the command templates, keeping the old data dir.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dr_remediator::audit::Phase;
use dr_testkit::{ChildGuard, EtcdCluster, EtcdOptions, EtcdVersion, RestoreMarkers};
use support::{FIRING, bloat, client, firing_space, remediator, runtime, seeded, step};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The restore flags for the harness' members, plus a short health wait and etcd timeout.
fn restore_flags(etcd: &EtcdCluster, markers: &RestoreMarkers) -> Vec<String> {
    let mut flags = markers.remediator_flags(etcd).unwrap();
    flags.extend(["--health-wait", "3s", "--etcd-timeout", "2s"].map(String::from));
    flags
}

/// What every restore test starts from: a cluster, the restore markers and the flags that
/// point the remediator's restore commands at them, and a runtime. The temp dirs live as
/// long as the value.
struct Setup {
    etcd: EtcdCluster,
    endpoints: Vec<String>,
    dir: tempfile::TempDir,
    markers: RestoreMarkers,
    flags: Vec<String>,
    rt: tokio::runtime::Runtime,
    _marker_dir: tempfile::TempDir,
}

fn setup(options: EtcdOptions) -> Setup {
    let etcd = EtcdCluster::start(options).unwrap();
    let marker_dir = tempfile::tempdir().unwrap();
    let markers = RestoreMarkers::new(marker_dir.path()).unwrap();
    Setup {
        endpoints: etcd.client_endpoints(),
        dir: tempfile::tempdir().unwrap(),
        flags: restore_flags(&etcd, &markers),
        rt: runtime(),
        etcd,
        markers,
        _marker_dir: marker_dir,
    }
}

/// Writes some data, fires the alert and returns when the run waits for health (where
/// the tests break etcd): the action id and the seeded keys' digest.
async fn fire_until_the_health_wait(
    r: &support::Remediator,
    endpoints: &[String],
) -> (String, (usize, Vec<u8>)) {
    let mut c = client(endpoints).await;
    bloat(&mut c, 10, 2, 10 * 1024).await;
    let seeded_before = seeded(&mut c).await;
    let (status, body) = r.post(&firing_space(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["action_id"].as_str().unwrap().to_owned();
    r.wait_step(&id, "wait_health", Phase::Start, RUN_TIMEOUT)
        .await;
    (id, seeded_before)
}

/// Members `range` die and their data dirs are gone (a lost disk).
fn lose_members(etcd: &mut EtcdCluster, range: std::ops::Range<usize>) {
    for i in range {
        etcd.stop_member(i).unwrap();
        let data_dir = etcd.member(i).data_dir.clone();
        std::fs::rename(&data_dir, data_dir.with_extension("lost")).unwrap();
        std::fs::create_dir(&data_dir).unwrap();
    }
}

/// Answers the remediator's stop and start requests until `members` were started again
/// (bounded).
fn answer_until_started(
    markers: &mut RestoreMarkers,
    etcd: &mut EtcdCluster,
    members: usize,
    r: &support::Remediator,
    id: &str,
) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while markers.started() < members {
        assert!(
            Instant::now() < deadline,
            "restore never asked to start {members} member(s): {:#?}",
            r.events_of(id)
        );
        markers.answer(etcd).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_member_killed_mid_run_with_quorum_left_is_not_restored() {
    let Setup {
        mut etcd,
        endpoints,
        dir,
        markers,
        flags,
        rt,
        _marker_dir,
    } = setup(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 3,
        ..EtcdOptions::default()
    });
    let r = remediator(&endpoints, dir.path(), &flags);
    let id = rt.block_on(async {
        let mut c = client(&endpoints).await;
        bloat(&mut c, 10, 5, 100 * 1024).await;
        let (status, body) = r.post(&firing_space(), None).await;
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
    let Setup {
        mut etcd,
        endpoints,
        dir,
        mut markers,
        flags,
        rt,
        _marker_dir,
    } = setup(EtcdOptions {
        version,
        members,
        ..EtcdOptions::default()
    });
    let r = remediator(&endpoints, dir.path(), &flags);
    let (id, seeded_before) = rt.block_on(fire_until_the_health_wait(&r, &endpoints));
    // Every member dies and its data is gone: only the snapshot can bring it back.
    lose_members(&mut etcd, 0..members);
    answer_until_started(&mut markers, &mut etcd, members, &r, &id);
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

/// A stop or restore command that fails leaves the data as it was, and the member that
/// was stopped for it is started again rather than left down.
#[test]
fn a_failed_restore_starts_the_stopped_member_again_on_its_data() {
    failed_command_starts_the_member_again("--restore-cmd", "restore restore of etcd-0");
}

#[test]
fn a_failed_stop_starts_the_member_again_on_its_data() {
    failed_command_starts_the_member_again("--restore-stop-cmd", "restore stop of etcd-0");
}

fn failed_command_starts_the_member_again(flag: &str, failed_step: &str) {
    let Setup {
        mut etcd,
        endpoints,
        dir,
        mut markers,
        mut flags,
        rt,
        _marker_dir,
    } = setup(EtcdOptions::default());
    let command = flags.iter().position(|f| f == flag).unwrap() + 1;
    flags[command] = "echo no etcdctl here >&2; exit 7".into();
    let r = remediator(&endpoints, dir.path(), &flags);
    let (id, _) = rt.block_on(fire_until_the_health_wait(&r, &endpoints));
    etcd.stop_member(0).unwrap();
    let data_dir = etcd.member(0).data_dir.clone();
    // The stopped member must be started again.
    answer_until_started(&mut markers, &mut etcd, 1, &r, &id);
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let failed = step(&events, "restore_if_unavailable", Phase::Failed)
            .unwrap_or_else(|| panic!("{events:#?}"));
        let detail = failed.detail.as_str().unwrap();
        assert!(detail.contains(failed_step), "{detail}");
        assert!(detail.contains("no etcdctl here"), "{detail}");
        let (_, metrics) = r.get("/metrics").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .contains("etcd_dr_restore_total{result=\"failure\"} 1"),
            "{metrics}"
        );
        assert!(
            detail.contains("data untouched: etcd-0 started again"),
            "{detail}"
        );
        // Started on its own data: it serves the keys it had.
        let mut c = client(&endpoints).await;
        c.put("after", "ok", None).await.unwrap();
    });
    let swapped_out = format!("{}.old-{id}", data_dir.display());
    assert!(
        !Path::new(&swapped_out).exists(),
        "the data dir was swapped"
    );
    assert!(
        data_dir.join("member/snap/db").is_file(),
        "the data dir lost its data"
    );
}

/// A repair that brings etcd back leaves restore alone, configured or not.
#[test]
fn a_healthy_cluster_after_the_repair_is_never_restored() {
    let Setup {
        etcd: _etcd,
        endpoints,
        dir,
        markers,
        flags,
        rt,
        _marker_dir,
    } = setup(EtcdOptions::default());
    let r = remediator(&endpoints, dir.path(), &flags);
    rt.block_on(async {
        let (id, seeded_before) = fire_until_the_health_wait(&r, &endpoints).await;
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let verify = step(&events, "verify", Phase::Ok).unwrap();
        assert_eq!(verify.detail["verdict"], "healthy", "{events:#?}");
        let skipped = step(&events, "restore_if_unavailable", Phase::Skipped).unwrap();
        assert_eq!(
            skipped.detail, "not restoring: the cluster is healthy",
            "{skipped:?}"
        );
        let mut c = client(&endpoints).await;
        assert_eq!(seeded(&mut c).await, seeded_before);
    });
    assert!(markers.untouched().unwrap(), "a restore command ran");
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

#[test]
fn an_unavailable_single_member_is_restored_from_the_snapshot_3_5() {
    restored_from_the_snapshot(EtcdVersion::V3_5, 1);
}

#[test]
fn an_unavailable_single_member_is_restored_from_the_snapshot_3_7() {
    restored_from_the_snapshot(EtcdVersion::V3_7, 1);
}

/// Quorum lost for good: the same snapshot restored on every member, under a new token.
#[test]
fn an_unavailable_three_member_cluster_is_restored_from_the_snapshot_3_4() {
    restored_from_the_snapshot(EtcdVersion::V3_4, 3);
}

/// A control-plane node as the kubeadm preset sees it: etcd's static pod manifest (as far
/// as the preset reads it) in its own manifests dir, and the member's data dir.
struct KubeadmNode {
    _manifests: tempfile::TempDir,
    manifest: PathBuf,
    data_dir: PathBuf,
}

impl KubeadmNode {
    fn new(etcd: &EtcdCluster) -> KubeadmNode {
        let manifests = tempfile::tempdir().unwrap();
        let manifest = manifests.path().join("etcd.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - etcd\n    \
                 - --initial-cluster-token={}\n    - --data-dir=/var/lib/etcd\n",
                dr_testkit::etcd::CLUSTER_TOKEN
            ),
        )
        .unwrap();
        KubeadmNode {
            _manifests: manifests,
            manifest,
            data_dir: etcd.member(0).data_dir.clone(),
        }
    }

    /// The remediator's flags for the preset on this node.
    fn flags(&self) -> Vec<String> {
        [
            "--restore-mode",
            "command",
            "--restore-preset",
            "kubeadm",
            "--kubeadm-manifest",
            self.manifest.to_str().unwrap(),
            "--member-data-dir",
            self.data_dir.to_str().unwrap(),
            "--restore-timeout",
            "60s",
            "--health-wait",
            "3s",
            "--etcd-timeout",
            "2s",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The preset against a real etcd 3.6 (kubeadm's), with the kubelet played by the test:
/// the member runs while its manifest is in place. Its backend is corrupt, so it cannot
/// come back by itself; the preset parks the manifest, restores with etcdctl into the
/// data dir, swaps `member` (keeping the old one) and puts the manifest back.
#[test]
fn the_kubeadm_preset_restores_a_static_pod_member() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 1,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let node = KubeadmNode::new(&etcd);
    let (manifest, data_dir) = (&node.manifest, &node.data_dir);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let r = remediator(&endpoints, dir.path(), &node.flags());
    let (id, seeded_before) = rt.block_on(fire_until_the_health_wait(&r, &endpoints));
    etcd.stop_member(0).unwrap();
    let db = data_dir.join("member/snap/db");
    std::fs::write(&db, vec![0xAB; 64 * 1024]).unwrap();
    // The kubelet: once the manifest has been taken away and put back, start the member.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut parked = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "the manifest never came back: {:#?}",
            r.events_of(&id)
        );
        let present = manifest.exists();
        parked |= !present;
        if parked && present {
            etcd.start_member(0).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let restore = step(&events, "restore_if_unavailable", Phase::Ok)
            .unwrap_or_else(|| panic!("no restore: {events:#?}"));
        assert_eq!(
            restore.detail["health"]["verdict"], "healthy",
            "{restore:?}"
        );
        let old = restore.detail["old_data_dirs"][0].as_str().unwrap();
        assert_eq!(Path::new(old), data_dir.join(format!("member.old-{id}")));
        assert_eq!(
            std::fs::read(Path::new(old).join("snap/db")).unwrap(),
            vec![0xAB; 64 * 1024],
            "the corrupt member was not kept as it was"
        );
        assert!(!data_dir.join(format!("restore-{id}")).exists());
        let mut c = client(&endpoints).await;
        assert_eq!(seeded(&mut c).await, seeded_before, "data not restored");
        c.put("after-restore", "ok", None).await.unwrap();
    });
    assert!(manifest.exists(), "the manifest was left parked");
}

/// The preset's stop returns only once etcd has let go of its backend (its flock), not
/// when the manifest is gone: a restore must not write beside a running member.
#[test]
fn the_kubeadm_stop_waits_until_etcd_lets_go_of_its_data() {
    use dr_remediator::actions::restore::{CommandFlags, RestoreCommands, RestorePreset, render};
    let mut etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let node = KubeadmNode::new(&etcd);
    let (manifest, data_dir) = (&node.manifest, &node.data_dir);
    let commands = RestoreCommands::resolve(
        Some(RestorePreset::Kubeadm),
        manifest.to_str().unwrap(),
        CommandFlags::default(),
        data_dir.display().to_string(),
        Duration::from_secs(60),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let stop = render(
        &commands.stop,
        &[
            ("data_dir", data_dir.display().to_string()),
            ("work_dir", work.path().display().to_string()),
            ("action_id", "t1".to_owned()),
        ],
    );
    let mut command = std::process::Command::new("sh");
    command.args(["-c", &stop]);
    let mut stopping = ChildGuard::spawn(
        "kubeadm stop",
        command,
        &work.path().join("stop.log"),
        false,
    )
    .unwrap();
    // The kubelet takes its time; the stop must still be waiting.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!manifest.exists(), "the manifest was not moved away");
    assert!(
        stopping.is_running(),
        "the stop returned while etcd still ran"
    );
    etcd.stop_member(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stopping.is_running() {
        assert!(
            Instant::now() < deadline,
            "the stop never noticed etcd stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = stopping.stop().unwrap().unwrap();
    assert!(status.success(), "{status:?}: {}", stopping.log_tail(5));
    assert!(work.path().join("etcd.yaml.restore-t1").exists());
}

/// A multi-member cluster is never restored with commands that reach one node.
#[test]
fn the_kubeadm_preset_leaves_a_three_member_cluster_alone() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let node = KubeadmNode::new(&etcd);
    let (manifest, data_dir) = (&node.manifest, &node.data_dir);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let r = remediator(&endpoints, dir.path(), &node.flags());
    let (id, _) = rt.block_on(fire_until_the_health_wait(&r, &endpoints));
    // Quorum lost: two of three gone.
    etcd.stop_member(1).unwrap();
    etcd.stop_member(2).unwrap();
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let verify = step(&events, "verify", Phase::Ok).unwrap();
        assert_eq!(verify.detail["verdict"], "unavailable", "{events:#?}");
        let skipped = step(&events, "restore_if_unavailable", Phase::Skipped).unwrap();
        assert!(
            skipped.detail.as_str().unwrap().contains("3 members"),
            "{skipped:?}"
        );
    });
    assert!(manifest.exists(), "the manifest was moved");
    assert!(
        !data_dir.join(format!("member.old-{id}")).exists(),
        "the data was touched"
    );
}

/// Quorum already lost when the alert comes (issue 15: every such webhook used to be
/// refused as "etcd not safe to act on"): the member-down diagnosis without quorum, a
/// snapshot from the member that still answers, the wait, and the restore, without the
/// etcd lock (etcd grants none without quorum); then the escalation says what happened.
#[test]
fn quorum_lost_before_the_webhook_is_restored_after_the_wait() {
    let Setup {
        mut etcd,
        endpoints,
        dir,
        mut markers,
        flags,
        rt,
        _marker_dir,
    } = setup(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 3,
        ..EtcdOptions::default()
    });
    let r = remediator(&endpoints, dir.path(), &flags);
    let seeded_before = rt.block_on(async {
        let mut c = client(&endpoints).await;
        bloat(&mut c, 10, 2, 10 * 1024).await;
        seeded(&mut c).await
    });
    // Two of three members go, their data with them.
    lose_members(&mut etcd, 0..2);
    let id = rt.block_on(async {
        let (status, body) = r.post(FIRING, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["diagnosis"], "member_unavailable", "{body}");
        body["action_id"].as_str().unwrap().to_owned()
    });
    answer_until_started(&mut markers, &mut etcd, 3, &r, &id);
    rt.block_on(async {
        let events = r.wait_finished(&id, RUN_TIMEOUT).await;
        let diagnosis = step(&events, "diagnosis", Phase::Info).unwrap();
        assert_eq!(diagnosis.detail["quorum"], false, "{diagnosis:?}");
        assert!(events.iter().any(|e| e.step == "lock"), "{events:#?}");
        assert!(
            step(&events, "snapshot", Phase::Ok).is_some(),
            "{events:#?}"
        );
        let restore = step(&events, "restore_if_unavailable", Phase::Ok).unwrap();
        assert_eq!(
            restore.detail["health"]["verdict"], "healthy",
            "{restore:?}"
        );
        assert!(step(&events, "escalate", Phase::Ok).is_some());
        assert!(events.iter().all(|e| !e.step.starts_with("defrag")));
        let mut c = client(&endpoints).await;
        assert_eq!(seeded(&mut c).await, seeded_before, "data not restored");
        c.put("after-restore", "ok", None).await.unwrap();
    });
}
