//! etcd 3.4 and 3.6 through the harness: data round trips, metrics, quorum, TLS, cleanup.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dr_testkit::{
    EtcdCluster, EtcdOptions, EtcdVersion, generate_unrelated_ca, http_get, pid_alive, run_within,
};

/// etcdctl and curl give up on their own well within this.
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn single_etcd_3_4_round_trip_metrics_and_cleanup() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        quota_backend_bytes: Some(64 * 1024 * 1024),
        ..EtcdOptions::default()
    })
    .unwrap();
    assert_eq!(etcd.client_endpoints().len(), 1);

    etcd.etcdctl(&["put", "dr/key", "value-1"]).unwrap();
    let got = etcd
        .etcdctl(&["get", "dr/key", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "value-1");

    let (status, body) = http_get(&format!("{}/metrics", etcd.metrics_urls()[0])).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("etcd_mvcc_db_total_size_in_bytes"));
    assert!(body.contains("etcd_server_quota_backend_bytes 6.7108864e+07"));

    let pid = etcd.pid(0).unwrap();
    let dir = etcd.workdir().to_path_buf();
    drop(etcd);
    assert!(!pid_alive(pid), "etcd pid {pid} still alive after drop");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn three_member_etcd_3_6_keeps_quorum_with_one_member_down() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let status = etcd
        .etcdctl(&["endpoint", "status", "--write-out=simple"])
        .unwrap();
    assert_eq!(status.lines().count(), 3, "{status}");
    assert!(status.contains("3.6."), "{status}");

    etcd.stop_member(1).unwrap();
    assert!(!etcd.is_running(1));
    // Talk to the two live members only; a dead endpoint would slow etcdctl down.
    let live = format!(
        "--endpoints={},{}",
        etcd.member(0).client_url,
        etcd.member(2).client_url
    );
    etcd.etcdctl(&[&live, "put", "quorum", "yes"]).unwrap();
    etcd.wait_healthy(Duration::from_secs(20)).unwrap();

    etcd.start_member(1).unwrap();
    etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    let one = format!("--endpoints={}", etcd.member(1).client_url);
    let got = etcd
        .etcdctl(&[&one, "get", "quorum", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "yes");
}

#[test]
fn etcd_with_tls_requires_the_client_certificate() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        tls: true,
        metrics_tls: true,
        ..EtcdOptions::default()
    })
    .unwrap();
    let tls = etcd.tls().unwrap().clone();
    assert!(etcd.client_endpoints()[0].starts_with("https://127.0.0.1:"));

    etcd.etcdctl(&["put", "tls", "ok"]).unwrap();

    // Same CA, no client certificate: the handshake is refused.
    let out = run_within(
        Command::new(dr_testkit::etcdctl_binary().unwrap())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.client_endpoints()[0]))
            .arg(format!("--cacert={}", tls.ca_cert.display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "tls"]),
        LIMIT,
    )
    .unwrap();
    assert!(
        !out.status.success(),
        "etcdctl without client cert succeeded"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("deadline"),
        "{stderr}"
    );

    // A client certificate from an unrelated CA is refused too.
    let other = generate_unrelated_ca(etcd.workdir(), "other").unwrap();
    let out = run_within(
        Command::new(dr_testkit::etcdctl_binary().unwrap())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.client_endpoints()[0]))
            .arg(format!("--cacert={}", tls.ca_cert.display()))
            .arg(format!("--cert={}", other.client_cert.display()))
            .arg(format!("--key={}", other.client_key.display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "tls"]),
        LIMIT,
    )
    .unwrap();
    assert!(
        !out.status.success(),
        "etcdctl with a foreign client cert succeeded"
    );

    // /metrics over https with the client certificate, on the client port and on the
    // https metrics listener (what the collector's mTLS test scrapes).
    let m = etcd.member(0);
    assert!(m.metrics_url.starts_with("https://"));
    for url in [m.client_metrics_url(), format!("{}/metrics", m.metrics_url)] {
        let with_cert = curl(
            &url,
            &tls.ca_cert,
            Some((&tls.client_cert, &tls.client_key)),
        );
        assert!(
            with_cert.contains("etcd_mvcc_db_total_size_in_bytes"),
            "{url}: {with_cert}"
        );
        let without = curl(&url, &tls.ca_cert, None);
        assert!(
            !without.contains("etcd_mvcc_db_total_size_in_bytes"),
            "{url} served without a cert"
        );
    }

    // The http health listener stays open for readiness checks.
    let (status, body) = http_get(&m.health_url).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""health":"true""#), "{body}");
}

/// `curl` output (stdout, or stderr on failure).
fn curl(url: &str, ca: &Path, cert_key: Option<(&Path, &Path)>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "--cacert"]).arg(ca);
    if let Some((cert, key)) = cert_key {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = run_within(cmd.arg(url), LIMIT).expect("curl is installed");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn etcd_3_4_with_tls_serves_metrics_on_the_client_port() {
    let etcd = EtcdCluster::start(EtcdOptions {
        tls: true,
        ..EtcdOptions::default()
    })
    .unwrap();
    let tls = etcd.tls().unwrap();
    etcd.etcdctl(&["put", "tls34", "ok"]).unwrap();
    let url = etcd.member(0).client_metrics_url();
    let body = curl(
        &url,
        &tls.ca_cert,
        Some((&tls.client_cert, &tls.client_key)),
    );
    assert!(
        body.contains("etcd_mvcc_db_total_size_in_bytes"),
        "{url}: {body}"
    );
}
