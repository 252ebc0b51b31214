//! Why an HTTP request failed, in one line an operator can act on. reqwest's own message
//! ("error sending request") hides the reason in its source chain.

use std::error::Error as _;

/// Where a request went wrong, judged from reqwest's error and its sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A certificate or handshake problem: the fix is in the TLS files, not the network.
    Tls(String),
    Other(String),
}

impl Failure {
    /// The one-line reason, whatever the kind.
    pub fn detail(&self) -> &str {
        match self {
            Failure::Tls(detail) | Failure::Other(detail) => detail,
        }
    }
}

/// Joins an error's source chain into one line (each cause once) and says whether TLS
/// caused it. A timeout says "timed out". Call `without_url()` first to keep long query
/// URLs out of the line.
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
    if err.is_timeout() && !parts.iter().any(|p| p.contains("timed out")) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_refused_connection_names_the_cause_in_one_line() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", closed.local_addr().unwrap());
        drop(closed);
        let err = reqwest::get(&url).await.unwrap_err();
        let failure = describe(&err.without_url());
        assert!(matches!(failure, Failure::Other(_)), "{failure:?}");
        let detail = failure.detail().to_ascii_lowercase();
        // reqwest's own text is only "error sending request".
        assert!(detail.contains("refused"), "{detail}");
        assert!(
            !detail.contains('\n') && !detail.contains("/metrics"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts (the kernel backlog does) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = client.get(&url).send().await.unwrap_err();
        let detail = describe(&err).detail().to_string();
        assert_eq!(detail.matches("timed out").count(), 1, "{detail}");
        drop(silent);
    }

    #[test]
    fn tls_messages_are_recognised() {
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(looks_like_tls("received fatal alert: BadCertificate"));
        assert!(!looks_like_tls("Connection refused (os error 111)"));
    }
}
