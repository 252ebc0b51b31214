//! Why a scrape or a push failed, in one line an operator can act on.

use std::error::Error as _;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("scrape {url}: etcd unreachable: {detail}")]
    EtcdUnreachable { url: String, detail: String },
    #[error("scrape {url}: TLS failure: {detail}")]
    EtcdTls { url: String, detail: String },
    #[error("scrape {url}: HTTP {status}: {body}")]
    EtcdStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("scrape {url}: not an exposition page: {detail}")]
    NotExposition { url: String, detail: String },
    #[error("push {url}: Pushgateway unreachable: {detail}")]
    PushgatewayUnreachable { url: String, detail: String },
    #[error("push {url}: Pushgateway refused with HTTP {status}: {body}")]
    PushgatewayRefused {
        url: String,
        status: u16,
        body: String,
    },
}

/// Where a request went wrong, judged from reqwest's error and its sources.
pub enum Failure {
    Tls(String),
    Other(String),
}

/// Joins an error's source chain into one line and says whether TLS caused it, because
/// reqwest's own message ("error sending request") hides the reason.
pub fn describe(err: &reqwest::Error) -> Failure {
    let mut parts = Vec::new();
    let mut tls = false;
    let mut source: Option<&dyn std::error::Error> = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if looks_like_tls(&text) {
            tls = true;
        }
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if err.is_timeout() {
        parts.push("timed out".into());
    }
    let detail = if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    };
    if tls {
        Failure::Tls(detail)
    } else {
        Failure::Other(detail)
    }
}

/// rustls' error types are not reachable through reqwest's public API, so its messages
/// ("invalid peer certificate: UnknownIssuer", "received fatal alert: ...") are matched.
fn looks_like_tls(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "fatal alert",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}
