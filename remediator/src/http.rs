//! The HTTP layer: `POST /webhook` (authenticated, bounded, parsed, then answered with the
//! gate's decision), `POST /plan` (the same body and checks, touching nothing), `GET
//! /actions` (authenticated), and the ops endpoints.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use dr_common::http::{ApiError, Readiness, ops_router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::gate::Decision;
use crate::webhook::{Payload, authorized};

/// Alertmanager bodies are a few KB; this leaves room for large groups.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// `/webhook`, `/actions` and the ops endpoints.
pub fn router(app: Arc<App>, readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/plan", post(plan))
        .route("/actions", get(actions))
        .route("/proof", post(proof))
        .with_state(app)
        .merge(ops_router(readiness, registry))
}

/// The bearer token check `/webhook` and `/actions` share, against the token's file as it
/// is now.
fn check_token(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.webhook_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorized(given, &token.current()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or wrong bearer token".into(),
        ))
    }
}

/// The token, the size bound and the parse `/webhook` and `/plan` share; `count` sees
/// each refusal's outcome.
async fn read_payload(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    count: impl Fn(&str),
) -> Result<Payload, ApiError> {
    check_token(app, headers).inspect_err(|_| count("unauthorized"))?;
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            count("too_large");
            ApiError::PayloadTooLarge(format!("webhook body over {MAX_BODY_BYTES} bytes"))
        })?;
    Payload::parse(&bytes).map_err(|err| {
        count("malformed");
        ApiError::BadRequest(err.to_string())
    })
}

/// What the webhook would do with this body, touching nothing: the diagnosis and the plan,
/// or why it would be skipped.
async fn plan(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let payload = read_payload(&app, &headers, body, |_| {}).await?;
    Ok(Json(match app.gate.preview(&payload).await {
        Ok(preview) => json!({
            "alert": preview.alert,
            "trigger": if preview.by_rule { "rule" } else { "model" },
            "diagnosis": preview.finding.as_ref().map(|f| f.diagnosis),
            "evidence": preview.finding.as_ref().map(|f| &f.evidence),
            "quorum": preview.finding.as_ref().and_then(|f| f.quorum),
            "plan": preview.steps,
            "in_cooldown": preview.in_cooldown,
            "dry_run": preview.dry_run,
        }),
        Err(reason) => json!({ "skipped": reason.to_string() }),
    }))
}

async fn webhook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let metrics = &app.remediator.metrics;
    let payload = read_payload(&app, &headers, body, |outcome| {
        metrics.count_webhook(outcome)
    })
    .await?;
    // Decided in a task of its own: Alertmanager hangs up after its timeout (10 s by
    // default), and a decision that takes longer (etcd on a stalling disk answers every
    // write in seconds) must still end, recorded, instead of being dropped mid-way with
    // the connection; the next webhook then finds it running, or its outcome.
    let decided = tokio::spawn(async move { decide(&app, payload).await });
    decided
        .await
        .map_err(|err| ApiError::Internal(format!("the webhook's decision failed: {err}")))
}

async fn decide(app: &Arc<App>, payload: Payload) -> (StatusCode, Json<Value>) {
    let metrics = &app.remediator.metrics;
    match app.gate.admit(&payload).await {
        Decision::Skip { reason, action_id } => {
            metrics.count_webhook("skipped");
            let mut answer = json!({ "skipped": reason.to_string() });
            // Busy is not a verdict: the remediator tries again itself while it fires.
            if let Some(retry) = app.retries.schedule(payload, &action_id, &reason) {
                answer["retry"] = json!(retry);
            }
            (StatusCode::OK, Json(answer))
        }
        Decision::Unrecorded { .. } => {
            metrics.count_webhook("failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "cannot write the audit log; not acting" })),
            )
        }
        Decision::Run(permit) => {
            metrics.count_webhook("started");
            let action_id = permit.action_id().to_owned();
            let answer = json!({
                "action_id": action_id,
                "diagnosis": permit.finding().diagnosis,
                "evidence": permit.finding().evidence,
                "plan": permit.steps(),
            });
            // Alertmanager gets its answer now; the run goes on in the background.
            let remediator = app.remediator.clone();
            tokio::spawn(async move { permit.run(&remediator).await });
            (StatusCode::ACCEPTED, Json(answer))
        }
    }
}

/// Starts a proof of every store's newest snapshot in the background: 202 with its
/// `action_id` (the audit log and `GET /actions` get its result, kind `snapshot_proof`),
/// 409 while one runs, 404 without a store.
async fn proof(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_token(&app, &headers)?;
    let Some(prover) = &app.prover else {
        return Err(ApiError::NotFound(
            "no --snapshot-store: nothing to prove".into(),
        ));
    };
    match prover.start() {
        Some(action_id) => Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({ "action_id": action_id, "stores": prover.stores.iter().map(|s| s.label()).collect::<Vec<_>>() }),
            ),
        )),
        None => Ok((
            StatusCode::CONFLICT,
            Json(json!({ "error": "a proof is already running" })),
        )),
    }
}

#[derive(Deserialize)]
struct ActionsQuery {
    limit: Option<usize>,
}

async fn actions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // It names endpoints, snapshots and errors: as private as the webhook.
    check_token(&app, &headers)?;
    // axum's own rejection is plain text; errors here are JSON.
    let Query(query) = query.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let limit = query.limit.unwrap_or(50).min(1000);
    Ok(Json(
        json!({ "actions": app.remediator.audit.actions(limit) }),
    ))
}
