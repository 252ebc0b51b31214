//! Start-up recovery on a real etcd: what a killed predecessor left (a partial snapshot,
//! a run the audit log shows begun and never ended, a torn last audit line, a lock held
//! under this replica's identity) is cleaned or recorded before the first webhook, and
//! that webhook is not skipped for the dead process's lock.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use dr_remediator::audit::{Event, Phase};
use dr_remediator::lock::{LOCK_NAME, OWNER_PREFIX};
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion};
use etcd_client::{LockOptions, PutOptions};
use serde_json::json;
use support::{client, firing_space, http_client, runtime, serve};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn etcd() -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        ..EtcdOptions::default()
    })
    .unwrap()
}

/// What a predecessor killed mid-snapshot leaves in the audit log: a run begun and never
/// ended, after one that ended, and a last line cut short.
fn predecessor_audit(dir: &std::path::Path) {
    let event = |id: &str, step: &str, phase: &str| {
        json!({"ts": "2026-01-01T00:00:00.000Z", "action_id": id, "kind": "remediation",
               "step": step, "phase": phase, "detail": null, "dry_run": false})
        .to_string()
    };
    let lines = [
        event("done-1", "accepted", "info"),
        event("done-1", "finished", "info"),
        event("killed-1", "accepted", "info"),
        event("killed-1", "plan", "info"),
        event("killed-1", "snapshot", "start"),
    ];
    let mut text = lines.join("\n");
    text.push_str("\n{\"ts\": \"2026-01-01T00:00:01");
    std::fs::write(dir.join("audit.jsonl"), text).unwrap();
}

/// Every readable event of the log, and how many lines were not (the torn one).
fn audit(dir: &std::path::Path) -> (Vec<Event>, usize) {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let parsed: Vec<_> = text.lines().map(serde_json::from_str::<Event>).collect();
    let bad = parsed.iter().filter(|p| p.is_err()).count();
    (parsed.into_iter().filter_map(Result::ok).collect(), bad)
}

#[test]
fn startup_recovery_cleans_what_a_killed_predecessor_left() {
    let etcd = etcd();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("snapshot-0000000000000001-rev7.db.part");
    std::fs::write(&partial, vec![0u8; 4096]).unwrap();
    predecessor_audit(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&endpoints).await;
        // The dead predecessor's lock: held on a long lease, its owner key naming "pod-a".
        let own = c.lease_grant(300, None).await.unwrap().id();
        c.put(
            format!("{OWNER_PREFIX}pod-a/{own:x}"),
            "{}",
            Some(PutOptions::new().with_lease(own)),
        )
        .await
        .unwrap();
        c.lock(LOCK_NAME, Some(LockOptions::new().with_lease(own)))
            .await
            .unwrap();
        // Another replica's owner key (not holding the lock): not ours to touch.
        let foreign = c.lease_grant(300, None).await.unwrap().id();
        c.put(
            format!("{OWNER_PREFIX}pod-b/{foreign:x}"),
            "{}",
            Some(PutOptions::new().with_lease(foreign)),
        )
        .await
        .unwrap();

        let flags = ["--identity", "pod-a", "--health-wait", "1s"];
        let served = serve(&endpoints, dir.path(), &flags).await;
        let http = http_client(None);
        let base = format!("http://{}", served.addr);
        // Served only after recovery: the first webhook is not skipped for the lock.
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            http.post(format!("{base}/webhook"))
                .header("content-type", "application/json")
                .body(firing_space())
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer.status(), 202);
        let answer: serde_json::Value = answer.json().await.unwrap();
        let run = answer["action_id"].as_str().unwrap().to_owned();

        assert!(!partial.exists(), "the partial snapshot stays");
        let ttl = |lease| {
            let mut c = c.clone();
            async move { c.lease_time_to_live(lease, None).await.unwrap().ttl() }
        };
        assert!(ttl(own).await <= 0, "the predecessor's lease lives on");
        assert!(
            ttl(foreign).await > 0,
            "another identity's lease was revoked"
        );

        let (events, torn) = audit(dir.path());
        // The cut line stays on its own; the events after it are whole.
        assert_eq!(torn, 1);
        let interrupted: Vec<_> = events.iter().filter(|e| e.step == "interrupted").collect();
        assert_eq!(interrupted.len(), 1, "{interrupted:#?}");
        assert_eq!(interrupted[0].action_id, "killed-1");
        assert_eq!(interrupted[0].phase, Phase::Failed);
        assert_eq!(interrupted[0].detail["last_step"], "snapshot");
        assert_eq!(interrupted[0].detail["last_phase"], "start");
        let recovery: Vec<_> = events.iter().filter(|e| e.kind == "recovery").collect();
        let step = |name: &str| recovery.iter().find(|e| e.step == name).unwrap();
        assert_eq!(
            step("partial_snapshot").detail["removed"],
            json!(partial.display().to_string())
        );
        assert_eq!(step("own_lock").detail["revoked"][0]["lease"], json!(own));
        assert_eq!(step("own_lock").detail["revoked"][0]["held_lock"], true);

        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l == "etcd_dr_interrupted_runs_total{kind=\"remediation\"} 1"),
            "{metrics}"
        );

        // The new run ends; a second restart finds nothing left to recover.
        let deadline = std::time::Instant::now() + RUN_TIMEOUT;
        while !audit(dir.path())
            .0
            .iter()
            .any(|e| e.action_id == run && e.step == "finished")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "run {run} never ended"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        served.stop().await;
        let before = audit(dir.path()).0.len();
        let served = serve(&endpoints, dir.path(), &flags).await;
        let ready = format!("http://{}/healthz", served.addr);
        tokio::time::timeout(Duration::from_secs(30), async {
            while http.get(&ready).send().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
        served.stop().await;
        let after = audit(dir.path()).0;
        assert_eq!(after.len(), before, "{:#?}", &after[before..]);
    });
}
