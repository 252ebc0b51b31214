//! HTTP scaffolding every service shares: `/healthz`, `/readyz`, `/metrics`, one JSON
//! error type, and a server loop that drains on shutdown with a deadline per request.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;

/// An error as a client sees it: a status and a short message in `{"error": "..."}`.
/// Server-side faults are logged here; client mistakes are not (they are not ours).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{dependency} unavailable: {message}")]
    Unavailable { dependency: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Whether a service can do its job now; `None` means ready, `Some(reason)` says what
/// it is still waiting for, so `/readyz` can name it. A ready service may carry a note
/// (`/readyz` shows it): what works only in part.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<Mutex<ReadyState>>);

#[derive(Clone, Debug, Default)]
struct ReadyState {
    not_ready: Option<String>,
    note: Option<String>,
}

impl Readiness {
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Readiness(Arc::new(Mutex::new(ReadyState {
            not_ready: Some(reason.into()),
            note: None,
        })))
    }

    pub fn set_ready(&self) {
        *self.lock() = ReadyState::default();
    }

    /// Ready, with `note` on `/readyz`.
    pub fn set_ready_noting(&self, note: impl Into<String>) {
        *self.lock() = ReadyState {
            not_ready: None,
            note: Some(note.into()),
        };
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = ReadyState {
            not_ready: Some(reason.into()),
            note: None,
        };
    }

    /// `Err(reason)` while not ready.
    pub fn check(&self) -> Result<(), String> {
        match &self.lock().not_ready {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// The note of a ready service, if any.
    pub fn note(&self) -> Option<String> {
        self.lock().note.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        // A poisoned flag is still a valid flag: recover the value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

/// `/healthz`, `/readyz` and `/metrics` for a service; merge it with the service's routes.
pub fn ops_router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            readiness,
            registry,
        })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<OpsState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.readiness.check() {
        Ok(()) => Ok(Json(match state.readiness.note() {
            Some(note) => json!({ "status": "ready", "note": note }),
            None => json!({ "status": "ready" }),
        })),
        Err(reason) => Err(ApiError::Unavailable {
            dependency: "service".into(),
            message: format!("not ready: {reason}"),
        }),
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(err) => ApiError::Internal(format!("encoding metrics: {err}")).into_response(),
    }
}

/// Answers every unknown path with a JSON 404 rather than an empty body.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Answers a known path with the wrong method with a JSON 405.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
}

/// Bounds every request by `limit`: a request still running then is dropped and answered
/// with a JSON 503 (the server, not the client, ran out of time).
async fn bounded(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            dependency: "server".into(),
            message: format!("no answer within {}", humantime::format_duration(limit)),
        }
        .into_response(),
    }
}

/// The layers every service's router gets: JSON answers for unknown paths and wrong
/// methods, and a deadline per request so a slow request cannot hold a drain open.
pub fn finish(router: Router, request_timeout: Duration) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(request_timeout, bounded))
}

/// Serves `router` on `listener` (a `TcpListener`, or an [`https::TlsListener`](crate::https::TlsListener)) until `shutdown` resolves, then drains. Every request is
/// bounded by `request_timeout`.
pub async fn serve<L>(
    listener: L,
    router: Router,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, finish(router, request_timeout))
        .with_graceful_shutdown(shutdown)
        .await
}

/// [`serve`] in its own task, draining once `stop` (see [`crate::shutdown::flag`]) turns
/// true, so the service's own loop can watch the same flag.
pub fn spawn_serve<L>(
    listener: L,
    router: Router,
    request_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(serve(listener, router, request_timeout, async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get_status(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_what_it_waits_for_then_turns_ready() {
        let readiness = Readiness::not_ready("no successful push yet");
        let router = ops_router(readiness.clone(), Arc::new(Registry::default()));
        let (status, body) = get_status(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no successful push yet"), "{body}");
        readiness.set_ready();
        let (status, _) = get_status(router, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_serves_the_registry() {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc();
        registry.register("etcd_dr_example", "An example", counter);
        let router = ops_router(Readiness::not_ready("x"), Arc::new(registry));
        let (status, body) = get_status(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("etcd_dr_example_total 1"), "{body}");
    }

    #[tokio::test]
    async fn slow_requests_wrong_methods_and_unknown_paths_get_json() {
        let router = finish(
            Router::new().route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            ),
            Duration::from_millis(50),
        );
        let (status, body) = get_status(router.clone(), "/slow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no answer within 50ms"), "{body}");
        let (status, body) = get_status(router.clone(), "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.starts_with("{\"error\""), "{body}");
        let response = router
            .oneshot(Request::post("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("method not allowed"));
    }

    #[tokio::test]
    async fn a_spawned_server_answers_over_tcp_and_drains_when_the_flag_turns() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let router = ops_router(Readiness::not_ready("x"), Arc::new(Registry::default()));
        let server = spawn_serve(listener, router, Duration::from_secs(5), stop);
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server did not drain")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn errors_map_to_fitting_statuses() {
        let unavailable = ApiError::Unavailable {
            dependency: "prometheus".into(),
            message: "connection refused".into(),
        };
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            unavailable.to_string(),
            "prometheus unavailable: connection refused"
        );
        assert_eq!(
            ApiError::PayloadTooLarge("x".into()).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
