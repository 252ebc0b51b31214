//! The Prometheus HTTP API client that export and serving share: `query_range` and raw
//! samples of a range selector, each answer read as series of `(timestamp, value)` points.

use std::collections::BTreeMap;
use std::time::Duration;

use dr_common::reqwest_error::describe;
use serde::Deserialize;

/// Why Prometheus gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// Not reachable, or no answer within the timeout.
    #[error("{url} did not answer: {message}")]
    Unreachable { url: String, message: String },
    /// It answered, but refused the query or sent something unreadable.
    #[error("{url} refused query `{query}`: {message}")]
    Query {
        url: String,
        query: String,
        message: String,
    },
}

/// One series of a range query: its labels and `(timestamp, value)` points. Values are as
/// Prometheus sent them, NaN and +-Inf included: what they mean depends on the feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The etcd instance the series belongs to, by its `instance` label.
    pub fn instance(&self) -> &str {
        self.labels
            .get("instance")
            .map_or("(no instance label)", String::as_str)
    }
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<ApiData>,
}

#[derive(Deserialize)]
struct ApiData {
    result: Vec<ApiSeries>,
}

#[derive(Deserialize)]
struct ApiSeries {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// A Prometheus HTTP API client with one timeout for every request.
#[derive(Clone, Debug)]
pub struct PromClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl PromClient {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<PromClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|err| anyhow::anyhow!("building the HTTP client: {err}"))?;
        Ok(PromClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The bound on one request, and on one whole window pull (`serving::pull`: its queries
    /// run at once).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET /api/v1/query_range`.
    pub async fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step_seconds: f64,
    ) -> Result<Vec<Series>, PromError> {
        self.get_matrix(
            "query_range",
            query,
            &[
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step_seconds}")),
            ],
        )
        .await
    }

    /// `GET /api/v1/query` of a range selector (`metric[5m]`) at `time`: its raw samples.
    pub async fn raw_samples(&self, query: &str, time: f64) -> Result<Vec<Series>, PromError> {
        self.get_matrix("query", query, &[("time", format!("{time:.3}"))])
            .await
    }

    async fn get_matrix(
        &self,
        endpoint: &str,
        query: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<Series>, PromError> {
        let url = format!("{}/api/v1/{endpoint}", self.base);
        let unreachable = |err: reqwest::Error| PromError::Unreachable {
            url: self.base.clone(),
            message: describe(&err.without_url()).detail().to_string(),
        };
        let refused = |message: String| PromError::Query {
            url: self.base.clone(),
            query: query.to_string(),
            message,
        };
        let mut all_params = vec![("query", query.to_string())];
        all_params.extend(params.iter().map(|(k, v)| (*k, v.clone())));
        let response = self
            .http
            .get(&url)
            .query(&all_params)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        parse_matrix(&body, status).map_err(refused)
    }
}

/// The series of a Prometheus API answer whose result is a matrix, or why it is not one.
fn parse_matrix(body: &[u8], status: reqwest::StatusCode) -> Result<Vec<Series>, String> {
    let parsed: ApiResponse = serde_json::from_slice(body).map_err(|err| {
        format!(
            "HTTP {status}, not a Prometheus API answer ({err}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    if parsed.status != "success" {
        return Err(parsed.error.unwrap_or_else(|| format!("HTTP {status}")));
    }
    let data = parsed
        .data
        .ok_or_else(|| "a success without data".to_string())?;
    Ok(data
        .result
        .into_iter()
        .map(|s| Series {
            labels: s.metric,
            // Prometheus writes NaN and +-Inf as "NaN", "+Inf", "-Inf", which parse.
            points: s
                .values
                .into_iter()
                .filter_map(|(t, v)| v.parse::<f64>().ok().map(|v| (t, v)))
                .collect(),
        })
        .collect())
}

/// `text` as a PromQL double-quoted string.
pub fn promql_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinities_reach_the_caller() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"instance":"a"},"values":[[10,"NaN"],[12,"+Inf"],[14,"0.5"],[16,"x"]]}]}}"#;
        let series = parse_matrix(body, reqwest::StatusCode::OK).unwrap();
        let points = &series[0].points;
        assert_eq!(points.len(), 3, "{points:?}");
        assert!(points[0].1.is_nan());
        assert_eq!(points[1].1, f64::INFINITY);
        let refused = br#"{"status":"error","error":"parse error at char 3"}"#;
        let err = parse_matrix(refused, reqwest::StatusCode::BAD_REQUEST).unwrap_err();
        assert!(err.contains("parse error"), "{err}");
    }

    #[test]
    fn instance_names_are_quoted_for_promql() {
        assert_eq!(promql_string("10.0.0.1:2381"), r#""10.0.0.1:2381""#);
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
