//! Fault drills on a real etcd (issue 18): things break *during* the repair. Each test
//! asserts the remediator's reaction, that every key written before the fault is there
//! afterwards (count and a SHA-256 over keys and values) and that the audit log tells the
//! story in order. The numbers each test prints (`fault-drill: ...`) are the ones in
//! docs/faults.md.
//!
//! Run: `cargo test -p dr-remediator --test faults -- --nocapture`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dr_remediator::audit::{Event, Phase, read_all};
use dr_testkit::{
    ChildGuard, EtcdCluster, EtcdOptions, EtcdVersion, Prometheus, Tmpfs, free_port, http_get,
    http_post,
};
use etcd_client::{Client, GetOptions};
use serde_json::{Value, json};
use support::{client, firing_space, remediator, runtime, step};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A cluster of the vendored etcd 3.6 (always there, and it has
/// `etcd_disk_defrag_inflight`).
fn etcd(members: usize) -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members,
        ..EtcdOptions::default()
    })
    .unwrap()
}

/// The space alert with a fingerprint of its own (no cooldown joins two runs).
fn space_alert(fingerprint: &str) -> String {
    firing_space().replace("f146eb540a7ae47b", fingerprint)
}

/// (count, SHA-256 over every key and value) under `seed/`, read one key at a time (a
/// whole prefix of megabyte values is past gRPC's message limit).
async fn checksum(c: &mut Client) -> (usize, Vec<u8>) {
    let keys = c
        .get(
            "seed/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for kv in keys.kvs() {
        let found = c.get(kv.key(), None).await.unwrap();
        let value = found.kvs().first().unwrap();
        context.update(value.key());
        context.update(value.value());
    }
    (keys.kvs().len(), context.finish().as_ref().to_vec())
}

/// `keys` live keys under `seed/` of `size` bytes each, every value different: a db whose
/// snapshot and defrag take a while. Returns their [`checksum`].
async fn seed(endpoints: &[String], keys: usize, size: usize) -> (usize, Vec<u8>) {
    let mut c = client(endpoints).await;
    for i in 0..keys {
        let mut value = format!("{i:08}-").into_bytes();
        value.resize(size, b'a' + (i % 26) as u8);
        c.put(format!("seed/{i:04}"), value, None).await.unwrap();
    }
    let found = checksum(&mut c).await;
    assert_eq!(found.0, keys);
    found
}

/// (count, digest) of the seeded keys as each member serves them.
async fn seeded_on_each(endpoints: &[String]) -> Vec<(usize, Vec<u8>)> {
    let mut all = Vec::new();
    for endpoint in endpoints {
        let mut c = Client::connect([endpoint], None).await.unwrap();
        all.push(checksum(&mut c).await);
    }
    all
}

/// Waits (bounded, polling) until `probe` gives a value.
fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The audit log of `dir` (every line whole).
fn audit(dir: &Path) -> Vec<Event> {
    let path = dir.join("audit.jsonl");
    if path.exists() {
        read_all(&path).unwrap()
    } else {
        Vec::new()
    }
}

fn events_of(dir: &Path, id: &str) -> Vec<Event> {
    audit(dir)
        .into_iter()
        .filter(|e| e.action_id == id)
        .collect()
}

/// Fails unless `story` happens in `events` in this order (other events may come between).
fn assert_story(events: &[Event], story: &[(&str, Phase)]) {
    let mut at = 0;
    for (wanted, phase) in story {
        match events[at..]
            .iter()
            .position(|e| e.step == *wanted && e.phase == *phase)
        {
            Some(found) => at += found + 1,
            None => panic!("the audit log has no {wanted} {phase:?} after event {at}: {events:#?}"),
        }
    }
}

/// True while member `metrics_url` reports a defrag in flight.
fn defrag_inflight(metrics_url: &str) -> bool {
    http_get(&format!("{metrics_url}/metrics")).is_ok_and(|(status, body)| {
        status == 200
            && body
                .lines()
                .any(|l| l.starts_with("etcd_disk_defrag_inflight ") && l.ends_with(" 1"))
    })
}

fn member_index(etcd: &EtcdCluster, name: &str) -> usize {
    (0..etcd.len())
        .find(|&i| etcd.member(i).name == name)
        .unwrap()
}

/// The member whose defrag started first in run `id`, once etcd reports it in flight:
/// (index, name). Fails if the defrag ends before it could be caught.
fn catch_first_defrag(etcd: &EtcdCluster, dir: &Path, id: &str) -> (usize, String) {
    let name = wait_for(RUN_TIMEOUT, "the first defrag to start", || {
        events_of(dir, id)
            .iter()
            .find(|e| e.step.starts_with("defrag ") && e.phase == Phase::Start)
            .map(|e| e.step.trim_start_matches("defrag ").to_owned())
    });
    let i = member_index(etcd, &name);
    let metrics = etcd.member(i).metrics_url.clone();
    wait_for(Duration::from_secs(60), "the defrag in flight", || {
        let ended = events_of(dir, id)
            .iter()
            .any(|e| e.step == format!("defrag {name}") && e.phase != Phase::Start);
        assert!(!ended, "the defrag of {name} ended before it was caught");
        defrag_inflight(&metrics).then_some(())
    });
    (i, name)
}

/// Returns once the last run let go of its slot (it does after its `finished` event).
fn idle(rt: &tokio::runtime::Runtime, r: &support::Remediator) {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), r.app.gate.idle())
            .await
            .expect("the run never let go of its slot");
    });
}

/// Index of the member that leads now.
async fn leader_index(endpoints: &[String]) -> usize {
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut c = Client::connect([endpoint], None).await.unwrap();
        let status = c.status().await.unwrap();
        if status.header().unwrap().member_id() == status.leader() {
            return i;
        }
    }
    panic!("no member leads");
}

/// `endpoints` with the leader's first: a client sends to the first that answers.
fn leader_first(endpoints: &[String], leader: usize) -> Vec<String> {
    let mut ordered = vec![endpoints[leader].clone()];
    ordered.extend(
        endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, e)| e.clone()),
    );
    ordered
}

fn metric_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

// 1. A member killed (SIGKILL) in the middle of its own defrag.
/// The run after the fault is over: a new alert (its own fingerprint, so no cooldown),
/// every member defragmented, healthy, and the keys of `before` on every member. Its
/// events and each member's keys.
fn next_run_repairs(
    rt: &tokio::runtime::Runtime,
    r: &support::Remediator,
    fingerprint: &str,
    endpoints: &[String],
    before: &(usize, Vec<u8>),
) -> (Vec<Event>, Vec<(usize, Vec<u8>)>) {
    idle(rt, r);
    let (status, body) = rt.block_on(r.post(&space_alert(fingerprint), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["action_id"].as_str().unwrap().to_owned();
    let events = rt.block_on(r.wait_finished(&id, RUN_TIMEOUT));
    let defragged = events
        .iter()
        .filter(|e| e.step.starts_with("defrag ") && e.phase == Phase::Ok)
        .count();
    assert_eq!(defragged, 3, "{events:#?}");
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "healthy"
    );
    let after = rt.block_on(seeded_on_each(endpoints));
    assert!(after.iter().all(|a| a == before), "keys lost or changed");
    (events, after)
}

#[test]
fn a_member_killed_in_its_defrag_stops_the_repair_and_the_next_run_completes() {
    let mut etcd = etcd(3);
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let flags = ["--health-wait", "1s", "--etcd-timeout", "2s"];
    let r = remediator(&endpoints, dir.path(), &flags);
    let before = rt.block_on(seed(&endpoints, 40, 1 << 20));
    let (status, body) = rt.block_on(r.post(&space_alert("fault-defrag-1"), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = body["action_id"].as_str().unwrap().to_owned();

    let (victim, name) = catch_first_defrag(&etcd, dir.path(), &first);
    let killed = Instant::now();
    etcd.kill_member(victim).unwrap();
    let events = rt.block_on(r.wait_finished(&first, RUN_TIMEOUT));
    let stopped_after = killed.elapsed();

    let victim_step = format!("defrag {name}");
    assert_story(
        &events,
        &[
            ("accepted", Phase::Info),
            ("snapshot", Phase::Ok),
            ("compact", Phase::Ok),
            (&victim_step, Phase::Start),
            (&victim_step, Phase::Failed),
            ("verify", Phase::Ok),
            ("finished", Phase::Info),
        ],
    );
    // Why it stopped is recorded, and no other member was defragmented meanwhile.
    let failed = step(&events, &victim_step, Phase::Failed).unwrap();
    assert!(
        failed.detail.as_str().unwrap().contains("defrag"),
        "{failed:?}"
    );
    let others: Vec<_> = events
        .iter()
        .filter(|e| e.step.starts_with("defrag ") && e.step != victim_step)
        .collect();
    assert_eq!(others.len(), 2, "{events:#?}");
    assert!(
        others.iter().all(|e| e.phase == Phase::Skipped
            && e.detail.as_str().unwrap().contains(&victim_step)),
        "{others:#?}"
    );
    let verify = step(&events, "verify", Phase::Ok).unwrap();
    assert_eq!(verify.detail["verdict"], "degraded", "{verify:?}");
    let why: String = failed.detail.as_str().unwrap().chars().take(160).collect();
    let (_, metrics) = rt.block_on(r.get("/metrics"));
    assert!(
        metric_line(
            metrics.as_str().unwrap(),
            "etcd_dr_defrag_total{result=\"failure\"} 1"
        ),
        "{metrics}"
    );

    // The member comes back; the next run repairs the whole cluster.
    etcd.start_member(victim).unwrap();
    etcd.wait_healthy(Duration::from_secs(60)).unwrap();
    let (_, after) = next_run_repairs(&rt, &r, "fault-defrag-2", &endpoints, &before);
    let recovered = killed.elapsed();
    eprintln!(
        "fault-drill: member killed mid-defrag ({why}): keys {} before, {:?} after on each member; run stopped {:.1}s after the kill; healthy and repaired {:.1}s after it",
        before.0,
        after.iter().map(|a| a.0).collect::<Vec<_>>(),
        stopped_after.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

// 2. The leader killed (SIGKILL) while it compacts.
#[test]
fn the_leader_killed_during_compaction_stops_the_repair_and_the_next_run_completes() {
    let mut etcd = etcd(3);
    let endpoints = etcd.client_endpoints();
    let rt = runtime();
    let leader = rt.block_on(leader_index(&endpoints));
    // The leader first: the compaction goes to it.
    let ordered = leader_first(&endpoints, leader);
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--health-wait", "1s", "--etcd-timeout", "2s"];
    let r = remediator(&ordered, dir.path(), &flags);
    let before = rt.block_on(async {
        let before = seed(&endpoints, 200, 1024).await;
        // History for the compaction to walk: 40,000 old revisions in transactions of 128.
        let mut c = client(&endpoints).await;
        for round in 0..320 {
            let puts: Vec<_> = (0..128)
                .map(|k| {
                    etcd_client::TxnOp::put(format!("history/{k:03}"), format!("{round}"), None)
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(puts)).await.unwrap();
        }
        before
    });
    let log = etcd.member(leader).log_path.clone();
    let logged = std::fs::read_to_string(&log).unwrap().len();
    let (status, body) = rt.block_on(r.post(&space_alert("fault-compact-1"), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = body["action_id"].as_str().unwrap().to_owned();
    // etcd logs "compact tree index" when the compaction begins on the leader.
    wait_for(RUN_TIMEOUT, "the leader to begin compacting", || {
        let ended = events_of(dir.path(), &first)
            .iter()
            .any(|e| e.step == "compact" && e.phase != Phase::Start);
        assert!(
            !ended,
            "the compaction ended before the leader could be killed"
        );
        let text = std::fs::read_to_string(&log).ok()?;
        text.get(logged..)?
            .contains("compact tree index")
            .then_some(())
    });
    let killed = Instant::now();
    etcd.kill_member(leader).unwrap();
    let events = rt.block_on(r.wait_finished(&first, RUN_TIMEOUT));
    let stopped_after = killed.elapsed();
    assert_story(
        &events,
        &[
            ("accepted", Phase::Info),
            ("snapshot", Phase::Ok),
            ("compact", Phase::Start),
            ("compact", Phase::Failed),
            ("verify", Phase::Ok),
            ("finished", Phase::Info),
        ],
    );
    let defrags: Vec<_> = events
        .iter()
        .filter(|e| e.step.starts_with("defrag "))
        .collect();
    assert!(
        defrags.len() == 3
            && defrags.iter().all(|e| e.phase == Phase::Skipped
                && e.detail.as_str().unwrap().contains("compact failed")),
        "{defrags:#?}"
    );
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "degraded"
    );
    let why: String = step(&events, "compact", Phase::Failed)
        .unwrap()
        .detail
        .to_string()
        .chars()
        .take(160)
        .collect();

    etcd.start_member(leader).unwrap();
    etcd.wait_healthy(Duration::from_secs(60)).unwrap();
    let (events, after) = next_run_repairs(&rt, &r, "fault-compact-2", &endpoints, &before);
    let recovered = killed.elapsed();
    assert!(step(&events, "compact", Phase::Ok).is_some(), "{events:#?}");
    eprintln!(
        "fault-drill: leader killed mid-compaction ({why}): keys {} before, {:?} after on each member; run stopped {:.1}s after the kill; healthy and repaired {:.1}s after it",
        before.0,
        after.iter().map(|a| a.0).collect::<Vec<_>>(),
        stopped_after.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

/// The health check right after the leader dies: the two survivors answer but take no
/// write until they elect a new leader. That is an election, not a lost cluster, so the
/// verdict must be `degraded` (a restore follows `unavailable`).
#[test]
fn the_health_check_waits_for_an_election_instead_of_calling_the_cluster_unavailable() {
    let mut etcd = etcd(3);
    let endpoints = etcd.client_endpoints();
    let rt = runtime();
    let leader = rt.block_on(leader_index(&endpoints));
    // The dead leader first, as the remediator's endpoint list may well have it.
    let access = dr_remediator::etcd::EtcdAccess {
        endpoints: leader_first(&endpoints, leader),
        tls: None,
        timeout: Duration::from_millis(300),
        default_quota_bytes: 1 << 31,
    };
    etcd.kill_member(leader).unwrap();
    let started = Instant::now();
    let health = rt.block_on(dr_remediator::actions::verify::check(&access, "election"));
    match health {
        dr_remediator::actions::verify::Health::Degraded(why) => {
            assert!(why.contains("etcd-"), "{why}");
        }
        other => panic!("verdict {other:?}, expected degraded"),
    }
    assert!(started.elapsed() < dr_remediator::actions::verify::ELECTION_SETTLE);
}

/// A stand-in detector whose `/score` asks the real Prometheus, as dr-detector does: it
/// confirms while Prometheus answers and answers 503 when it cannot be reached (the
/// detector's documented answer). Its base URL and the task serving it.
async fn detector_over(prometheus: String) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/score",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            async move {
                let url = format!("{prometheus}/api/v1/query?query=up");
                let asked = reqwest::Client::new()
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match asked {
                    Ok(answer) if answer.status().is_success() => (
                        StatusCode::OK,
                        axum::Json(json!({"score": 9.0, "threshold": 1.0, "anomalous": true})),
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"error": "Prometheus cannot be reached"})),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

// 3. Prometheus stopped during a remediation, then the detector stopped.
#[test]
fn prometheus_stopped_mid_run_and_a_detector_gone_refuse_new_runs_and_record_why() {
    let etcd = etcd(1);
    let endpoints = etcd.client_endpoints();
    let scrape = format!(
        "- job_name: etcd\n  static_configs:\n  - targets: ['{}']\n",
        etcd.member(0).metrics_url.trim_start_matches("http://")
    );
    let prometheus = Prometheus::start(&scrape, &[], Duration::from_secs(1), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (detector, detector_task) = rt.block_on(detector_over(prometheus.url()));
    let flags = [
        "--health-wait",
        "1s",
        "--etcd-timeout",
        "2s",
        "--detector-url",
        &detector,
    ];
    let r = remediator(&endpoints, dir.path(), &flags);
    let before = rt.block_on(seed(&endpoints, 20, 100 * 1024));
    let (status, body) = rt.block_on(r.post(&space_alert("fault-prom-1"), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = body["action_id"].as_str().unwrap().to_owned();
    rt.block_on(r.wait_step(&first, "snapshot", Phase::Start, RUN_TIMEOUT));
    // Prometheus goes away mid-run: the confirmed run needs nothing more from it.
    let stopped = Instant::now();
    drop(prometheus);
    let events = rt.block_on(r.wait_finished(&first, RUN_TIMEOUT));
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "healthy",
        "{events:#?}"
    );
    let snapshots = r.snapshots().len();

    // Without Prometheus the detector cannot score: the next alert is not confirmed.
    idle(&rt, &r);
    let (status, body) = rt.block_on(r.post(&space_alert("fault-prom-2"), None));
    assert_eq!(status, StatusCode::OK, "{body}");
    let skipped = body["skipped"].as_str().unwrap();
    assert!(
        skipped.starts_with("not confirmed: detector answered 503"),
        "{skipped}"
    );
    // The detector itself gone: refused too, for that reason.
    detector_task.abort();
    let _ = rt.block_on(detector_task);
    let (status, body) = rt.block_on(r.post(&space_alert("fault-prom-3"), None));
    assert_eq!(status, StatusCode::OK, "{body}");
    let skipped = body["skipped"].as_str().unwrap();
    assert!(
        skipped.starts_with("not confirmed: detector unreachable"),
        "{skipped}"
    );

    // Recorded, in order, and nothing else ran.
    let all = audit(dir.path());
    let decisions: Vec<_> = all
        .iter()
        .filter(|e| e.kind == "webhook" && e.step == "decide")
        .collect();
    assert_eq!(decisions.len(), 2, "{all:#?}");
    assert!(decisions[0].detail.as_str().unwrap().contains("503"));
    assert!(
        decisions[1]
            .detail
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    assert_eq!(
        all.iter().filter(|e| e.step == "accepted").count(),
        1,
        "{all:#?}"
    );
    assert_eq!(
        r.snapshots().len(),
        snapshots,
        "a refused alert took a snapshot"
    );
    let after = rt.block_on(seeded_on_each(&endpoints));
    assert_eq!(after, vec![before.clone()]);
    eprintln!(
        "fault-drill: Prometheus stopped mid-run, detector stopped: keys {} before, {} after; the run in flight finished {:.1}s after Prometheus stopped; 2 alerts refused, 0 actions",
        before.0,
        after[0].0,
        stopped.elapsed().as_secs_f64()
    );
}

// 4. The snapshot dir's file system full.
#[test]
fn a_full_snapshot_file_system_fails_cleanly_counts_it_and_the_next_run_completes() {
    let tmpfs = match Tmpfs::mount("1m") {
        Ok(t) => t,
        Err(err) => {
            // Only when the mount itself is refused (not root, no CAP_SYS_ADMIN).
            eprintln!("fault-drill: SKIPPED the full-disk drill: cannot mount a tmpfs: {err:#}");
            return;
        }
    };
    let etcd = etcd(1);
    let endpoints = etcd.client_endpoints();
    let rt = runtime();
    let dir = tmpfs.path().to_path_buf();
    let r = remediator(&endpoints, &dir, &["--health-wait", "1s"]);
    let before = rt.block_on(seed(&endpoints, 30, 100 * 1024));
    // A real Prometheus scrapes the remediator with the chart's rule on that counter.
    let target = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let router = r.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        target
    });
    let scrape = format!("- job_name: remediator\n  static_configs:\n  - targets: ['{target}']\n");
    let rule = chart_rule("EtcdDrSnapshotFailing");
    let prometheus = Prometheus::start(
        &scrape,
        &[("remediator.yml", rule.as_str())],
        Duration::from_secs(1),
        None,
    )
    .unwrap();
    prometheus
        .wait_for_query("etcd_dr_snapshot_failure_total", Duration::from_secs(30))
        .unwrap();
    let (status, body) = rt.block_on(r.post(&space_alert("fault-full-1"), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = body["action_id"].as_str().unwrap().to_owned();
    let events = rt.block_on(r.wait_finished(&first, RUN_TIMEOUT));
    assert_story(
        &events,
        &[
            ("accepted", Phase::Info),
            ("snapshot", Phase::Start),
            ("snapshot", Phase::Failed),
            ("finished", Phase::Info),
        ],
    );
    let failed = step(&events, "snapshot", Phase::Failed).unwrap();
    assert!(
        failed.detail.as_str().unwrap().contains("No space left"),
        "{failed:?}"
    );
    // Nothing touched without a snapshot; no partial file left; counted for the alert.
    assert!(
        events
            .iter()
            .all(|e| !(e.step == "compact" || e.step.starts_with("defrag "))),
        "{events:#?}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (_, metrics) = rt.block_on(r.get("/metrics"));
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metric_line(&metrics, "etcd_dr_snapshot_failure_total 1"),
        "{metrics}"
    );
    // The chart's alert on that counter fires.
    let failing = Instant::now();
    prometheus
        .wait_for_query(
            "ALERTS{alertname=\"EtcdDrSnapshotFailing\",alertstate=\"firing\"}",
            Duration::from_secs(60),
        )
        .unwrap();
    let alert_after = failing.elapsed();
    drop(prometheus);

    // Room again: the next alert repairs.
    let grown = Instant::now();
    tmpfs.resize("64m").unwrap();
    idle(&rt, &r);
    let (status, body) = rt.block_on(r.post(&space_alert("fault-full-2"), None));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let second = body["action_id"].as_str().unwrap().to_owned();
    let events = rt.block_on(r.wait_finished(&second, RUN_TIMEOUT));
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "healthy",
        "{events:#?}"
    );
    assert_eq!(r.snapshots().len(), 1);
    let after = rt.block_on(seeded_on_each(&endpoints));
    assert_eq!(after, vec![before.clone()]);
    drop(r);
    eprintln!(
        "fault-drill: snapshot file system full: keys {} before, {} after; EtcdDrSnapshotFailing firing {:.1}s after the failure was counted; repaired {:.1}s after space was back",
        before.0,
        after[0].0,
        alert_after.as_secs_f64(),
        grown.elapsed().as_secs_f64()
    );
}

/// The chart's rule `alert` (charts/dr-stack/templates/prometheusrule.yaml) as a plain
/// Prometheus rule file, its namespace matcher left out.
fn chart_rule(alert: &str) -> String {
    let chart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/dr-stack/templates/prometheusrule.yaml"),
    )
    .unwrap();
    let at = chart
        .find(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("the chart has no alert {alert}"));
    let expr = chart[at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .unwrap()
        .replace("{ {{- $ns -}} }", "");
    assert!(!expr.contains("{{"), "a template left in {expr}");
    format!("groups:\n- name: chart\n  rules:\n  - alert: {alert}\n    expr: {expr}\n")
}

/// The dr-remediator binary as a child process, killed or stopped by its PID.
struct Binary {
    guard: ChildGuard,
    base: String,
}

impl Binary {
    fn start(endpoints: &[String], dir: &Path, logs: &Path, extra: &[String]) -> Binary {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dr-remediator"));
        cmd.args([
            "--etcd-endpoints",
            &endpoints.join(","),
            "--snapshot-dir",
            &dir.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--identity",
            "fault-drill",
            "--health-wait",
            "1s",
            "--etcd-timeout",
            "2s",
        ])
        .args(extra);
        let guard =
            ChildGuard::spawn("dr-remediator", cmd, &logs.join("remediator.log"), false).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        // Served only once start-up recovery is done.
        wait_for(Duration::from_secs(60), "the remediator to serve", || {
            assert!(guard.is_running(), "{}", guard.log_tail(20));
            http_get(&format!("{base}/healthz")).ok().map(drop)
        });
        Binary { guard, base }
    }

    /// Posts the alert; the started run's id.
    fn fire(&self, fingerprint: &str) -> String {
        let (status, body) = http_post(
            &format!("{}/webhook", self.base),
            "application/json",
            space_alert(fingerprint).as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 202, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        body["action_id"].as_str().unwrap().to_owned()
    }

    fn kill(mut self) {
        self.guard.kill().unwrap();
    }
}

fn partials(dir: &Path) -> Vec<PathBuf> {
    dr_remediator::actions::snapshot::partials(dir).unwrap()
}

/// The `interrupted` event start-up recovery wrote for run `id`.
fn interrupted(dir: &Path, id: &str) -> Event {
    let events = events_of(dir, id);
    let found: Vec<_> = events.iter().filter(|e| e.step == "interrupted").collect();
    assert_eq!(found.len(), 1, "{events:#?}");
    found[0].clone()
}

// 5a, 5b. The remediator killed mid-snapshot, then (restarted) mid-defrag, then restarted.
#[test]
fn the_remediator_killed_mid_snapshot_and_mid_defrag_recovers_and_the_next_run_completes() {
    let etcd = etcd(3);
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let rt = runtime();
    let before = rt.block_on(seed(&endpoints, 40, 1 << 20));

    // Mid-snapshot: killed while the .part grows.
    let a = Binary::start(&endpoints, dir.path(), logs.path(), &[]);
    let snapshot_run = a.fire("fault-kill-1");
    let part = wait_for(RUN_TIMEOUT, "the snapshot download", || {
        partials(dir.path())
            .into_iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    let killed = Instant::now();
    a.kill();
    assert!(part.exists(), "the kill did not land mid-snapshot");
    let b = Binary::start(&endpoints, dir.path(), logs.path(), &[]);
    let recovered_snapshot = killed.elapsed();
    assert!(partials(dir.path()).is_empty(), "a .part stayed");
    let cut = interrupted(dir.path(), &snapshot_run);
    assert_eq!(cut.detail["last_step"], "snapshot", "{cut:?}");
    assert_eq!(cut.detail["last_phase"], "start", "{cut:?}");
    let recovery: Vec<_> = audit(dir.path())
        .into_iter()
        .filter(|e| e.kind == "recovery")
        .collect();
    assert!(
        recovery.iter().any(|e| e.step == "partial_snapshot"
            && e.detail["removed"] == json!(part.display().to_string())),
        "{recovery:#?}"
    );

    // Mid-defrag: the restarted process is not refused for its predecessor's lock.
    let defrag_run = b.fire("fault-kill-2");
    let (_, name) = catch_first_defrag(&etcd, dir.path(), &defrag_run);
    let killed = Instant::now();
    b.kill();
    let c = Binary::start(&endpoints, dir.path(), logs.path(), &[]);
    let cut = interrupted(dir.path(), &defrag_run);
    assert_eq!(cut.detail["last_step"], format!("defrag {name}"), "{cut:?}");
    assert_eq!(cut.detail["last_phase"], "start", "{cut:?}");
    let events = events_of(dir.path(), &defrag_run);
    assert_story(
        &events,
        &[
            ("accepted", Phase::Info),
            ("snapshot", Phase::Ok),
            ("compact", Phase::Ok),
            (&format!("defrag {name}"), Phase::Start),
            ("interrupted", Phase::Failed),
        ],
    );
    assert!(!events.iter().any(|e| e.step == "finished"));

    // The next run completes, once the orphaned defrag (etcd goes on with it) is over.
    wait_for(RUN_TIMEOUT, "the orphaned defrag to end", || {
        etcd.members()
            .iter()
            .all(|m| !defrag_inflight(&m.metrics_url))
            .then_some(())
    });
    let last = c.fire("fault-kill-3");
    let events = wait_for(RUN_TIMEOUT, "the run after the restarts", || {
        let events = events_of(dir.path(), &last);
        events
            .iter()
            .any(|e| e.step == "finished")
            .then_some(events)
    });
    let recovered_defrag = killed.elapsed();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.step.starts_with("defrag ") && e.phase == Phase::Ok)
            .count(),
        3,
        "{events:#?}"
    );
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "healthy"
    );
    let (_, metrics) = http_get(&format!("{}/metrics", c.base)).unwrap();
    assert!(
        metric_line(
            &metrics,
            "etcd_dr_interrupted_runs_total{kind=\"remediation\"} 1"
        ),
        "{metrics}"
    );
    c.kill();
    assert!(partials(dir.path()).is_empty());
    let after = rt.block_on(seeded_on_each(&endpoints));
    assert!(after.iter().all(|a| *a == before), "keys lost or changed");
    eprintln!(
        "fault-drill: remediator killed mid-snapshot and mid-defrag: keys {} before, {:?} after; serving again {:.1}s after the first kill; repaired {:.1}s after the second kill",
        before.0,
        after.iter().map(|a| a.0).collect::<Vec<_>>(),
        recovered_snapshot.as_secs_f64(),
        recovered_defrag.as_secs_f64()
    );
}

// 5c. The remediator killed mid-restore, then restarted.
#[test]
fn the_remediator_killed_mid_restore_recovers_and_the_next_run_restores() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let marker_dir = tempfile::tempdir().unwrap();
    let mut markers = dr_testkit::RestoreMarkers::new(marker_dir.path()).unwrap();
    let flags = markers.remediator_flags(&etcd).unwrap();
    let rt = runtime();
    let before = rt.block_on(seed(&endpoints, 20, 10 * 1024));
    // Two of three members lost with their disks: only a restore brings the cluster back.
    for i in 0..2 {
        etcd.kill_member(i).unwrap();
        let data_dir = etcd.member(i).data_dir.clone();
        std::fs::rename(&data_dir, data_dir.with_extension("lost")).unwrap();
        std::fs::create_dir(&data_dir).unwrap();
    }
    let a = Binary::start(&endpoints, dir.path(), logs.path(), &flags);
    let first = a.fire("fault-kill-restore-1");
    // The restore has begun: it asks for a first member to be stopped.
    wait_for(RUN_TIMEOUT, "the restore to begin", || {
        let events = events_of(dir.path(), &first);
        assert!(
            !events.iter().any(|e| e.step == "finished"),
            "the run ended without a restore: {events:#?}"
        );
        std::fs::read_dir(marker_dir.path())
            .unwrap()
            .any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("stop-")
            })
            .then_some(())
    });
    let killed = Instant::now();
    a.kill();
    let b = Binary::start(&endpoints, dir.path(), logs.path(), &flags);
    let cut = interrupted(dir.path(), &first);
    assert_eq!(cut.detail["last_step"], "restore_if_unavailable", "{cut:?}");
    assert_eq!(cut.detail["last_phase"], "start", "{cut:?}");
    assert_story(
        &events_of(dir.path(), &first),
        &[
            ("accepted", Phase::Info),
            ("snapshot", Phase::Ok),
            ("verify", Phase::Ok),
            ("restore_if_unavailable", Phase::Start),
            ("interrupted", Phase::Failed),
        ],
    );
    assert!(partials(dir.path()).is_empty());

    let second = b.fire("fault-kill-restore-2");
    let events = wait_for(RUN_TIMEOUT, "the restore after the restart", || {
        markers.answer(&mut etcd).unwrap();
        let events = events_of(dir.path(), &second);
        events
            .iter()
            .any(|e| e.step == "finished")
            .then_some(events)
    });
    let recovered = killed.elapsed();
    let restore =
        step(&events, "restore_if_unavailable", Phase::Ok).unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(
        restore.detail["health"]["verdict"], "healthy",
        "{restore:?}"
    );
    assert_eq!(markers.started(), 3);
    b.kill();
    let after = rt.block_on(seeded_on_each(&endpoints));
    assert!(after.iter().all(|a| *a == before), "keys lost or changed");
    eprintln!(
        "fault-drill: remediator killed mid-restore: keys {} before, {:?} after; restored and healthy {:.1}s after the kill",
        before.0,
        after.iter().map(|a| a.0).collect::<Vec<_>>(),
        recovered.as_secs_f64()
    );
}
