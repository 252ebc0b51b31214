//! `serve`: `GET /score` (live windows from Prometheus, per instance), `POST /score` (a
//! given window), and `/metrics` with the scores refreshed in the background. A finished
//! pull from Prometheus is answered again for its window: the refresh and every `GET /score`
//! within one step share it (so a Prometheus that just went away shows as a 503 from the
//! next step on). Requests that arrive while a pull is under way pull for themselves, so
//! each gets its own 503 within the timeout rather than queueing behind a dead Prometheus.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use dr_common::http::{ApiError, Readiness, ops_router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::inference::Scorer;
use crate::model::scoring::Score;
use crate::serving::freshness::{self, Verdict};
use crate::serving::pull::{self, InstanceWindow, PromClient};

type Labels = Vec<(String, String)>;

/// The detector's own metrics.
#[derive(Clone)]
pub struct Metrics {
    score: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The instances that have a score gauge, so a refresh removes just the ones that lost
    /// their score (clearing all would leave a scrape between clear and set with none).
    scored: Arc<Mutex<BTreeSet<String>>>,
    threshold: Gauge<f64, AtomicU64>,
    inference: Histogram,
    refreshes: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            score: Family::default(),
            scored: Arc::default(),
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

    fn score_labels(instance: &str) -> Labels {
        vec![("instance".to_string(), instance.to_string())]
    }

    /// Sets the gauge of every scored instance and removes the gauges of instances that
    /// have none now (vanished, or unscorable), so an alert never fires on a stale value.
    pub fn set_scores(&self, scores: &[(String, f64)]) {
        let mut scored = self
            .scored
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now: BTreeSet<String> = scores.iter().map(|(i, _)| i.clone()).collect();
        for gone in scored.difference(&now) {
            self.score.remove(&Self::score_labels(gone));
        }
        for (instance, score) in scores {
            self.score
                .get_or_create(&Self::score_labels(instance))
                .set(*score);
        }
        *scored = now;
    }
}

/// Why an instance has no score; each maps to the status `/score` answers with.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Too few points for a window, or a window that cannot be scored (422).
    Window(String),
    /// Its series arrive coarser than the model's step (422); while no instance scores
    /// for this, `/readyz` says so too: the set-up, not the moment, is wrong.
    StepMismatch(String),
    /// Its collector stopped pushing: a dead dependency (503 naming the collector).
    StaleCollector(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Window(m) | Refusal::StepMismatch(m) | Refusal::StaleCollector(m) => m,
        }
    }

    fn into_api_error(self) -> ApiError {
        match self {
            Refusal::Window(m) | Refusal::StepMismatch(m) => ApiError::Unprocessable(m),
            Refusal::StaleCollector(message) => ApiError::Unavailable {
                dependency: "collector".into(),
                message,
            },
        }
    }
}

/// What one pull from Prometheus gave: scored instances, refused ones with the reason,
/// and the window's end.
#[derive(Debug)]
pub struct Live {
    pub scored: Vec<ScoreResponse>,
    pub refused: Vec<(String, Refusal)>,
    pub end: f64,
}

/// Everything a handler needs.
pub struct Detector {
    pub scorer: Scorer,
    /// Its timeout bounds one whole pull (all queries).
    prometheus: PromClient,
    max_gap_steps: usize,
    /// Instances whose last push is older get no score; zero turns the check off.
    max_push_age: Duration,
    metrics: Metrics,
    readiness: Readiness,
    /// The latest pull, answered again for its window: the background refresh and every
    /// `GET /score` within one step ask Prometheus once. Failures are not kept.
    last_pull: Mutex<Option<Arc<Live>>>,
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
    /// A detector not yet ready (no answer from Prometheus yet), its metrics registered
    /// in `registry` with the model's threshold set.
    pub fn new(
        scorer: Scorer,
        prometheus: PromClient,
        max_gap_steps: usize,
        max_push_age: Duration,
        registry: &mut Registry,
    ) -> Detector {
        let metrics = Metrics::register(registry);
        metrics.threshold.set(scorer.threshold());
        Detector {
            scorer,
            prometheus,
            max_gap_steps,
            max_push_age,
            metrics,
            readiness: Readiness::not_ready("no answer from Prometheus yet"),
            last_pull: Mutex::default(),
        }
    }

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

    /// Every instance's latest window, scored.
    async fn score_live(&self) -> Result<Arc<Live>, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|err| ApiError::Internal(format!("clock before 1970: {err}")))?
            .as_secs_f64();
        self.live_at(pull::window_end(now, self.scorer.bundle.meta.step_seconds))
            .await
    }

    /// The scores of the windows ending at `end`: the latest pull's when it was for that
    /// window, a new pull otherwise.
    async fn live_at(&self, end: f64) -> Result<Arc<Live>, ApiError> {
        let lock = || {
            self.last_pull
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(live) = lock().as_ref().filter(|live| live.end == end) {
            return Ok(live.clone());
        }
        // Not held across the pull: a slow Prometheus must not queue requests behind it.
        let live = Arc::new(self.pull(end).await?);
        let mut last = lock();
        if last.as_ref().is_none_or(|kept| kept.end < end) {
            *last = Some(live.clone());
        }
        Ok(live)
    }

    /// Pulls and scores every instance's window ending at `end`.
    async fn pull(&self, end: f64) -> Result<Live, ApiError> {
        let meta = &self.scorer.bundle.meta;
        let step = meta.step_seconds;
        let timeout = self.prometheus.timeout();
        let unavailable = |message: String| ApiError::Unavailable {
            dependency: "prometheus".into(),
            message,
        };
        let started = Instant::now();
        let fetched = tokio::time::timeout(timeout, self.prometheus.fetch(meta, end))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "{} did not answer within {}",
                    self.prometheus.url(),
                    humantime::format_duration(timeout)
                ))
            })?
            .map_err(|err| unavailable(err.to_string()))?;
        let mut scored = Vec::new();
        let mut refused = Vec::new();
        for (instance, window) in pull::assemble(meta, &fetched, self.max_gap_steps) {
            let pushes = fetched.pushes_of(&instance);
            let verdict =
                freshness::judge_pushes(&instance, &pushes, step, fetched.end, self.max_push_age);
            let window = match (verdict, window) {
                (Verdict::Stale(why), _) => Err(Refusal::StaleCollector(why)),
                (Verdict::StepMismatch(why), _) => Err(Refusal::StepMismatch(why)),
                // Scraped directly (no push times): gaps may still come from a coarse
                // scrape interval, which only `up` shows. Asked only when needed, and only
                // a diagnosis: if it fails, the gap message stands.
                (Verdict::Fresh, Err(gaps)) if pushes.is_empty() => {
                    let left = timeout.saturating_sub(started.elapsed());
                    let up = tokio::time::timeout(
                        left,
                        self.prometheus.up_samples(&instance, fetched.end, step),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                    match freshness::judge_scrapes(&instance, &up, step) {
                        Some(why) => Err(Refusal::StepMismatch(why)),
                        None => Err(Refusal::Window(gaps)),
                    }
                }
                (Verdict::Fresh, window) => window.map_err(Refusal::Window),
            };
            let result = window.and_then(|w: InstanceWindow| {
                self.score_timed(&w.values, &w.mask)
                    .map(|s| (s, w.filled_points))
                    .map_err(|err| Refusal::Window(format!("instance {instance}: {err}")))
            });
            match result {
                Ok((score, filled)) => {
                    let mut response = self.response(score, Some(instance), Some(fetched.end));
                    response.filled_points = Some(filled);
                    scored.push(response);
                }
                Err(why) => refused.push((instance, why)),
            }
        }
        Ok(Live {
            scored,
            refused,
            end: fetched.end,
        })
    }

    /// One background refresh: scores to gauges; instances without a score lose their
    /// gauge, so an alert never fires on a stale value. Not ready while a wrong set-up
    /// (data coarser than the model's step) leaves no instance scorable.
    pub async fn refresh(&self) {
        match self.score_live().await {
            Ok(live) => {
                let scores: Vec<(String, f64)> = live
                    .scored
                    .iter()
                    .filter_map(|s| s.instance.clone().map(|i| (i, s.score)))
                    .collect();
                self.metrics.set_scores(&scores);
                for (instance, why) in &live.refused {
                    tracing::warn!(%instance, reason = %why.message(), "cannot score instance");
                }
                self.metrics
                    .refreshes
                    .get_or_create(&vec![("result".to_string(), "success".to_string())])
                    .inc();
                let mismatch = live.refused.iter().find_map(|(_, why)| match why {
                    Refusal::StepMismatch(m) => Some(m),
                    _ => None,
                });
                match mismatch {
                    Some(why) if live.scored.is_empty() => self
                        .readiness
                        .set_not_ready(format!("no instance can be scored: {why}")),
                    _ => self.readiness.set_ready(),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "refresh failed");
                self.metrics.set_scores(&[]);
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
    let live = state.score_live().await?;
    let Live {
        scored,
        refused,
        end,
    } = &*live;
    if let Some(wanted) = query.instance {
        if let Some(one) = scored
            .iter()
            .find(|s| s.instance.as_deref() == Some(&wanted))
        {
            return to_json(one);
        }
        if let Some((_, why)) = refused.iter().find(|(i, _)| *i == wanted) {
            return Err(why.clone().into_api_error());
        }
        let known: Vec<&str> = scored
            .iter()
            .filter_map(|s| s.instance.as_deref())
            .chain(refused.iter().map(|(i, _)| i.as_str()))
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
        let reasons: Vec<&str> = refused.iter().map(|(_, why)| why.message()).collect();
        if reasons.is_empty() {
            return Err(ApiError::Unprocessable(format!(
                "Prometheus returned no series for the model's queries in the window ending at {end}; is etcd scraped? first query: {}",
                state.scorer.bundle.meta.features[0].query
            )));
        }
        let message = reasons.join("; ");
        // Every collector dead: that dependency is the answer. Mixed reasons: all of them.
        let all_stale = refused
            .iter()
            .all(|(_, why)| matches!(why, Refusal::StaleCollector(_)));
        return Err(if all_stale {
            ApiError::Unavailable {
                dependency: "collector".into(),
                message,
            }
        } else {
            ApiError::Unprocessable(message)
        });
    }
    // The fleet answer: the worst instance's fields on top (what an alert confirmation
    // needs), every instance listed below.
    let mut ranked: Vec<&ScoreResponse> = scored.iter().collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut top = to_value(ranked[0])?;
    if let Value::Object(map) = &mut top {
        map.insert("instances".into(), to_value(&ranked)?);
        map.insert(
            "unscorable".into(),
            refused
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

/// The service: `/score`, and `/healthz`, `/readyz` and `/metrics` (over `registry`,
/// where `Detector::new` registered the detector's metrics).
pub fn app(state: AppState, registry: Registry, body_limit: usize) -> Router {
    let ops = ops_router(state.readiness.clone(), Arc::new(registry));
    Router::new()
        .route("/score", get(get_score).post(post_score))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
        .merge(ops)
}

/// Refreshes the score gauges every `every` until the process stops.
pub async fn refresh_loop(state: AppState, every: Duration) {
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
    use crate::model::lstm::{init_varmap, varmap_to_safetensors};
    use crate::model::model_dir::ModelBundle;
    use crate::model::model_dir::tests::meta;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const W: usize = 6;
    const F: usize = 3;

    /// A detector with a small random model, pointed at `prometheus_url`.
    fn detector(prometheus_url: &str) -> (Router, AppState) {
        detector_with_timeout(prometheus_url, Duration::from_secs(2))
    }

    fn detector_with_timeout(prometheus_url: &str, timeout: Duration) -> (Router, AppState) {
        let m = meta(F, 4, W);
        let weights = varmap_to_safetensors(&init_varmap(&m.architecture, 1).unwrap()).unwrap();
        let scorer = Scorer::new(ModelBundle {
            meta: m,
            weights,
            source: "test".into(),
        })
        .unwrap();
        let mut registry = Registry::default();
        let state = Arc::new(Detector::new(
            scorer,
            PromClient::new(prometheus_url, timeout).unwrap(),
            2,
            Duration::from_secs(10),
            &mut registry,
        ));
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

    /// A loopback port with nothing listening on it.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
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
    async fn a_window_already_pulled_is_answered_again_without_asking_prometheus() {
        // Nothing listens there: only the kept pull can answer for its window.
        let (_, state) = detector(&closed_port_url());
        let end = 1_700_000_000.0;
        let kept = Arc::new(Live {
            scored: Vec::new(),
            refused: vec![("etcd-1".into(), Refusal::Window("too few points".into()))],
            end,
        });
        *state.last_pull.lock().unwrap() = Some(kept.clone());
        let again = state.live_at(end).await.unwrap();
        assert!(Arc::ptr_eq(&kept, &again));
        // The next window is pulled; a failed pull is not kept.
        let err = state.live_at(end + 2.0).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE, "{err}");
        let still = state.last_pull.lock().unwrap().clone().unwrap();
        assert!(Arc::ptr_eq(&kept, &still));
    }

    #[test]
    fn a_refresh_keeps_the_gauges_of_instances_still_scored_and_drops_the_rest() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let encoded = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        metrics.set_scores(&[("a".into(), 0.5), ("b".into(), 0.7)]);
        // A handle on a's series, as a scrape in progress would hold it: a round that
        // re-creates the series (clear, then set) would leave it behind.
        let a = metrics
            .score
            .get_or_create(&Metrics::score_labels("a"))
            .clone();
        metrics.set_scores(&[("a".into(), 0.9)]);
        assert_eq!(a.get(), 0.9, "a's series was replaced, not updated");
        let text = encoded();
        assert!(
            text.contains("etcd_dr_anomaly_score{instance=\"a\"} 0.9"),
            "{text}"
        );
        assert!(!text.contains("instance=\"b\""), "{text}");
        metrics.set_scores(&[]);
        assert!(!encoded().contains("instance=\"a\""));
    }

    #[test]
    fn refusals_map_to_the_contract_statuses() {
        let stale = Refusal::StaleCollector("instance x: last push 60s ago".into());
        let error = stale.into_api_error();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            error
                .to_string()
                .starts_with("collector unavailable: instance x")
        );
        for refusal in [
            Refusal::Window("too few points".into()),
            Refusal::StepMismatch("every 30s".into()),
        ] {
            assert_eq!(
                refusal.into_api_error().status(),
                StatusCode::UNPROCESSABLE_ENTITY
            );
        }
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
