//! The service as deployed: scheduled snapshots with retention on a real etcd, the ops
//! endpoints over real HTTP, a clean drain on shutdown, and the binary's exit codes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use dr_remediator::actions::snapshot;
use dr_remediator::audit::{Phase, read_all};
use dr_remediator::config::{Args, Config};
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, etcdctl_binary, http_get};

#[test]
fn scheduled_snapshots_are_verified_retained_and_counted() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        ..EtcdOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    etcd.etcdctl(&["put", "k", "v"]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoints = etcd.client_endpoints().join(",");
    let args = Args::try_parse_from([
        "dr-remediator",
        "--etcd-endpoints",
        &endpoints,
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
        "--snapshot-interval",
        "1s",
        "--snapshot-retain",
        "2",
    ])
    .unwrap();
    let config = Config::from_args(args).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(dr_remediator::service::run(config, listener, async move {
        let _ = stop_rx.await;
    }));

    let audit = dir.path().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = read_all(&audit)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.kind == "scheduled_snapshot" && e.phase == Phase::Ok)
            .count();
        if done >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} scheduled snapshots");
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = snapshot::list(dir.path()).unwrap();
    assert_eq!(kept.len(), 2, "retention: {kept:?}");
    // etcdctl agrees the files are good snapshots.
    let status = std::process::Command::new(etcdctl_binary().unwrap())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", kept[0].to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let (code, _) = http_get(&format!("{base}/readyz")).unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = http_get(&format!("{base}/metrics")).unwrap();
    assert!(
        metrics.contains("etcd_dr_last_snapshot_timestamp_seconds 1"),
        "{metrics}"
    );
    let (code, actions) = http_get(&format!("{base}/actions?limit=1")).unwrap();
    assert_eq!(code, 200);
    assert!(actions.contains("scheduled_snapshot"), "{actions}");

    stop_tx.send(()).unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
        .args(["--etcd-endpoints", "ftp://x", "--snapshot-dir", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("want an http"), "{stderr}");
}

#[test]
fn snapshot_once_writes_one_verified_snapshot_and_exits_0() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    etcd.etcdctl(&["put", "k", "v"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
        .args(["--snapshot-once", "--etcd-endpoints"])
        .arg(etcd.client_endpoints().join(","))
        .arg("--snapshot-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let path = info["path"].as_str().unwrap();
    let (size, digest) = snapshot::verify_file(std::path::Path::new(path)).unwrap();
    assert_eq!(info["size_bytes"], size);
    assert_eq!(info["sha256"], digest);
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".part"))
    );
}

#[test]
fn snapshot_over_mutual_tls() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        tls: true,
        ..EtcdOptions::default()
    })
    .unwrap();
    let tls = etcd.tls().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
        .args(["--snapshot-once", "--etcd-endpoints"])
        .arg(etcd.client_endpoints().join(","))
        .arg("--snapshot-dir")
        .arg(dir.path())
        .arg("--cacert")
        .arg(&tls.ca_cert)
        .arg("--cert")
        .arg(&tls.client_cert)
        .arg("--key")
        .arg(&tls.client_key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(snapshot::list(dir.path()).unwrap().len(), 1);
}
