//! The service as deployed: scheduled snapshots with retention on a real etcd, the ops
//! endpoints over real HTTP, a clean drain on shutdown, and the binary's exit codes.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use dr_remediator::actions::snapshot;
use dr_remediator::audit::{Phase, read_all};
use dr_remediator::config::{Args, Config};
use dr_testkit::{
    ChildGuard, EtcdCluster, EtcdOptions, EtcdVersion, etcdctl_binary, free_port, http_get,
};
use support::{assert_success, run_binary, runtime};

#[test]
fn scheduled_snapshots_are_verified_retained_and_counted() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        ..EtcdOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    etcd.etcdctl(&["put", "k", "v"]).unwrap();
    let rt = runtime();
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
    let server = rt.spawn(dr_remediator::serve::run(config, listener, async move {
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
    assert_success(
        &std::process::Command::new(etcdctl_binary().unwrap())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", kept[0].to_str().unwrap()])
            .output()
            .unwrap(),
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
    // Several snapshots were taken; the limit keeps the newest one.
    let actions: serde_json::Value = serde_json::from_str(&actions).unwrap();
    assert_eq!(actions["actions"].as_array().unwrap().len(), 1, "{actions}");

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
fn version_and_help_answer_without_etcd() {
    let output = run_binary(&["--version"]);
    assert_success(&output);
    let version = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        version.trim(),
        format!("dr-remediator {}", env!("CARGO_PKG_VERSION"))
    );
    let output = run_binary(&["--help"]);
    assert_success(&output);
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--etcd-endpoints",
        "--webhook-token-file",
        "--restore-preset",
        "--kubeadm-manifest",
    ] {
        assert!(
            help.contains(flag),
            "--help does not document {flag}: {help}"
        );
    }
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let output = run_binary(&["--etcd-endpoints", "ftp://x", "--snapshot-dir", "/tmp"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("want an http"), "{stderr}");
}

#[test]
fn a_listen_address_in_use_exits_2_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let output = run_binary(&[
        "--etcd-endpoints",
        &nowhere,
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("dr-remediator: cannot listen on {listen}")),
        "{stderr}"
    );
}

#[test]
fn sigterm_drains_and_exits_0_even_without_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dr-remediator"));
    cmd.args(["--etcd-endpoints"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--snapshot-dir")
        .arg(dir.path())
        .args(["--listen", &listen, "--etcd-timeout", "1s"]);
    let mut guard =
        ChildGuard::spawn("dr-remediator", cmd, &dir.path().join("log"), false).unwrap();
    let base = format!("http://{listen}");
    guard
        .wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(20))
        .unwrap();
    // Alive, but not ready: it says what it waits for.
    let (code, body) = http_get(&format!("{base}/readyz")).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd"), "{body}");
    let started = Instant::now();
    let status = guard.stop().unwrap().expect("the remediator was running");
    assert!(
        status.success(),
        "SIGTERM should drain and exit 0, got {status:?}: {}",
        guard.log_tail(20)
    );
    // Not the 15 s readiness pause, nor the drain deadline: nothing was under way.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn snapshot_once_writes_one_verified_snapshot_and_exits_0() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    etcd.etcdctl(&["put", "k", "v"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = run_binary(&[
        "--snapshot-once",
        "--etcd-endpoints",
        &etcd.client_endpoints().join(","),
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_success(&output);
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
    let output = run_binary(&[
        "--snapshot-once",
        "--etcd-endpoints",
        &etcd.client_endpoints().join(","),
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
        "--cacert",
        tls.ca_cert.to_str().unwrap(),
        "--cert",
        tls.client_cert.to_str().unwrap(),
        "--key",
        tls.client_key.to_str().unwrap(),
    ]);
    assert_success(&output);
    assert_eq!(snapshot::list(dir.path()).unwrap().len(), 1);
}
