//! Why a scrape or a push failed, in one line an operator can act on, and the `reason`
//! label each failure is counted under.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("scrape {url}: etcd unreachable: {detail}")]
    EtcdUnreachable { url: String, detail: String },
    #[error("scrape {url}: no answer within {} (--timeout)", humantime::format_duration(*.timeout))]
    EtcdTimeout { url: String, timeout: Duration },
    #[error("scrape {url}: the answer is not HTTP: {detail}")]
    EtcdNotHttp { url: String, detail: String },
    #[error("scrape {url}: TLS failure: {detail}")]
    EtcdTls { url: String, detail: String },
    #[error(
        "scrape {url}: HTTP {status} redirect to {location:?}: the collector follows no redirects, give the final URL"
    )]
    EtcdRedirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("scrape {url}: HTTP {status}: {body}")]
    EtcdStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "scrape {url}: page larger than {limit} bytes: not an etcd metrics page (those are 50-200 KB)"
    )]
    PageTooLarge { url: String, limit: usize },
    #[error("scrape {url}: not an exposition page: {detail}")]
    NotExposition { url: String, detail: String },
    #[error("scrape {url}: {detail}")]
    DuplicateSeries { url: String, detail: String },
    #[error("push {url}: Pushgateway unreachable: {detail}")]
    PushgatewayUnreachable { url: String, detail: String },
    #[error("push {url}: Pushgateway refused with HTTP {status}: {body}")]
    PushgatewayRefused {
        url: String,
        status: u16,
        body: String,
    },
}

impl CollectError {
    /// Every `reason` a failed scrape is counted under, for the series that start at 0.
    pub const SCRAPE_REASONS: [&'static str; 9] = [
        "unreachable",
        "timeout",
        "not_http",
        "tls",
        "redirect",
        "http_status",
        "too_large",
        "not_exposition",
        "duplicate_series",
    ];

    /// Every `reason` a failed push is counted under.
    pub const PUSH_REASONS: [&'static str; 2] = ["unreachable", "refused"];

    /// The `reason` label of `etcd_dr_collector_scrapes_total` or `_pushes_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            CollectError::EtcdUnreachable { .. } | CollectError::PushgatewayUnreachable { .. } => {
                "unreachable"
            }
            CollectError::EtcdTimeout { .. } => "timeout",
            CollectError::EtcdNotHttp { .. } => "not_http",
            CollectError::EtcdTls { .. } => "tls",
            CollectError::EtcdRedirect { .. } => "redirect",
            CollectError::EtcdStatus { .. } => "http_status",
            CollectError::PageTooLarge { .. } => "too_large",
            CollectError::NotExposition { .. } => "not_exposition",
            CollectError::DuplicateSeries { .. } => "duplicate_series",
            CollectError::PushgatewayRefused { .. } => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scrape_reason_is_listed_for_the_zero_series() {
        let url = || "http://etcd".to_string();
        let detail = || "x".to_string();
        let scrapes = [
            CollectError::EtcdUnreachable {
                url: url(),
                detail: detail(),
            },
            CollectError::EtcdTimeout {
                url: url(),
                timeout: Duration::from_millis(500),
            },
            CollectError::EtcdNotHttp {
                url: url(),
                detail: detail(),
            },
            CollectError::EtcdTls {
                url: url(),
                detail: detail(),
            },
            CollectError::EtcdRedirect {
                url: url(),
                status: 302,
                location: detail(),
            },
            CollectError::EtcdStatus {
                url: url(),
                status: 500,
                body: detail(),
            },
            CollectError::PageTooLarge {
                url: url(),
                limit: 1,
            },
            CollectError::NotExposition {
                url: url(),
                detail: detail(),
            },
            CollectError::DuplicateSeries {
                url: url(),
                detail: detail(),
            },
        ];
        let reasons: Vec<_> = scrapes.iter().map(CollectError::reason).collect();
        assert_eq!(reasons, CollectError::SCRAPE_REASONS);
        for err in &scrapes {
            let line = err.to_string();
            assert!(line.starts_with("scrape http://etcd: "), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
        assert_eq!(
            scrapes[1].to_string(),
            "scrape http://etcd: no answer within 500ms (--timeout)"
        );
        let pushes = [
            CollectError::PushgatewayUnreachable {
                url: url(),
                detail: detail(),
            },
            CollectError::PushgatewayRefused {
                url: url(),
                status: 400,
                body: detail(),
            },
        ];
        let reasons: Vec<_> = pushes.iter().map(CollectError::reason).collect();
        assert_eq!(reasons, CollectError::PUSH_REASONS);
    }
}
