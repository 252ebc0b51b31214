//! Scoping a model's queries to the etcd series the user names (`--etcd-selector
//! 'job="etcd"'`): other jobs export the same families (kube-prometheus-stack's own
//! `kube-etcd` job, every other gRPC server's `grpc_server_handled_total`), and a query
//! that sums by instance would add them in.
//!
//! Every etcd and gRPC-server metric a query names gets the matchers in front of its own:
//! `etcd_x` becomes `etcd_x{job="etcd"}`, `grpc_server_handled_total{grpc_type="unary"}`
//! becomes `grpc_server_handled_total{job="etcd",grpc_type="unary"}`.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::model::features::FeatureSpec;

/// A metric name of etcd's or a gRPC server's, with its matchers if any. Function names
/// (`histogram_quantile`) and labels never start like this.
static METRIC: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
    Regex::new(r"\b((?:etcd|grpc_server)_[A-Za-z0-9_:]*)(\{([^}]*)\})?").unwrap()
});

/// Why a selector cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--etcd-selector {0:?}: want label matchers like job=\"etcd\" (no braces, no metric name)")]
pub struct BadSelector(pub String);

/// Checks that `selector` is a list of label matchers (`job="etcd"`, `job=~"etcd.*",cluster="a"`).
pub fn parse(selector: &str) -> Result<String, BadSelector> {
    static MATCHER: LazyLock<Regex> = LazyLock::new(|| {
        #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
        Regex::new(r#"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*$"#).unwrap()
    });
    let trimmed = selector.trim();
    let valid = !trimmed.is_empty() && split_matchers(trimmed).iter().all(|m| MATCHER.is_match(m));
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(BadSelector(selector.to_string()))
    }
}

/// Splits on commas outside quoted values.
fn split_matchers(s: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `query` with `selector` (already [`parse`]d) added to every etcd and gRPC-server metric.
pub fn scope(query: &str, selector: &str) -> String {
    METRIC
        .replace_all(query, |c: &Captures| {
            let name = &c[1];
            match c.get(3).map(|m| m.as_str().trim()) {
                Some(inner) if !inner.is_empty() => format!("{name}{{{selector},{inner}}}"),
                _ => format!("{name}{{{selector}}}"),
            }
        })
        .into_owned()
}

/// Every feature (and the mask) scoped.
pub fn scope_all(features: &mut [FeatureSpec], mask: Option<&mut FeatureSpec>, selector: &str) {
    for spec in features.iter_mut().chain(mask) {
        spec.query = scope(&spec.query, selector);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::features::{default_features, default_mask};

    #[test]
    fn every_etcd_and_grpc_metric_gets_the_matchers() {
        let sel = parse(r#"job="etcd""#).unwrap();
        assert_eq!(
            scope(
                "max by (instance) (etcd_mvcc_db_total_size_in_bytes / etcd_server_quota_backend_bytes)",
                &sel
            ),
            r#"max by (instance) (etcd_mvcc_db_total_size_in_bytes{job="etcd"} / etcd_server_quota_backend_bytes{job="etcd"})"#
        );
        assert_eq!(
            scope(
                r#"sum by (instance) (rate(grpc_server_handled_total{grpc_type="unary"}[4s]))"#,
                &sel
            ),
            r#"sum by (instance) (rate(grpc_server_handled_total{job="etcd",grpc_type="unary"}[4s]))"#
        );
        assert_eq!(
            scope(
                "histogram_quantile(0.99, sum by (instance, le) (rate(etcd_disk_wal_fsync_duration_seconds_bucket[4s])))",
                &sel
            ),
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(etcd_disk_wal_fsync_duration_seconds_bucket{job="etcd"}[4s])))"#
        );
    }

    #[test]
    fn every_built_in_query_is_scoped_and_nothing_else_changes() {
        let sel = parse(r#"job=~"etcd|kube-etcd", cluster!="b""#).unwrap();
        let mut features = default_features(30.0);
        let mut mask = default_mask(30.0);
        let before: Vec<String> = features.iter().map(|f| f.query.clone()).collect();
        scope_all(&mut features, Some(&mut mask), &sel);
        for (spec, old) in features.iter().zip(&before) {
            let metrics = METRIC.find_iter(old).count();
            assert!(metrics > 0, "{old}");
            assert_eq!(spec.query.matches(&sel).count(), metrics, "{}", spec.query);
            // Removing the matchers gives the query back.
            let back = spec
                .query
                .replace(&format!("{sel},"), "")
                .replace(&format!("{{{sel}}}"), "");
            assert_eq!(&back, old);
        }
        assert_eq!(mask.query.matches(&sel).count(), 2, "{}", mask.query);
    }

    #[test]
    fn selectors_are_label_matchers_only() {
        assert_eq!(parse(r#" job="etcd" "#).unwrap(), r#"job="etcd""#);
        assert!(parse(r#"job="a,b",env!~"x""#).is_ok());
        for bad in [
            "",
            "{job=\"etcd\"}",
            "job=etcd",
            "etcd_x",
            r#"job="etcd"}) or vector(1"#,
        ] {
            assert_eq!(parse(bad), Err(BadSelector(bad.to_string())), "{bad}");
        }
    }
}
