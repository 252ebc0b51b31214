//! Remediations against real etcd (Debian 3.4 and vendored 3.6): a bloated db shrinks with
//! every key kept, NOSPACE is cleared, the lock tells NOSPACE apart, one run at a time
//! across webhooks and replicas, a member lost mid-run does not cause a restore, and
//! dry-run touches nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use dr_remediator::audit::Phase;
use dr_remediator::etcd::{EtcdAccess, EtcdError};
use dr_remediator::lock::EtcdLock;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use support::{bloat, client, db_sizes, firing_space, remediator, runtime, seeded, step};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const LOCK_TTL: Duration = Duration::from_secs(15);
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn start(version: EtcdVersion, members: usize, quota: Option<u64>) -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version,
        members,
        quota_backend_bytes: quota,
        ..EtcdOptions::default()
    })
    .unwrap()
}

fn shrinks_and_keeps_every_key(version: EtcdVersion, members: usize) {
    let etcd = start(version, members, None);
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&endpoints).await;
        // 20 keys x 15 rounds x 100 KB: 30 MB of history over 2 MB of live data. The db
        // file grows in chunks and lags the writes, so ask for half of that below.
        bloat(&mut c, 20, 15, 100 * 1024).await;
        let before_keys = seeded(&mut c).await;
        let before = db_sizes(&endpoints).await;
        let r = remediator(&endpoints, dir.path(), &["--health-wait", "1s"]);
        let (status, body) = r.post(&firing_space(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["action_id"].as_str().unwrap();
        let events = r.wait_finished(id, RUN_TIMEOUT).await;
        let after = db_sizes(&endpoints).await;
        assert_eq!(seeded(&mut c).await, before_keys, "keys lost or changed");
        for (b, a) in before.iter().zip(&after) {
            assert!(*b > 10_000_000, "bloat did not take: {before:?}");
            assert!(a * 3 < *b, "db did not shrink: {before:?} -> {after:?}");
        }
        eprintln!("{version:?} x{members}: db sizes {before:?} -> {after:?}");
        let verify = step(&events, "verify", Phase::Ok).unwrap();
        assert_eq!(verify.detail["verdict"], "healthy", "{events:#?}");
        // Defrags ran leader last, each recorded before and after.
        let defrags: Vec<_> = events
            .iter()
            .filter(|e| e.step.starts_with("defrag") && e.phase == Phase::Start)
            .collect();
        assert_eq!(defrags.len(), members);
        assert_eq!(defrags.last().unwrap().detail["leader"], true);
        assert_eq!(r.snapshots().len(), 1);
        let (_, metrics) = r.get("/metrics").await;
        let metrics = metrics.as_str().unwrap().to_owned();
        assert!(
            metrics.contains("etcd_dr_snapshot_success_total 1"),
            "{metrics}"
        );
        assert!(metrics.contains(&format!(
            "etcd_dr_defrag_total{{result=\"success\"}} {members}"
        )));
    });
}

#[test]
fn bloated_db_shrinks_and_keeps_every_key_3_4_single() {
    shrinks_and_keeps_every_key(EtcdVersion::V3_4, 1);
}

#[test]
fn bloated_db_shrinks_and_keeps_every_key_3_6_three_members() {
    shrinks_and_keeps_every_key(EtcdVersion::V3_6, 3);
}

#[test]
fn bloated_db_shrinks_and_keeps_every_key_3_5_single() {
    shrinks_and_keeps_every_key(EtcdVersion::V3_5, 1);
}

#[test]
fn bloated_db_shrinks_and_keeps_every_key_3_7_single() {
    shrinks_and_keeps_every_key(EtcdVersion::V3_7, 1);
}

fn nospace_is_cleared(version: EtcdVersion) {
    let quota: u64 = 16 * 1024 * 1024;
    let etcd = start(version, 1, Some(quota));
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let before_keys = support::fill_to_nospace(&endpoints).await;
        let mut c = client(&endpoints).await;
        assert!(
            c.put("probe", "x", None)
                .await
                .unwrap_err()
                .to_string()
                .contains("space")
        );
        let quota_text = quota.to_string();
        let r = remediator(
            &endpoints,
            dir.path(),
            &["--health-wait", "1s", "--etcd-quota-bytes", &quota_text],
        );
        let (status, body) = r.post(&firing_space(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["action_id"].as_str().unwrap();
        let events = support::nospace_repaired(&r, id, RUN_TIMEOUT).await;
        c.put("probe", "works again", None).await.unwrap();
        assert_eq!(seeded(&mut c).await, before_keys);
        // Under NOSPACE etcd refuses the lock's lease; the run says so.
        assert!(events.iter().any(|e| e.step == "lock"), "{events:#?}");
    });
}

#[test]
fn nospace_alarm_is_cleared_and_writes_work_3_4() {
    nospace_is_cleared(EtcdVersion::V3_4);
}

#[test]
fn nospace_alarm_is_cleared_and_writes_work_3_6() {
    nospace_is_cleared(EtcdVersion::V3_6);
}

#[test]
fn nospace_alarm_is_cleared_and_writes_work_3_5() {
    nospace_is_cleared(EtcdVersion::V3_5);
}

#[test]
fn nospace_alarm_is_cleared_and_writes_work_3_7() {
    nospace_is_cleared(EtcdVersion::V3_7);
}

/// The drill's race: NOSPACE raised after the remediator looked at the alarms and before
/// it took the lock. The lock must say NOSPACE (the run then proceeds unlocked), not fail
/// like any other etcd error (the run would be skipped and the cluster left full).
#[test]
fn the_lock_tells_nospace_apart_from_other_failures() {
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_6] {
        let etcd = start(version, 1, None);
        let endpoints = etcd.client_endpoints();
        runtime().block_on(async {
            let access = EtcdAccess {
                endpoints: endpoints.clone(),
                tls: None,
                timeout: Duration::from_secs(5),
                default_quota_bytes: 1 << 31,
            };
            let try_lock = || EtcdLock::try_acquire(&access, "test", LOCK_TTL, LOCK_WAIT);
            match try_lock().await {
                Ok(Some(lock)) => lock.release().await,
                Ok(None) => panic!("{version:?}: nobody else holds the lock"),
                Err(err) => panic!("{version:?}: {err}"),
            }
            // Raised the way etcd raises it when the db reaches its quota.
            let mut c = client(&endpoints).await;
            let member = c.status().await.unwrap().header().unwrap().member_id();
            let mut options = AlarmOptions::new();
            options.with_member(member);
            c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
                .await
                .unwrap();
            match try_lock().await {
                Err(err @ EtcdError::Nospace { .. }) => {
                    assert!(err.is_nospace());
                    let message = err.to_string();
                    assert!(message.contains("database space exceeded"), "{message}");
                }
                Err(err) => panic!("{version:?}: NOSPACE not recognised: {err:?}"),
                Ok(_) => panic!("{version:?}: etcd granted a lease under NOSPACE"),
            }
        });
    }
}

#[test]
fn concurrent_webhooks_and_two_replicas_make_exactly_one_remediation() {
    let etcd = start(EtcdVersion::V3_4, 1, None);
    let endpoints = etcd.client_endpoints();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    rt.block_on(async {
        let flags = ["--health-wait", "3s"];
        let a = remediator(&endpoints, dir_a.path(), &flags);
        let b = remediator(&endpoints, dir_b.path(), &flags);
        // Three webhooks to each replica, all at once.
        let space = firing_space();
        let (a1, b1, a2, b2, a3, b3) = tokio::join!(
            a.post(&space, None),
            b.post(&space, None),
            a.post(&space, None),
            b.post(&space, None),
            a.post(&space, None),
            b.post(&space, None)
        );
        let answers = [a1, b1, a2, b2, a3, b3];
        let started: Vec<_> = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::ACCEPTED)
            .collect();
        assert_eq!(started.len(), 1, "{answers:?}");
        for (status, body) in &answers {
            if *status == StatusCode::OK {
                assert!(
                    body["skipped"]
                        .as_str()
                        .unwrap()
                        .starts_with("already running"),
                    "{body}"
                );
            }
        }
        let id = started[0].1["action_id"].as_str().unwrap();
        let accepted =
            |r: &support::Remediator| r.events_of(id).iter().any(|e| e.step == "accepted");
        let owner = if accepted(&a) { &a } else { &b };
        assert!(accepted(owner));
        owner.wait_finished(id, RUN_TIMEOUT).await;
        // The same alert right after is in cooldown, on both replicas.
        let other = if accepted(&a) { &b } else { &a };
        for r in [owner, other] {
            let (_, body) = r.post(&firing_space(), None).await;
            assert!(
                body["skipped"].as_str().unwrap().starts_with("cooldown"),
                "{body}"
            );
        }
        assert_eq!(a.snapshots().len() + b.snapshots().len(), 1);
    });
}

#[test]
fn dry_run_touches_nothing() {
    let etcd = start(EtcdVersion::V3_6, 1, None);
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&endpoints).await;
        bloat(&mut c, 5, 4, 64 * 1024).await;
        let revision = |r: etcd_client::GetResponse| r.header().unwrap().revision();
        let before_rev = revision(c.get("x", None).await.unwrap());
        let r = remediator(
            &endpoints,
            dir.path(),
            &["--dry-run", "--health-wait", "1s"],
        );
        let (status, body) = r.post(&firing_space(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let events = r
            .wait_finished(body["action_id"].as_str().unwrap(), RUN_TIMEOUT)
            .await;
        let plan = step(&events, "plan", Phase::Info).unwrap();
        assert!(plan.dry_run);
        let steps: Vec<&str> = plan.detail["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        // The disarm is planned without the alarm too (it checks when it runs); in a dry
        // run nothing runs.
        assert_eq!(
            steps,
            [
                "snapshot",
                "compact",
                "defrag",
                "disarm_nospace",
                "wait_health",
                "verify"
            ]
        );
        assert!(
            events.iter().all(|e| e.phase != Phase::Start),
            "a step ran: {events:#?}"
        );
        assert_eq!(
            revision(c.get("x", None).await.unwrap()),
            before_rev,
            "etcd was written"
        );
        // No compaction: the first revision is still readable.
        let first = c
            .get(
                "seed/0000",
                Some(etcd_client::GetOptions::new().with_revision(2)),
            )
            .await
            .unwrap();
        assert_eq!(first.kvs().len(), 1, "history was compacted");
        assert!(r.snapshots().is_empty());
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .all(|e| e.unwrap().file_name() == "audit.jsonl"),
            "files other than the audit log"
        );
    });
}
