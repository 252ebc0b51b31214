//! The webhook's gatekeeping, in process through the router: requests that fail
//! authentication, parsing or size change nothing; resolved alerts, other alerts and an
//! unconfirmed detector are skipped with their reason. And `/metrics` names what DESIGN.md
//! promises from the start.
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use support::{FIRING, RESOLVED, remediator};

const TOKEN: &str = "s3cret-token";

/// An etcd endpoint nothing listens on: none of these requests may get that far.
fn nowhere() -> Vec<String> {
    vec![format!("http://127.0.0.1:{}", dr_testkit::free_port())]
}

fn with_token(dir: &std::path::Path) -> support::Remediator {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let snapshots = dir.join("snapshots");
    remediator(
        &nowhere(),
        &snapshots,
        &["--webhook-token-file", token_file.to_str().unwrap()],
    )
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_token(dir.path());
    let audit = r.snapshot_dir.join("audit.jsonl");
    let before = std::fs::read(&audit).unwrap_or_default();

    let (status, body) = r.post(FIRING, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    let (status, _) = r.post(FIRING, Some("wrong-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = r.post(FIRING, Some(&TOKEN[..TOKEN.len() - 1])).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a prefix of the token is not the token"
    );

    let (status, body) = r.post("{\"alerts\": [", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].is_string());

    let huge = format!(
        "{{\"pad\": \"{}\", {}",
        "x".repeat(dr_remediator::http::MAX_BODY_BYTES),
        &FIRING[1..]
    );
    let (status, body) = r.post(&huge, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    assert_eq!(
        std::fs::read(&audit).unwrap_or_default(),
        before,
        "audit log changed"
    );
    assert!(r.snapshots().is_empty());
    // /actions tells endpoints, snapshots and errors: the token guards it too.
    let (status, body) = r.get("/actions").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = r.get_as("/actions", Some("wrong-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, actions) = r.get_as("/actions", Some(TOKEN)).await;
    assert_eq!(actions["actions"], json!([]));
    let (status, body) = r.get_as("/actions?limit=many", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
}

#[tokio::test]
async fn resolved_and_other_alerts_are_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_token(dir.path());
    let (status, body) = r.post(RESOLVED, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["skipped"].as_str().unwrap().starts_with("resolved"),
        "{body}"
    );

    let other = FIRING.replace("\"EtcdAnomalyScoreHigh\"", "\"EtcdHighFsyncDurations\"");
    let (status, body) = r.post(&other, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["skipped"].as_str().unwrap().starts_with("other alert"),
        "{body}"
    );

    // The skips are on record, newest first.
    let (_, actions) = r.get_as("/actions", Some(TOKEN)).await;
    let actions = actions["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    assert_eq!(actions[0]["last_phase"], "skipped");
    assert!(
        actions[0]["events"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("other alert")
    );
}

async fn detector(score: f64) -> String {
    let app = axum::Router::new().route(
        "/score",
        get(move || async move {
            axum::Json(
                json!({"score": score, "threshold": 0.5, "anomalous": score > 0.5,
                "window_end": 0, "step_seconds": 15, "model": "test"}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn an_unconfirmed_or_unreachable_detector_means_no_action() {
    let dir = tempfile::tempdir().unwrap();
    let calm = detector(0.1).await;
    let r = remediator(&nowhere(), dir.path(), &["--detector-url", &calm]);
    let (status, body) = r.post(FIRING, None).await;
    assert_eq!(status, StatusCode::OK);
    let reason = body["skipped"].as_str().unwrap();
    assert!(
        reason.starts_with("not confirmed") && reason.contains("0.1"),
        "{reason}"
    );

    let dead = format!("http://127.0.0.1:{}/", dr_testkit::free_port());
    let r = remediator(
        &nowhere(),
        &dir.path().join("b"),
        &["--detector-url", &dead],
    );
    let (_, body) = r.post(FIRING, None).await;
    let reason = body["skipped"].as_str().unwrap();
    assert!(reason.contains("detector unreachable"), "{reason}");

    // Confirmed, but etcd cannot be reached: still nothing is done, and it says why.
    let alarmed = detector(0.9).await;
    let r = remediator(
        &nowhere(),
        &dir.path().join("c"),
        &["--detector-url", &alarmed, "--etcd-timeout", "2s"],
    );
    let (_, body) = r.post(FIRING, None).await;
    let reason = body["skipped"].as_str().unwrap();
    assert!(reason.starts_with("etcd not safe to act on"), "{reason}");
    assert!(r.snapshots().is_empty());
}

#[tokio::test]
async fn metrics_carry_every_name_the_design_promises_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let r = remediator::<&str>(&nowhere(), dir.path(), &[]);
    let (status, metrics) = r.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    for sample in [
        "etcd_dr_snapshot_success_total 0",
        "etcd_dr_snapshot_failure_total 0",
        "etcd_dr_remediation_duration_seconds_count 0",
        "etcd_dr_last_snapshot_timestamp_seconds ",
    ] {
        assert!(
            metrics.lines().any(|line| line.starts_with(sample)),
            "no {sample:?} in {metrics}"
        );
    }
    // Labelled by result, each result there from the start: a series that first appears at
    // 1 hides that first defrag or restore from `increase()`.
    for family in ["etcd_dr_defrag_total", "etcd_dr_restore_total"] {
        for result in ["success", "failure"] {
            let sample = format!("{family}{{result=\"{result}\"}} 0");
            assert!(
                metrics.lines().any(|line| line == sample),
                "no {sample:?} in {metrics}"
            );
        }
    }
}
