//! Pushing exposition text to a Pushgateway under a grouping key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dr_common::reqwest_error::{Failure, describe};
use reqwest::{Client, Url};

use crate::error::CollectError;
use crate::scrape::first_line;

/// The URL that `PUT` replaces: `<base>/metrics/job/<job>/instance/<instance>`. A value
/// that is not a plain path segment (a `/`, a space, an empty string) uses the
/// Pushgateway's `@base64` form, so any instance name round-trips.
pub fn grouping_url(base: &Url, job: &str, instance: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push("metrics");
        for (label, value) in [("job", job), ("instance", instance)] {
            if is_plain_segment(value) {
                segments.push(label).push(value);
            } else {
                segments
                    .push(&format!("{label}@base64"))
                    .push(&URL_SAFE_NO_PAD.encode(value));
            }
        }
    }
    url
}

fn is_plain_segment(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

/// Pushed with every group: 1 with the member's metrics, 0 alone when its scrape failed
/// (then the group holds nothing else, so no stale etcd value stays behind).
pub const TARGET_UP: &str = "etcd_dr_collector_target_up";

/// The `etcd_dr_collector_target_up` family as exposition text.
pub fn target_up(up: bool) -> String {
    format!(
        "# HELP {TARGET_UP} Whether the collector's last scrape of this etcd member succeeded\n\
         # TYPE {TARGET_UP} gauge\n{TARGET_UP} {}\n",
        u8::from(up)
    )
}

/// `PUT`s the body, replacing every metric of that grouping key, so a family that
/// disappeared from etcd disappears from the Pushgateway too.
pub async fn push(client: &Client, url: &Url, body: String) -> Result<(), CollectError> {
    let response = client
        .put(url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .map_err(|err| CollectError::PushgatewayUnreachable {
            url: url.to_string(),
            detail: match describe(&err) {
                Failure::Tls(detail) => format!("TLS failure: {detail}"),
                Failure::Other(detail) => detail,
            },
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(CollectError::PushgatewayRefused {
        url: url.to_string(),
        status: status.as_u16(),
        body: first_line(&body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> Url {
        Url::parse(url).unwrap()
    }

    #[test]
    fn plain_values_stay_readable() {
        let url = grouping_url(&base("http://pg:9091"), "etcd", "10.0.0.1:2381");
        assert_eq!(
            url.as_str(),
            "http://pg:9091/metrics/job/etcd/instance/10.0.0.1:2381"
        );
    }

    #[test]
    fn a_path_prefix_is_kept() {
        let url = grouping_url(&base("http://gw/pushgateway/"), "etcd", "n1");
        assert_eq!(
            url.as_str(),
            "http://gw/pushgateway/metrics/job/etcd/instance/n1"
        );
    }

    #[test]
    fn awkward_values_use_base64() {
        let url = grouping_url(&base("http://pg:9091"), "etcd", "node/1 a");
        assert_eq!(
            url.as_str(),
            format!(
                "http://pg:9091/metrics/job/etcd/instance@base64/{}",
                URL_SAFE_NO_PAD.encode("node/1 a")
            )
        );
    }
}
