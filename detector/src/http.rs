//! `serve`: `GET /score` (live windows from Prometheus, per instance), `POST /score` (a
//! given window), and `/metrics` with the scores refreshed in the background.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use dr_common::http::{ApiError, Readiness};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::inference::Scorer;
use crate::prometheus::{self, InstanceWindow, PromClient};
use crate::scoring::Score;

type Labels = Vec<(String, String)>;

/// The detector's own metrics.
#[derive(Clone)]
pub struct Metrics {
    score: Family<Labels, Gauge<f64, AtomicU64>>,
    threshold: Gauge<f64, AtomicU64>,
    inference: Histogram,
    refreshes: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            score: Family::default(),
            threshold: Gauge::default(),
            // 5 us .. ~20 ms: a fused forward is tens of microseconds.
            inference: Histogram::new(exponential_buckets(5e-6, 2.0, 12)),
            refreshes: Family::default(),
        };
        registry.register(
            "etcd_dr_anomaly_score",
            "Reconstruction error of the latest window per etcd instance",
            metrics.score.clone(),
        );
        registry.register(
            "etcd_dr_anomaly_threshold",
            "Score above which a window is anomalous",
            metrics.threshold.clone(),
        );
        registry.register(
            "etcd_dr_detector_inference_duration_seconds",
            "Time of one forward pass and scoring of a window",
            metrics.inference.clone(),
        );
        registry.register(
            "etcd_dr_detector_refreshes",
            "Background score refreshes by result",
            metrics.refreshes.clone(),
        );
        metrics
    }
}

/// Everything a handler needs.
pub struct Detector {
    pub scorer: Scorer,
    pub prometheus: PromClient,
    /// Bound on one whole pull from Prometheus (all queries).
    pub prometheus_timeout: Duration,
    pub max_gap_steps: usize,
    pub metrics: Metrics,
    pub readiness: Readiness,
}

type AppState = Arc<Detector>;

/// One scored window, as `/score` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub score: f64,
    pub threshold: f64,
    pub anomalous: bool,
    /// Unix seconds of the window's last step (absent for a posted window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<f64>,
    pub step_seconds: f64,
    pub model: String,
    /// Each feature's share of the error, by name.
    pub feature_shares: Map<String, Value>,
    pub masked_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled_points: Option<usize>,
}

impl Detector {
    fn score_timed(&self, values: &[f64], mask: &[bool]) -> Result<Score, ApiError> {
        let started = Instant::now();
        let result = self.scorer.score(values, mask);
        self.metrics
            .inference
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|err| ApiError::BadRequest(err.to_string()))
    }

    fn response(
        &self,
        score: Score,
        instance: Option<String>,
        window_end: Option<f64>,
    ) -> ScoreResponse {
        let meta = &self.scorer.bundle.meta;
        ScoreResponse {
            instance,
            anomalous: score.score > meta.threshold,
            score: score.score,
            threshold: meta.threshold,
            window_end,
            step_seconds: meta.step_seconds,
            model: self.scorer.bundle.source.clone(),
            feature_shares: meta
                .features
                .iter()
                .zip(&score.feature_shares)
                .map(|(f, s)| (f.name.clone(), Value::from(*s)))
                .collect(),
            masked_steps: score.masked_steps,
            filled_points: None,
        }
    }

    /// Pulls and scores every instance's latest window: `(scored, unscorable with why)`.
    async fn score_live(
        &self,
    ) -> Result<(Vec<ScoreResponse>, Vec<(String, String)>, f64), ApiError> {
        let meta = &self.scorer.bundle.meta;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|err| ApiError::Internal(format!("clock before 1970: {err}")))?
            .as_secs_f64();
        let fetched =
            tokio::time::timeout(self.prometheus_timeout, self.prometheus.fetch(meta, now))
                .await
                .map_err(|_| ApiError::Unavailable {
                    dependency: "prometheus".into(),
                    message: format!(
                        "{} did not answer within {}",
                        self.prometheus.url(),
                        humantime::format_duration(self.prometheus_timeout)
                    ),
                })?
                .map_err(|err| ApiError::Unavailable {
                    dependency: "prometheus".into(),
                    message: err.to_string(),
                })?;
        let mut scored = Vec::new();
        let mut unscorable = Vec::new();
        for (instance, window) in prometheus::assemble(meta, &fetched, self.max_gap_steps) {
            let result = window.and_then(|w: InstanceWindow| {
                self.score_timed(&w.values, &w.mask)
                    .map(|s| (s, w.filled_points))
                    .map_err(|err| format!("instance {instance}: {err}"))
            });
            match result {
                Ok((score, filled)) => {
                    let mut response = self.response(score, Some(instance), Some(fetched.end));
                    response.filled_points = Some(filled);
                    scored.push(response);
                }
                Err(why) => unscorable.push((instance, why)),
            }
        }
        Ok((scored, unscorable, fetched.end))
    }

    /// One background refresh: scores to gauges; instances without a score lose their
    /// gauge, so an alert never fires on a stale value.
    pub async fn refresh(&self) {
        match self.score_live().await {
            Ok((scored, unscorable, _)) => {
                self.metrics.score.clear();
                for s in &scored {
                    if let Some(instance) = &s.instance {
                        self.metrics
                            .score
                            .get_or_create(&vec![("instance".to_string(), instance.clone())])
                            .set(s.score);
                    }
                }
                for (instance, why) in &unscorable {
                    tracing::warn!(%instance, reason = %why, "cannot score instance");
                }
                self.metrics
                    .refreshes
                    .get_or_create(&vec![("result".to_string(), "success".to_string())])
                    .inc();
                self.readiness.set_ready();
            }
            Err(err) => {
                tracing::warn!(error = %err, "refresh failed");
                self.metrics.score.clear();
                self.metrics
                    .refreshes
                    .get_or_create(&vec![("result".to_string(), "failure".to_string())])
                    .inc();
                self.readiness.set_not_ready(err.to_string());
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ScoreQuery {
    instance: Option<String>,
}

async fn get_score(
    State(state): State<AppState>,
    Query(query): Query<ScoreQuery>,
) -> Result<Json<Value>, ApiError> {
    let (mut scored, unscorable, end) = state.score_live().await?;
    let meta = &state.scorer.bundle.meta;
    if let Some(wanted) = query.instance {
        if let Some(i) = scored
            .iter()
            .position(|s| s.instance.as_deref() == Some(&wanted))
        {
            return to_json(&scored.swap_remove(i));
        }
        if let Some((_, why)) = unscorable.iter().find(|(i, _)| *i == wanted) {
            return Err(ApiError::Unprocessable(why.clone()));
        }
        let known: Vec<&str> = scored
            .iter()
            .filter_map(|s| s.instance.as_deref())
            .chain(unscorable.iter().map(|(i, _)| i.as_str()))
            .collect();
        return Err(ApiError::Unprocessable(format!(
            "Prometheus has no points for instance {wanted} in the window ending at {end} (instances with data: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    if scored.is_empty() {
        let reasons: Vec<String> = unscorable.into_iter().map(|(_, why)| why).collect();
        return Err(ApiError::Unprocessable(if reasons.is_empty() {
            format!(
                "Prometheus returned no series for the model's queries in the window ending at {end}; is etcd scraped? first query: {}",
                meta.features[0].query
            )
        } else {
            reasons.join("; ")
        }));
    }
    // The fleet answer: the worst instance's fields on top (what an alert confirmation
    // needs), every instance listed below.
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut top = serde_json::to_value(&scored[0])
        .map_err(|err| ApiError::Internal(format!("encoding the response: {err}")))?;
    if let Value::Object(map) = &mut top {
        map.insert(
            "instances".into(),
            serde_json::to_value(&scored)
                .map_err(|err| ApiError::Internal(format!("encoding the response: {err}")))?,
        );
        map.insert(
            "unscorable".into(),
            unscorable
                .into_iter()
                .map(
                    |(instance, error)| serde_json::json!({ "instance": instance, "error": error }),
                )
                .collect(),
        );
    }
    Ok(Json(top))
}

fn to_json(response: &ScoreResponse) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(response)
        .map(Json)
        .map_err(|err| ApiError::Internal(format!("encoding the response: {err}")))
}

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
        ApiError::BadRequest(format!(
            "the body is not {{\"window\": [[number; {}]; {}]}}: {err}",
            state.scorer.n_features(),
            state.scorer.window()
        ))
    })?;
    let values = state
        .scorer
        .check_window(&request.window)
        .map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let mask = match request.mask {
        Some(mask) if mask.len() != state.scorer.window() => {
            return Err(ApiError::BadRequest(format!(
                "mask has {} steps; the window has {}",
                mask.len(),
                state.scorer.window()
            )));
        }
        Some(mask) => mask,
        None => vec![false; state.scorer.window()],
    };
    let score = state.score_timed(&values, &mask)?;
    to_json(&state.response(score, None, None))
}

/// The service's routes; merge with `dr_common::http::ops_router`.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/score", get(get_score).post(post_score))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Refreshes the score gauges every `every` until the process stops.
pub async fn refresh_loop(state: AppState, every: Duration) {
    state.metrics.threshold.set(state.scorer.threshold());
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.refresh().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{init_varmap, varmap_to_safetensors};
    use crate::model_dir::ModelBundle;
    use crate::model_dir::tests::meta;
    use axum::body::Body;
    use axum::http::Request;
    use dr_common::http::ops_router;
    use tower::ServiceExt;

    const W: usize = 6;
    const F: usize = 3;

    /// A detector with a small random model, pointed at `prometheus_url`.
    fn app(prometheus_url: &str) -> (Router, AppState) {
        app_with_timeout(prometheus_url, Duration::from_secs(2))
    }

    fn app_with_timeout(prometheus_url: &str, timeout: Duration) -> (Router, AppState) {
        let m = meta(F, 4, W);
        let weights = varmap_to_safetensors(&init_varmap(&m.architecture, 1).unwrap()).unwrap();
        let scorer = Scorer::new(ModelBundle {
            meta: m,
            weights,
            source: "test".into(),
        })
        .unwrap();
        let mut registry = Registry::default();
        let readiness = Readiness::not_ready("no answer from Prometheus yet");
        let state = Arc::new(Detector {
            scorer,
            prometheus: PromClient::new(prometheus_url, timeout).unwrap(),
            prometheus_timeout: timeout,
            max_gap_steps: 2,
            metrics: Metrics::register(&mut registry),
            readiness: readiness.clone(),
        });
        let router = router(state.clone(), 4096).merge(ops_router(readiness, Arc::new(registry)));
        (router, state)
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

    /// A loopback port with nothing listening on it.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn post_score_answers_the_contract_fields() {
        let (router, _) = app(&closed_port_url());
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
        let (router, _) = app(&closed_port_url());
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
        let (router, _) = app(&closed_port_url());
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
        let (router, state) = app(&url);
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
        let (router, _) = app_with_timeout(&url, Duration::from_millis(300));
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
        let (router, state) = app(&closed_port_url());
        state.metrics.threshold.set(state.scorer.threshold());
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
        let client = reqwest::Client::new();
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
        server.await.unwrap().unwrap();
    }
}
