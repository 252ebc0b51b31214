//! Diagnosis before action, against real etcd: the detector's explanation of a leader
//! election storm gets a verified snapshot and an escalation, never a defrag; `POST /plan`
//! answers the diagnosis and the plan and touches nothing; a rule alert repairs NOSPACE
//! with no detector running, while the model's alert still needs the detector.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::{Request, StatusCode};
use dr_remediator::audit::Phase;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion};
use serde_json::{Value, json};
use support::{
    FIRING, client, detector_answering, fill_to_nospace, firing_with, remediator, runtime, seeded,
    step,
};
use tower::ServiceExt;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN: &str = "plan-token";

fn leader_storm() -> Value {
    json!({"instance": "127.0.0.1:2379", "score": 3.2, "threshold": 1.0, "anomalous": true,
           "step_seconds": 1.0, "model": "test", "masked_steps": 0,
           "feature_shares": {"leader_changes": 0.55, "failed_proposals": 0.25,
                              "fragmentation": 0.1, "wal_fsync_p99": 0.1}})
}

fn metric(metrics: &Value, line: &str) -> bool {
    metrics.as_str().unwrap().lines().any(|l| l == line)
}

#[test]
fn a_leader_storm_gets_a_snapshot_and_an_escalation_never_a_defrag() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut c = client(&endpoints).await;
        support::bloat(&mut c, 20, 10, 100 * 1024).await;
        let keys = seeded(&mut c).await;
        let detector = detector_answering(leader_storm()).await;
        let r = remediator(&endpoints, dir.path(), &["--detector-url", &detector]);
        let (status, body) = r.post(FIRING, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["diagnosis"], "leader_instability", "{body}");
        let steps: Vec<&str> = body["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["snapshot", "escalate"], "{body}");
        let id = body["action_id"].as_str().unwrap();
        let events = r.wait_finished(id, RUN_TIMEOUT).await;
        assert!(
            step(&events, "snapshot", Phase::Ok).is_some(),
            "{events:#?}"
        );
        let escalation = step(&events, "escalate", Phase::Ok).unwrap();
        assert_eq!(escalation.detail["diagnosis"], "leader_instability");
        assert!(
            escalation.detail["reason"]
                .as_str()
                .unwrap()
                .starts_with("a person is needed: leader_instability"),
            "{escalation:?}"
        );
        assert!(
            events
                .iter()
                .all(|e| !e.step.starts_with("defrag") && e.step != "compact"),
            "a repair step ran: {events:#?}"
        );
        let diagnosis = step(&events, "diagnosis", Phase::Info).unwrap();
        assert_eq!(diagnosis.detail["evidence"][0]["source"], "detector");
        assert_eq!(r.snapshots().len(), 1);
        assert_eq!(seeded(&mut c).await, keys);
        let (_, metrics) = r.get("/metrics").await;
        assert!(
            metric(
                &metrics,
                "etcd_dr_escalations_total{diagnosis=\"leader_instability\"} 1"
            ),
            "{metrics}"
        );
        assert!(metric(
            &metrics,
            "etcd_dr_diagnoses_total{diagnosis=\"leader_instability\"} 1"
        ));
        assert!(metric(
            &metrics,
            "etcd_dr_defrag_total{result=\"success\"} 0"
        ));
        let (_, actions) = r.get("/actions").await;
        assert_eq!(actions["actions"][0]["diagnosis"], "leader_instability");
    });
}

#[test]
fn plan_answers_the_diagnosis_and_touches_nothing() {
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_4,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let snapshots = dir.path().join("snapshots");
    runtime().block_on(async {
        let detector = detector_answering(leader_storm()).await;
        let r = remediator(
            &endpoints,
            &snapshots,
            &[
                "--detector-url",
                &detector,
                "--webhook-token-file",
                token_file.to_str().unwrap(),
                "--space-alerts",
                "EtcdNoSpace",
            ],
        );
        let plan = |body: String, token: Option<&str>| {
            let mut request = Request::post("/plan");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let request = request.body(axum::body::Body::from(body)).unwrap();
            let router = r.router.clone();
            async move {
                let response = router.oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, serde_json::from_slice::<Value>(&bytes).unwrap())
            }
        };
        let (status, _) = plan(FIRING.to_owned(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = plan(FIRING.to_owned(), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["diagnosis"], "leader_instability", "{body}");
        assert_eq!(body["trigger"], "model");
        assert_eq!(body["plan"][1]["step"], "escalate");
        // A rule alert: the space plan, decided by the alert and etcd alone.
        let (_, body) = plan(firing_with(Some("EtcdNoSpace"), &[]), Some(TOKEN)).await;
        assert_eq!(body["trigger"], "rule", "{body}");
        assert_eq!(body["diagnosis"], "space", "{body}");
        assert_eq!(body["plan"][1]["step"], "compact", "{body}");
        assert!(r.events().is_empty(), "/plan wrote the audit log");
        assert!(r.snapshots().is_empty());
    });
}

#[test]
fn a_rule_alert_repairs_nospace_with_no_detector_running() {
    let quota: u64 = 16 * 1024 * 1024;
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        quota_backend_bytes: Some(quota),
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let keys = fill_to_nospace(&endpoints).await;
        // The detector is down: the model's alert cannot be confirmed...
        let dead = format!("http://127.0.0.1:{}/", dr_testkit::free_port());
        let quota_text = quota.to_string();
        let r = remediator(
            &endpoints,
            dir.path(),
            &[
                "--detector-url",
                &dead,
                "--space-alerts",
                "EtcdNoSpace,EtcdDatabaseQuotaLowSpace",
                "--health-wait",
                "1s",
                "--etcd-quota-bytes",
                &quota_text,
            ],
        );
        let (_, body) = r.post(FIRING, None).await;
        assert!(
            body["skipped"]
                .as_str()
                .unwrap()
                .contains("detector unreachable"),
            "{body}"
        );
        // ...but the rule alone repairs it.
        let (status, body) = r.post(&firing_with(Some("EtcdNoSpace"), &[]), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["diagnosis"], "space");
        let id = body["action_id"].as_str().unwrap();
        let events = support::nospace_repaired(&r, id, RUN_TIMEOUT).await;
        let accepted = step(&events, "accepted", Phase::Info).unwrap();
        assert_eq!(accepted.detail["trigger"], "rule");
        let mut c = client(&endpoints).await;
        c.put("probe", "works again", None).await.unwrap();
        assert_eq!(seeded(&mut c).await, keys);
    });
}
