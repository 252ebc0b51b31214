//! How the loadgen talks to etcd: a client with proof that etcd answers ([`connect`]), and
//! names for the ways a request fails, as counted in the summary.

use etcd_client::{Client, StatusResponse};
use tokio::time::timeout;

use crate::config::Config;

/// etcd's answer once the backend reaches its quota (and while the NOSPACE alarm is raised).
const NOSPACE_MESSAGE: &str = "database space exceeded";

/// A short, stable name for the failure: `nospace`, `deadline_exceeded`, `unavailable`, ...
pub fn classify(err: &etcd_client::Error) -> &'static str {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains(NOSPACE_MESSAGE) {
                return "nospace";
            }
            // etcd's own check, or gRPC's (the message above --max-request-bytes + 512 KiB).
            if message.contains("request is too large")
                || message.contains("received message larger than max")
            {
                return "request_too_large";
            }
            if message.contains("requested lease not found") {
                return "lease_not_found";
            }
            // Standard gRPC status codes, stable across tonic versions.
            match i32::from(status.code()) {
                1 => "cancelled",
                3 => "invalid_argument",
                4 => "deadline_exceeded",
                7 => "permission_denied",
                8 => "resource_exhausted",
                9 => "failed_precondition",
                13 => "internal",
                14 => "unavailable",
                16 => "unauthenticated",
                _ => "grpc_other",
            }
        }
        etcd_client::Error::TransportError(_) => "transport",
        etcd_client::Error::IoError(_) => "io",
        etcd_client::Error::WatchError(_) => "watch",
        _ => "other",
    }
}

/// One line for people: the server's message and the root cause below it (the full
/// error nests transport errors several levels deep).
pub fn describe(err: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = err else {
        return err.to_string().replace('\n', " ");
    };
    let mut text = status.message().to_owned();
    let mut root = std::error::Error::source(status);
    while let Some(deeper) = root.and_then(std::error::Error::source) {
        root = Some(deeper);
    }
    if let Some(root) = root.map(ToString::to_string)
        && !text.contains(&root)
    {
        text = format!("{text}: {root}");
    }
    text.replace('\n', " ")
}

/// Failures that every later request would repeat, so the run stops on the first one.
pub fn is_fatal(kind: &str) -> bool {
    matches!(
        kind,
        "request_too_large" | "invalid_argument" | "permission_denied" | "unauthenticated"
    )
}

/// A client, and proof that etcd answers: its status, within the connect timeout.
pub async fn connect(config: &Config) -> Result<(Client, StatusResponse), String> {
    let endpoints = config.endpoints.join(",");
    let attempt = async {
        let mut client = dr_common::etcd::connect(
            &config.endpoints,
            config.tls.as_ref(),
            config.connect_timeout,
            config.request_timeout,
        )
        .await?;
        let status = client.status().await?;
        Ok::<_, etcd_client::Error>((client, status))
    };
    match timeout(config.connect_timeout, attempt).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(err)) => Err(format!(
            "cannot reach etcd at {endpoints}: {}",
            describe(&err)
        )),
        Err(_) => Err(format!(
            "cannot reach etcd at {endpoints}: no answer within {}",
            humantime::format_duration(config.connect_timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `classify` on real gRPC answers (NOSPACE) is covered by the bigkey test against etcd.
    #[test]
    fn only_misconfigurations_are_fatal() {
        assert!(is_fatal("request_too_large"));
        assert!(is_fatal("permission_denied"));
        assert!(
            !is_fatal("nospace"),
            "NOSPACE is an outcome, not a misconfiguration"
        );
        assert!(!is_fatal("unavailable"), "a lost leader comes back");
        assert_eq!(
            classify(&etcd_client::Error::WatchError("closed".into())),
            "watch"
        );
    }
}
