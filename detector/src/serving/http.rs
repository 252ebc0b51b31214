//! The HTTP layer of `serve`: `GET /score` (every instance's latest window, or one
//! instance's with `?instance=`), `POST /score` (a given window), and `/healthz`,
//! `/readyz` and `/metrics`. The handlers read the request and encode the answer; the
//! scoring and its refusals are [`super::live`]'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use dr_common::http::{ApiError, ops_router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serving::live::{LiveScorer, ScoreResponse};

type AppState = Arc<LiveScorer>;

#[derive(Debug, Deserialize)]
struct ScoreQuery {
    instance: Option<String>,
}

async fn get_score(
    State(state): State<AppState>,
    Query(query): Query<ScoreQuery>,
) -> Result<Json<Value>, ApiError> {
    let live = state.latest().await?;
    if let Some(wanted) = query.instance {
        return to_json(live.instance(&wanted)?);
    }
    let ranked = live.ranked(&state.scorer.bundle.meta.features[0].query)?;
    // The fleet answer: the worst instance's fields on top (what an alert confirmation
    // needs), every instance listed below. `ranked` is never empty: it refuses instead.
    let mut top = to_value(ranked[0])?;
    if let Value::Object(map) = &mut top {
        map.insert("instances".into(), to_value(&ranked)?);
        map.insert(
            "unscorable".into(),
            live.refused
                .iter()
                .map(|(instance, why)| {
                    serde_json::json!({ "instance": instance, "error": why.message() })
                })
                .collect(),
        );
    }
    Ok(Json(top))
}

fn to_json(response: &ScoreResponse) -> Result<Json<Value>, ApiError> {
    to_value(response).map(Json)
}

fn to_value(value: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value)
        .map_err(|err| ApiError::Internal(format!("encoding the response: {err}")))
}

/// `POST /score`'s body: one window, without the instance's history. A format 2 model
/// scores it against the pooled reference baseline stored in model.json (`normalisation`),
/// not against that instance's own baseline as eval (and, later, `GET /score`) do, so the
/// same window may score differently there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    window: Vec<Vec<f64>>,
    /// Optional per-step defrag mask.
    #[serde(default)]
    mask: Option<Vec<bool>>,
}

async fn post_score(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("the body is over the limit: {rejection}"))
        } else {
            ApiError::BadRequest(format!("cannot read the body: {rejection}"))
        }
    })?;
    let request: ScoreRequest = serde_json::from_slice(&body).map_err(|err| {
        // serde quotes the client's own field names; escape them so the reason stays one line.
        let reason: String = err
            .to_string()
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        ApiError::BadRequest(format!(
            "the body is not {{\"window\": [[number; {}]; {}]}}: {reason}",
            state.scorer.n_features(),
            state.scorer.window()
        ))
    })?;
    to_json(&state.score_posted(&request.window, request.mask)?)
}

/// The service: `/score`, and `/healthz`, `/readyz` and `/metrics` (over `registry`,
/// where `LiveScorer::new` registered the detector's metrics).
pub fn app(state: AppState, registry: Registry, body_limit: usize) -> Router {
    let ops = ops_router(state.readiness().clone(), Arc::new(registry));
    Router::new()
        .route("/score", get(get_score).post(post_score))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
        .merge(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::live::tests::{F, W, closed_port_url, live_scorer};
    use axum::body::Body;
    use axum::http::Request;
    use std::time::{Duration, Instant};
    use tower::ServiceExt;

    /// A detector with a small random model, pointed at `prometheus_url`.
    fn detector(prometheus_url: &str) -> (Router, AppState) {
        detector_with_timeout(prometheus_url, Duration::from_secs(2))
    }

    fn detector_with_timeout(prometheus_url: &str, timeout: Duration) -> (Router, AppState) {
        let mut registry = Registry::default();
        let state = live_scorer(prometheus_url, timeout, &mut registry);
        (app(state.clone(), registry, 4096), state)
    }

    async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    fn post(body: impl Into<Body>) -> Request<Body> {
        Request::post("/score")
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap()
    }

    fn window_json(steps: usize, features: usize) -> String {
        let rows: Vec<Vec<f64>> = (0..steps)
            .map(|t| (0..features).map(|j| (t + j) as f64 * 0.1).collect())
            .collect();
        serde_json::json!({ "window": rows }).to_string()
    }

    #[tokio::test]
    async fn post_score_answers_the_contract_fields() {
        let (router, _) = detector(&closed_port_url());
        let (status, body) = call(&router, post(window_json(W, F))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["score"].as_f64().unwrap() >= 0.0);
        assert_eq!(body["threshold"], 1.0);
        assert_eq!(body["step_seconds"], 2.0);
        assert_eq!(body["model"], "test");
        assert!(body["anomalous"].is_boolean());
        let shares = body["feature_shares"].as_object().unwrap();
        assert_eq!(shares.len(), F);
        let total: f64 = shares.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[tokio::test]
    async fn bad_windows_get_a_4xx_json_error_and_the_service_keeps_serving() {
        let (router, _) = detector(&closed_port_url());
        let cases: Vec<(String, StatusCode, &str)> = vec![
            (
                window_json(W - 1, F),
                StatusCode::BAD_REQUEST,
                "needs exactly 6",
            ),
            (
                window_json(W, F + 1),
                StatusCode::BAD_REQUEST,
                "step 0 has 4 values",
            ),
            (r#"{"window": []}"#.into(), StatusCode::BAD_REQUEST, "empty"),
            (
                "{\"window\": [[1, 2".into(),
                StatusCode::BAD_REQUEST,
                "not {\"window\"",
            ),
            (
                r#"{"window": [[1e999, 0, 0]]}"#.into(),
                StatusCode::BAD_REQUEST,
                "not {\"window\"",
            ),
            (
                r#"{"window": [[null, 0, 0]]}"#.into(),
                StatusCode::BAD_REQUEST,
                "not {\"window\"",
            ),
            (
                "x".repeat(5000),
                StatusCode::PAYLOAD_TOO_LARGE,
                "over the limit",
            ),
        ];
        for (body, want, needle) in cases {
            let (status, answer) = call(&router, post(body.clone())).await;
            assert_eq!(status, want, "{body:.60}: {answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{body:.60}: {error}");
        }
        let (status, _) = call(&router, post(window_json(W, F))).await;
        assert_eq!(status, StatusCode::OK, "still serving after bad input");
    }

    #[tokio::test]
    async fn a_fully_masked_window_is_refused_and_a_mask_of_the_wrong_length_too() {
        let (router, _) = detector(&closed_port_url());
        let rows = vec![vec![0.0; F]; W];
        let all = serde_json::json!({ "window": rows, "mask": vec![true; W] }).to_string();
        let (status, body) = call(&router, post(all)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("masked"), "{body}");
        let short = serde_json::json!({ "window": rows, "mask": [true] }).to_string();
        let (status, _) = call(&router, post(short)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn get_score_without_prometheus_is_503_naming_it() {
        let url = closed_port_url();
        let (router, state) = detector(&url);
        let request = Request::get("/score").body(Body::empty()).unwrap();
        let (status, body) = call(&router, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("prometheus") && error.contains(&url),
            "{error}"
        );
        // A failed refresh keeps /readyz red with the reason.
        state.refresh().await;
        let (status, body) = call(
            &router,
            Request::get("/readyz").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"].as_str().unwrap().contains(&url), "{body}");
    }

    #[tokio::test]
    async fn get_score_with_a_silent_prometheus_is_503_within_the_timeout() {
        // Accepts connections (the kernel backlog does) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let (router, _) = detector_with_timeout(&url, Duration::from_millis(300));
        let started = Instant::now();
        let request = Request::get("/score").body(Body::empty()).unwrap();
        let (status, body) = call(&router, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&url) && error.contains("within 300ms"),
            "{error}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn serves_over_real_tcp_with_metrics() {
        let (router, _) = detector(&closed_port_url());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(dr_common::http::serve(
            listener,
            router,
            Duration::from_secs(5),
            async {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let answer = client
            .post(format!("http://{addr}/score"))
            .body(window_json(W, F))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert!(body["score"].is_number());
        let metrics = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("etcd_dr_anomaly_threshold 1.0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("etcd_dr_detector_inference_duration_seconds_count 1"),
            "{metrics}"
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("drained within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// Property tests of `POST /score` through the router, in process: arbitrary bodies
/// (bytes, JSON of any shape, windows of the right shape with any numbers and masks)
/// against the small test model and the shipped format 2 model. Never a 5xx; every 4xx a
/// JSON `{"error": "..."}` on one line (serde quotes an unknown field's name as it came,
/// so control characters are escaped); every 200 a finite score. 256 cases each by default;
/// `PROPTEST_CASES` sets the count (`ci/fuzz-long.sh`).
#[cfg(test)]
mod props {
    use super::*;
    use crate::model::inference::Scorer;
    use crate::model::model_dir::ModelBundle;
    use crate::prometheus::PromClient;
    use crate::serving::live::LiveScorer;
    use crate::serving::live::tests::{F, W, closed_port_url, live_scorer};
    use axum::body::Body;
    use axum::http::Request;
    use proptest::prelude::*;
    use proptest::test_runner::{TestCaseError, TestRunner};
    use serde_json::json;
    use std::time::Duration;
    use tower::ServiceExt;

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// The test model (6 steps of 3 features) behind a 4 KiB body limit.
    fn test_app() -> Router {
        let mut registry = Registry::default();
        let state = live_scorer(&closed_port_url(), Duration::from_secs(2), &mut registry);
        app(state, registry, 4096)
    }

    /// The shipped model (format 2) behind a 1 MiB body limit; its window and features.
    fn shipped_app() -> (Router, usize, usize) {
        let mut registry = Registry::default();
        let scorer = Scorer::new(ModelBundle::default_model().unwrap()).unwrap();
        let (window, features) = (scorer.window(), scorer.n_features());
        let prometheus = PromClient::new(&closed_port_url(), Duration::from_secs(2)).unwrap();
        let state = Arc::new(LiveScorer::new(
            scorer,
            prometheus,
            2,
            Duration::from_secs(10),
            &mut registry,
        ));
        (app(state, registry, 1 << 20), window, features)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_field_named_with_a_newline_is_refused_on_one_line() {
        let runtime = runtime();
        check(&runtime, &test_app(), br#"{"\n": null}"#.to_vec(), true).unwrap();
    }

    /// Posts `body` and checks the contract on the answer.
    fn check(
        runtime: &tokio::runtime::Runtime,
        router: &Router,
        body: Vec<u8>,
        content_type: bool,
    ) -> Result<(), TestCaseError> {
        let mut request = Request::post("/score");
        if content_type {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Body::from(body)).unwrap();
        let (status, bytes) = runtime.block_on(async {
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
                .await
                .unwrap();
            (status, bytes)
        });
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(!status.is_server_error(), "{status}: {text}");
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|err| TestCaseError::fail(format!("{status}: not JSON ({err}): {text}")))?;
        if status.is_client_error() {
            let error = answer["error"].as_str().unwrap_or_default();
            prop_assert!(!error.is_empty(), "{status}: no error: {text}");
            prop_assert!(!error.contains('\n'), "{status}: not one line: {text}");
        } else {
            prop_assert_eq!(status, StatusCode::OK, "{}", text);
            let score = answer["score"].as_f64();
            prop_assert!(
                score.is_some_and(f64::is_finite),
                "200 without a finite score: {text}"
            );
        }
        Ok(())
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("JSON numbers are finite", |v| v.is_finite()),
            -10.0f64..10.0,
            prop::sample::select(vec![0.0, -0.0, 1e308, -1e308, 1e-308, f64::MAX, f64::MIN]),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            number().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "(?s).{0,12}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec!["window", "mask", "instance"]).prop_map(str::to_owned),
            "(?s).{0,8}",
        ];
        leaf().prop_recursive(4, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// `{"window": ...}` of the right shape mostly, a step or a value off otherwise, with
    /// any numbers and, sometimes, a mask of any bools.
    fn window_body(steps: usize, features: usize) -> impl Strategy<Value = Value> {
        let exact = prop::collection::vec(prop::collection::vec(number(), features), steps);
        let off = prop::collection::vec(
            prop::collection::vec(number(), features.saturating_sub(1)..=features + 1),
            steps.saturating_sub(1)..=steps + 1,
        );
        let rows = prop_oneof![4 => exact, 1 => off];
        let mask = prop::option::of(prop_oneof![
            4 => prop::collection::vec(any::<bool>(), steps),
            1 => prop::collection::vec(any::<bool>(), steps + 1),
        ]);
        (rows, mask).prop_map(|(window, mask)| match mask {
            Some(mask) => json!({ "window": window, "mask": mask }),
            None => json!({ "window": window }),
        })
    }

    fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
        let mut runner = TestRunner::new(config());
        if let Err(err) = runner.run(&strategy, test) {
            panic!("{err}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_get_a_5xx() {
        let (runtime, router) = (runtime(), test_app());
        run(
            (prop::collection::vec(any::<u8>(), 0..600), any::<bool>()),
            |(body, content_type)| check(&runtime, &router, body, content_type),
        );
    }

    #[test]
    fn arbitrary_json_never_gets_a_5xx() {
        let (runtime, router) = (runtime(), test_app());
        run(json_value(), |value| {
            check(&runtime, &router, value.to_string().into_bytes(), true)
        });
    }

    #[test]
    fn windows_with_any_numbers_never_get_a_5xx() {
        let (runtime, router) = (runtime(), test_app());
        run(window_body(W, F), |value| {
            check(&runtime, &router, value.to_string().into_bytes(), true)
        });
    }

    #[test]
    fn windows_with_any_numbers_never_get_a_5xx_from_the_shipped_model() {
        let runtime = runtime();
        let (router, window, features) = shipped_app();
        run(window_body(window, features), |value| {
            check(&runtime, &router, value.to_string().into_bytes(), true)
        });
    }
}
