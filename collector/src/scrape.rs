//! Fetching etcd's metrics page over http, or https with a CA and a client certificate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dr_common::reload::Reloading;
use dr_common::reqwest_error::{Failure, describe};
use dr_common::tls::TlsMaterial;
use reqwest::{Client, Url};

use crate::error::CollectError;

/// A metrics page larger than this is not etcd's (a normal page is 50–200 KB): the
/// collector stops reading there, so a hostile or broken endpoint costs at most this much
/// memory (and the parse of it) per scrape.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// The HTTP client for etcd. With TLS material it trusts only the given CA (etcd's CA is
/// private) and presents the client certificate that `--client-cert-auth` asks for. It
/// follows no redirect: etcd never sends one, so one means a wrong URL (or a loop), which
/// the scrape reports with the `Location` it was given.
pub fn etcd_client(tls: Option<&TlsMaterial>, timeout: Duration) -> Result<Client, String> {
    let mut builder = Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dr-collector/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_pem {
            let cert = reqwest::Certificate::from_pem(ca)
                .map_err(|err| format!("--cacert: not a usable CA certificate: {err}"))?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        if let Some(pem) = tls.identity_pem() {
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|err| format!("--cert/--key: not a usable key pair: {err}"))?;
            builder = builder.identity(identity);
        }
    }
    builder
        .build()
        .map_err(|err| format!("building the etcd HTTP client: {err}"))
}

/// The HTTP client for etcd, built again when the TLS files change: the new client comes
/// with a new connection pool, so the next scrape handshakes with the new certificates.
pub struct EtcdHttp {
    tls: Option<Arc<Reloading<TlsMaterial>>>,
    timeout: Duration,
    /// The client and the material it was built from.
    built: Mutex<(Option<Arc<TlsMaterial>>, Client)>,
}

impl EtcdHttp {
    pub fn new(
        tls: Option<Arc<Reloading<TlsMaterial>>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let material = tls.as_ref().map(|tls| tls.current());
        let client = etcd_client(material.as_deref(), timeout)?;
        Ok(EtcdHttp {
            tls,
            timeout,
            built: Mutex::new((material, client)),
        })
    }

    /// The deadline of one scrape, the client's timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client for the TLS files as they are now, and whether it presents a client
    /// certificate. A client that cannot be built from new files leaves the last one.
    pub fn client(&self) -> (Client, bool) {
        let material = self.tls.as_ref().map(|tls| tls.current());
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = match (&material, &built.0) {
            (Some(now), Some(then)) => !Arc::ptr_eq(now, then),
            _ => false,
        };
        if changed {
            match etcd_client(material.as_deref(), self.timeout) {
                Ok(client) => *built = (material, client),
                Err(err) => {
                    tracing::warn!(error = %err, "keeping the etcd client of the last good TLS files")
                }
            }
        }
        let presents_identity = built.0.as_ref().is_some_and(|t| t.identity.is_some());
        (built.1.clone(), presents_identity)
    }
}

/// Fetches one metrics page as text. `presents_identity` says whether the client sends a
/// certificate, for the hint when etcd hangs up on one that does not; `timeout` is the
/// client's, for the message when it fires.
pub async fn fetch_page(
    client: &Client,
    url: &Url,
    presents_identity: bool,
    timeout: Duration,
) -> Result<String, CollectError> {
    let failed = |err: reqwest::Error| {
        if err.is_timeout() {
            return CollectError::EtcdTimeout {
                url: url.to_string(),
                timeout,
            };
        }
        let (tls, detail) = match describe(&err) {
            Failure::Tls(detail) => (true, detail),
            // With TLS 1.3 a server that wants a client certificate may close the
            // connection after the handshake: the client sees a closed channel, not an alert.
            Failure::Other(detail) => (url.scheme() == "https" && is_hang_up(&detail), detail),
        };
        if !tls {
            return if is_not_http(&detail) {
                CollectError::EtcdNotHttp {
                    url: url.to_string(),
                    detail,
                }
            } else {
                CollectError::EtcdUnreachable {
                    url: url.to_string(),
                    detail,
                }
            };
        }
        let refused_client = is_hang_up(&detail) || detail.contains("CertificateRequired");
        let detail = match (refused_client, presents_identity) {
            (true, false) => {
                format!("{detail} (etcd wants a client certificate: give --cert and --key)")
            }
            (true, true) => format!(
                "{detail} (etcd refused the client certificate: is it signed by etcd's CA?)"
            ),
            (false, _) => detail,
        };
        CollectError::EtcdTls {
            url: url.to_string(),
            detail,
        }
    };
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4")
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| {
                String::from_utf8_lossy(value.as_bytes())
                    .chars()
                    .take(200)
                    .collect()
            })
            .unwrap_or_default();
        return Err(CollectError::EtcdRedirect {
            url: url.to_string(),
            status: status.as_u16(),
            location,
        });
    }
    let too_large = || CollectError::PageTooLarge {
        url: url.to_string(),
        limit: MAX_PAGE_BYTES,
    };
    // A declared length over the limit is refused before a byte of the body is read.
    if response
        .content_length()
        .is_some_and(|length| length > MAX_PAGE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(CollectError::EtcdStatus {
            url: url.to_string(),
            status: status.as_u16(),
            body: first_line(&String::from_utf8_lossy(&body)),
        });
    }
    String::from_utf8(body).map_err(|err| CollectError::NotExposition {
        url: url.to_string(),
        detail: format!("not UTF-8 text: {err}"),
    })
}

/// What hyper says when the bytes that came back are not an HTTP response ("invalid HTTP
/// version parsed", "invalid HTTP header parsed", "message head is too large", ...).
fn is_not_http(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    ["parsed", "message head is too large", "invalid uri"]
        .iter()
        .any(|needle| detail.contains(needle))
}

/// The ways a peer hanging up mid-handshake surfaces through hyper (all seen against etcd
/// refusing a client without a certificate, depending on timing).
fn is_hang_up(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "channel closed",
        "connection closed",
        "stream closed",
        "broken pipe",
        "connection reset",
        "unexpected eof",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

/// The first line of a body, short enough for a log line, control characters escaped
/// (a hostile body must not move a terminal's cursor or split the line).
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars()
        .take(200)
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_line_stays_one_printable_line() {
        assert_eq!(first_line("  500 oops \r\nmore"), "500 oops");
        assert_eq!(first_line("a\u{1b}[2Jb\rc"), "a\\u{1b}[2Jb\\rc");
        assert_eq!(first_line(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn hyper_parse_failures_say_not_http() {
        assert!(is_not_http(
            "client error (SendRequest): invalid HTTP version parsed"
        ));
        assert!(is_not_http("message head is too large"));
        assert!(!is_not_http(
            "tcp connect error: Connection refused (os error 111)"
        ));
    }

    #[test]
    fn every_observed_hang_up_counts_as_one() {
        for seen in [
            "client error (SendRequest): channel closed",
            "client error (SendRequest): connection error: stream closed because of a broken pipe",
            "connection reset by peer",
        ] {
            assert!(is_hang_up(seen), "{seen}");
        }
        assert!(!is_hang_up(
            "tcp connect error: Connection refused (os error 111)"
        ));
    }
}
