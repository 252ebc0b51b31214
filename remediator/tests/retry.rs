//! A skipped alert is not a lost alert, on a real etcd: an alert skipped because the etcd
//! lock is held is retried by the remediator once the lock is free, while it still fires;
//! a retry ends without acting when the detector no longer confirms or Alertmanager no
//! longer has the alert; every retry is in the audit log.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use dr_remediator::audit::{Event, Phase};
use dr_remediator::lock::LOCK_NAME;
use dr_testkit::{Alertmanager, EtcdCluster, EtcdOptions, EtcdVersion};
use etcd_client::{Client, LockOptions};
use serde_json::{Value, json};
use support::{client, firing_space, firing_with, remediator, runtime};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Short retry timers, a window well past the test's lock hold.
const RETRY: [&str; 6] = [
    "--retry-interval",
    "500ms",
    "--retry-skipped-for",
    "90s",
    "--health-wait",
    "1s",
];

fn etcd() -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        ..EtcdOptions::default()
    })
    .unwrap()
}

/// Another remediator's lock, held from the test: (client, lease, lock key).
async fn hold_lock(endpoints: &[String]) -> (Client, i64, Vec<u8>) {
    let mut c = client(endpoints).await;
    let lease = c.lease_grant(120, None).await.unwrap().id();
    let key = c
        .lock(LOCK_NAME, Some(LockOptions::new().with_lease(lease)))
        .await
        .unwrap()
        .key()
        .to_vec();
    (c, lease, key)
}

async fn release_lock((mut c, lease, key): (Client, i64, Vec<u8>)) {
    c.unlock(key).await.unwrap();
    c.lease_revoke(lease).await.unwrap();
}

/// Waits (bounded) for the retry's last event.
async fn retry_ended(r: &support::Remediator, retry: &str) -> Event {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(end) = r.events_of(retry).into_iter().find(|e| e.step == "retry") {
            return end;
        }
        assert!(
            Instant::now() < deadline,
            "retry {retry} never ended: {:#?}",
            r.events_of(retry)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `body` while the lock is held: skipped as busy, with a retry scheduled.
async fn skipped_with_retry(r: &support::Remediator, body: &str) -> String {
    let (status, answer) = r.post(body, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["skipped"],
        "already running: another remediator holds the etcd lock"
    );
    assert_eq!(answer["retry"]["new"], true, "{answer}");
    answer["retry"]["action_id"].as_str().unwrap().to_owned()
}

fn accepted(r: &support::Remediator) -> Vec<Event> {
    r.events()
        .into_iter()
        .filter(|e| e.step == "accepted")
        .collect()
}

#[test]
fn an_alert_skipped_for_the_lock_runs_by_itself_once_the_lock_is_free() {
    let etcd = etcd();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let held = hold_lock(&endpoints).await;
        let r = remediator(&endpoints, dir.path(), &RETRY);
        let retry = skipped_with_retry(&r, &firing_space()).await;
        // The same alert again while the retry waits: that retry, not a second one.
        let (_, again) = r.post(&firing_space(), None).await;
        assert_eq!(again["retry"]["action_id"], retry.as_str(), "{again}");
        assert_eq!(again["retry"]["new"], false);

        // Busy for a while: attempts, no run.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(accepted(&r).is_empty());
        let attempts = r
            .events_of(&retry)
            .into_iter()
            .filter(|e| e.step == "attempt")
            .count();
        assert!(attempts >= 2, "{:#?}", r.events_of(&retry));

        let freed = Instant::now();
        release_lock(held).await;
        let end = retry_ended(&r, &retry).await;
        assert_eq!(end.phase, Phase::Ok, "{end:#?}");
        assert_eq!(end.detail["outcome"], "started");
        // Within the longest backoff wait after the lock went.
        assert!(
            freed.elapsed() < Duration::from_secs(35),
            "{:?}",
            freed.elapsed()
        );
        let run = end.detail["action_id"].as_str().unwrap();
        let events = r.wait_finished(run, RUN_TIMEOUT).await;
        assert!(
            support::step(&events, "snapshot", Phase::Ok).is_some(),
            "{events:#?}"
        );
        // The story in order: the skip, the retry scheduled, attempts, the retry's end.
        let steps: Vec<_> = r.events_of(&retry).iter().map(|e| e.step.clone()).collect();
        assert_eq!(steps.first().map(String::as_str), Some("scheduled"));
        assert_eq!(steps.last().map(String::as_str), Some("retry"));
        assert_eq!(accepted(&r).len(), 1);
        let (_, metrics) = r.get("/metrics").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .lines()
                .any(|l| l == "etcd_dr_retries_total{outcome=\"started\"} 1"),
            "{metrics}"
        );
    });
}

/// A detector whose answer the test switches: anomalous until `calm` is set.
async fn switchable_detector(calm: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/score",
        axum::routing::get(move || {
            let calm = calm.load(Ordering::SeqCst);
            async move {
                let score = if calm { 0.1 } else { 0.9 };
                axum::Json(json!({"score": score, "threshold": 0.5, "anomalous": !calm}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[test]
fn a_retry_ends_without_acting_once_the_detector_no_longer_confirms() {
    let etcd = etcd();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let calm = Arc::new(AtomicBool::new(false));
        let detector = switchable_detector(calm.clone()).await;
        let held = hold_lock(&endpoints).await;
        let mut flags: Vec<&str> = RETRY.to_vec();
        flags.extend(["--detector-url", &detector]);
        let r = remediator(&endpoints, dir.path(), &flags);
        let retry = skipped_with_retry(&r, &firing_space()).await;
        calm.store(true, Ordering::SeqCst);
        release_lock(held).await;
        let end = retry_ended(&r, &retry).await;
        assert_eq!(end.detail["outcome"], "not_firing", "{end:#?}");
        assert!(
            end.detail["reason"]
                .as_str()
                .unwrap()
                .contains("detector does not confirm"),
            "{end:#?}"
        );
        assert!(accepted(&r).is_empty(), "{:#?}", accepted(&r));
        assert!(r.snapshots().is_empty());
    });
}

/// Alertmanager's own copy of an alert: `labels`, from an hour ago to `ends_in` from now
/// (in the past: resolved).
async fn post_alert(am: &Alertmanager, labels: &Value, ends_in: i64) {
    let at = |seconds: i64| {
        let now = SystemTime::now();
        let delta = Duration::from_secs(seconds.unsigned_abs());
        let t = if seconds < 0 {
            now - delta
        } else {
            now + delta
        };
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let body = json!([{ "labels": labels, "startsAt": at(-3600), "endsAt": at(ends_in) }]);
    let answer = support::http_client(None)
        .post(format!("{}/api/v2/alerts", am.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert_eq!(status, 200, "{}", answer.text().await.unwrap());
}

#[test]
fn rule_alert_retries_ask_alertmanager_whether_the_alert_still_fires() {
    let etcd = etcd();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let am = Alertmanager::start(dr_testkit::alertmanager::NULL_CONFIG).unwrap();
    runtime().block_on(async {
        // Two rule alerts, told apart by a label: one goes on firing, one resolves.
        let bodies: Vec<String> = ["a", "b"]
            .iter()
            .map(|m| firing_with(Some("EtcdNoSpace"), &[("member", m)]))
            .collect();
        let labels: Vec<Value> = bodies
            .iter()
            .map(|b| serde_json::from_str::<Value>(b).unwrap()["alerts"][0]["labels"].clone())
            .collect();
        for l in &labels {
            post_alert(&am, l, 3600).await;
        }
        let held = hold_lock(&endpoints).await;
        let mut flags: Vec<String> = RETRY.iter().map(|s| (*s).to_owned()).collect();
        flags.extend([
            "--space-alerts".into(),
            "EtcdNoSpace".into(),
            "--alertmanager-url".into(),
            am.url(),
        ]);
        let r = remediator(&endpoints, dir.path(), &flags);
        // Different labels, different fingerprints: two retries.
        let still = skipped_with_retry(
            &r,
            &bodies[0].replace("f146eb540a7ae47b", "00000000000000aa"),
        )
        .await;
        let gone = skipped_with_retry(
            &r,
            &bodies[1].replace("f146eb540a7ae47b", "00000000000000bb"),
        )
        .await;
        post_alert(&am, &labels[1], -1).await;
        release_lock(held).await;

        let end = retry_ended(&r, &gone).await;
        assert_eq!(end.detail["outcome"], "not_firing", "{end:#?}");
        assert!(
            end.detail["reason"]
                .as_str()
                .unwrap()
                .contains("Alertmanager"),
            "{end:#?}"
        );
        let end = retry_ended(&r, &still).await;
        assert_eq!(end.detail["outcome"], "started", "{end:#?}");
        r.wait_finished(end.detail["action_id"].as_str().unwrap(), RUN_TIMEOUT)
            .await;
        assert_eq!(accepted(&r).len(), 1);
    });
}
