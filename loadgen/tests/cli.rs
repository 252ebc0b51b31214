//! dr-loadgen as operators and the drill run it: the binary against real etcd on loopback.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, free_port, output_within};
use serde_json::Value;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dr-loadgen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the process at most `limit`; kills it and fails the test past that.
fn finish(child: Child, limit: Duration) -> Output {
    output_within(child, limit).unwrap_or_else(|err| panic!("dr-loadgen: {err:#}"))
}

fn run(args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let output = finish(spawn(args), limit);
    (output, started.elapsed())
}

/// The `--json` summary of a run that exited 0.
fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {}; stdout: {stdout}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn etcd(quota_backend_bytes: Option<u64>, tls: bool) -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 1,
        quota_backend_bytes,
        tls,
        ..EtcdOptions::default()
    })
    .unwrap()
}

fn keys_under(etcd: &EtcdCluster, prefix: &str) -> Vec<String> {
    etcd.etcdctl(&["get", prefix, "--prefix", "--keys-only"])
        .unwrap()
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn revision(etcd: &EtcdCluster) -> i64 {
    let status: Value =
        serde_json::from_str(&etcd.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap())
            .unwrap();
    status[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

#[test]
fn version_and_help_answer_without_etcd() {
    let (output, _) = run(&["--version"], Duration::from_secs(10));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("dr-loadgen {}", env!("CARGO_PKG_VERSION"))
    );
    let (output, _) = run(&["--help"], Duration::from_secs(10));
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for scenario in ["steady", "bigkey", "churn"] {
        assert!(
            help.contains(scenario),
            "--help does not list {scenario}: {help}"
        );
    }
}

#[test]
fn steady_holds_its_rate_and_writes_under_the_prefix() {
    let etcd = etcd(None, false);
    let endpoints = etcd.client_endpoints().join(",");
    let (output, elapsed) = run(
        &[
            "--endpoints",
            &endpoints,
            "steady",
            "--rate",
            "100",
            "--duration",
            "3s",
            "--seed",
            "1",
            "--json",
        ],
        Duration::from_secs(20),
    );
    let s = summary(&output);
    assert_eq!(s["scenario"], "steady");
    assert_eq!(s["stop_reason"], "duration");
    assert_eq!(s["nospace"], false);
    assert_eq!(s["seed"], 1);
    assert_eq!(s["errors_total"], 0, "{s}");
    let ops = s["operations_total"].as_u64().unwrap();
    // Within 20%: the schedule is fixed, but two busy cores can delay the first slots.
    assert!(
        (240..=360).contains(&ops),
        "{ops} operations for 100/s over 3s: {s}"
    );
    for kind in ["get", "put", "range", "delete", "lease_grant"] {
        assert!(
            s["operations"][kind].as_u64().unwrap() > 0,
            "no {kind}: {s}"
        );
    }
    assert!(s["bytes_written"].as_u64().unwrap() > 1024);
    assert!(s["watch_events"].as_u64().unwrap() > 0, "{s}");
    let latency = &s["latency_ms"];
    let p = |name: &str| latency[name].as_f64().unwrap();
    assert!(0.0 < p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"));
    assert!(s["revision"]["end"].as_i64() > s["revision"]["start"].as_i64());
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    // Not a terminal: no in-place progress line.
    assert!(!String::from_utf8_lossy(&output.stderr).contains('\r'));

    let keys = keys_under(&etcd, "/dr-loadgen/steady/");
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("/dr-loadgen/steady/")));
    assert!(keys.len() <= 1000, "the key space is bounded by --keys");
}

#[test]
fn steady_stops_cleanly_on_sigterm_and_still_reports() {
    let etcd = etcd(None, false);
    let endpoints = etcd.client_endpoints().join(",");
    let child = spawn(&[
        "--endpoints",
        &endpoints,
        "--json",
        "steady",
        "--duration",
        "60s",
    ]);
    sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let s = summary(&finish(child, Duration::from_secs(15)));
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    assert_eq!(s["stop_reason"], "interrupted");
    assert!(s["operations_total"].as_u64().unwrap() > 0);
    assert!(s["elapsed_seconds"].as_f64().unwrap() < 10.0);
}

#[test]
fn bigkey_fills_the_quota_and_reports_nospace() {
    let etcd = etcd(Some(8 << 20), false);
    let endpoints = etcd.client_endpoints().join(",");
    let (output, elapsed) = run(
        &[
            "--endpoints",
            &endpoints,
            "--json",
            "bigkey",
            "--value-size",
            "256KiB",
            "--rate",
            "50",
            "--duration",
            "30s",
            "--max-bytes",
            "64MiB",
        ],
        Duration::from_secs(45),
    );
    let s = summary(&output);
    assert_eq!(s["stop_reason"], "nospace", "{s}");
    assert_eq!(s["nospace"], true);
    assert!(s["errors"]["nospace"].as_u64().unwrap() >= 1);
    let puts = s["operations"]["put"].as_u64().unwrap();
    assert!(
        (10..=40).contains(&puts),
        "{puts} puts of 256 KiB into an 8 MiB quota"
    );
    assert!(s["db_size_bytes"]["end"].as_i64().unwrap() > 4 << 20);
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("panicked"));

    let alarms = etcd.etcdctl(&["alarm", "list"]).unwrap();
    assert!(alarms.contains("NOSPACE"), "alarm list: {alarms}");
    // Every put a new key. A put etcd applied can still be answered with an error (the one
    // that crosses the quota, or one past its deadline on a loaded machine), so up to one
    // key per concurrent task (4 by default) may exist beyond the successful puts.
    let keys = keys_under(&etcd, "/dr-loadgen/bigkey/").len() as u64;
    assert!(
        (puts..=puts + 4).contains(&keys),
        "{keys} keys for {puts} successful puts: every put a new key"
    );
}

#[test]
fn bigkey_overwrite_rewrites_fixed_keys_until_the_byte_budget() {
    let etcd = etcd(None, false);
    let endpoints = etcd.client_endpoints().join(",");
    let (output, _) = run(
        &[
            "--endpoints",
            &endpoints,
            "bigkey",
            "--overwrite",
            "--keys",
            "4",
            "--value-size",
            "64KiB",
            "--max-bytes",
            "1MiB",
            "--rate",
            "100",
            "--duration",
            "20s",
            "--json",
        ],
        Duration::from_secs(30),
    );
    let s = summary(&output);
    assert_eq!(s["stop_reason"], "max_bytes", "{s}");
    // 1 MiB holds 15 writes of a 64 KiB value and its key.
    assert_eq!(s["operations"]["put"], 15, "{s}");
    assert!(s["bytes_written"].as_u64().unwrap() <= 1 << 20);
    assert_eq!(keys_under(&etcd, "/dr-loadgen/bigkey/").len(), 4);
}

#[test]
fn churn_grows_the_revision_not_the_key_count_over_tls() {
    let etcd = etcd(None, true);
    let tls = etcd.tls().unwrap();
    let endpoints = etcd.client_endpoints().join(",");
    let before = revision(&etcd);
    let (output, _) = run(
        &[
            "--endpoints",
            &endpoints,
            "--cacert",
            tls.ca_cert.to_str().unwrap(),
            "--cert",
            tls.client_cert.to_str().unwrap(),
            "--key",
            tls.client_key.to_str().unwrap(),
            "churn",
            "--keys",
            "5",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--json",
        ],
        Duration::from_secs(20),
    );
    let s = summary(&output);
    assert_eq!(s["errors_total"], 0, "{s}");
    let puts = s["operations"]["put"].as_i64().unwrap();
    assert!((320..=440).contains(&puts), "{puts} puts for 200/s over 2s");
    // One revision per put: the puts in flight at the deadline finish and are counted.
    assert_eq!(revision(&etcd) - before, puts);
    assert_eq!(
        s["revision"]["end"].as_i64().unwrap() - s["revision"]["start"].as_i64().unwrap(),
        puts
    );
    assert_eq!(keys_under(&etcd, "/dr-loadgen/churn/").len(), 5);
}

#[test]
fn bad_flags_exit_2_with_one_line_at_once() {
    for args in [
        &["steady"][..],
        &["--endpoints", "http://127.0.0.1:1", "steady", "--rate", "0"],
        &[
            "--endpoints",
            "http://127.0.0.1:1",
            "steady",
            "--duration",
            "soon",
        ],
        &[
            "--endpoints",
            "http://127.0.0.1:1",
            "bigkey",
            "--value-size",
            "1XB",
        ],
        &["--endpoints", "http://127.0.0.1:1", "churn", "--bogus"],
        &["--endpoints", "http://127.0.0.1:1", "sideways"],
        &["--endpoints", "127.0.0.1:2379", "steady"],
    ] {
        let (output, elapsed) = run(args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("dr-loadgen: "), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
        assert!(
            elapsed < Duration::from_secs(3),
            "{args:?} took {elapsed:?}"
        );
    }
}

#[test]
fn unreachable_etcd_fails_within_seconds() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let (output, elapsed) = run(
        &["--endpoints", &endpoint, "steady", "--duration", "60s"],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach etcd at {endpoint}")),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}
