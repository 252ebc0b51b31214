//! Reading the model's feature queries from the Prometheus HTTP API (`query_range`), and
//! turning the answers into one complete window per etcd instance: short gaps are filled
//! explicitly (interpolated inside, carried at the edges), longer ones refuse the window
//! with a message that names the instance, the feature and the missing time span. A
//! latency quantile that is NaN or absent (no requests in its rate window) is 0; an
//! infinite value refuses the window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dr_common::reqwest_error::describe;
use serde::Deserialize;

use crate::model::model_dir::ModelMeta;
use crate::serving::freshness;

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

    /// The bound on one request, and on one whole `fetch` (its queries run at once).
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

    /// The window ending at `end` (a step boundary, see [`window_end`]) of every feature
    /// (and the mask) for every instance found.
    pub async fn fetch(&self, meta: &ModelMeta, end: f64) -> Result<Fetched, PromError> {
        let step = meta.step_seconds;
        let start = end - (meta.window as f64 - 1.0) * step;
        // All queries at once: one slow answer bounds the pull, not the sum of them.
        let mut queries: Vec<String> = meta.features.iter().map(|f| f.query.clone()).collect();
        if let Some(mask) = &meta.mask {
            queries.push(mask.query.clone());
        }
        let mut tasks = tokio::task::JoinSet::new();
        let n_queries = queries.len();
        for (index, query) in queries.into_iter().enumerate() {
            let client = self.clone();
            tasks.spawn(async move { (index, client.query_range(&query, start, end, step).await) });
        }
        // The Pushgateway's push times, for a dead collector and the push cadence.
        let pushes = format!(
            "push_time_seconds[{}s]",
            freshness::history_seconds(step) as u64
        );
        let client = self.clone();
        tasks.spawn(async move { (n_queries, client.raw_samples(&pushes, end).await) });
        let mut answers: Vec<Option<Vec<Series>>> = vec![None; tasks.len()];
        while let Some(joined) = tasks.join_next().await {
            let (index, answer) = joined.map_err(|err| PromError::Unreachable {
                url: self.base.clone(),
                message: format!("query task failed: {err}"),
            })?;
            answers[index] = Some(answer?);
        }
        let mut answers: Vec<Vec<Series>> =
            answers.into_iter().map(Option::unwrap_or_default).collect();
        let pushes = answers.pop().unwrap_or_default();
        let mask = if meta.mask.is_some() {
            answers.pop().unwrap_or_default()
        } else {
            Vec::new()
        };
        let features = answers;
        Ok(Fetched {
            start,
            end,
            features,
            mask,
            pushes,
        })
    }

    /// The raw `up` samples of `instance` before `end`: how often Prometheus scrapes it
    /// when it scrapes etcd directly.
    pub async fn up_samples(
        &self,
        instance: &str,
        end: f64,
        step_seconds: f64,
    ) -> Result<Vec<Series>, PromError> {
        let query = format!(
            "up{{instance={}}}[{}s]",
            promql_string(instance),
            freshness::history_seconds(step_seconds) as u64
        );
        self.raw_samples(&query, end).await
    }
}

/// The end of the latest window at `now`: the last step boundary.
pub fn window_end(now: f64, step_seconds: f64) -> f64 {
    (now / step_seconds).floor() * step_seconds
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
fn promql_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The raw answers for one window.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub start: f64,
    pub end: f64,
    /// Per feature, in the model's order.
    pub features: Vec<Vec<Series>>,
    pub mask: Vec<Series>,
    /// Raw `push_time_seconds` samples of the recent past (empty without a Pushgateway).
    pub pushes: Vec<Series>,
}

impl Fetched {
    /// The `push_time_seconds` series of `instance` (one per job that pushes it).
    pub fn pushes_of(&self, instance: &str) -> Vec<&Series> {
        self.pushes
            .iter()
            .filter(|s| instance_of(s) == instance)
            .collect()
    }
}

/// A complete window for one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceWindow {
    pub instance: String,
    /// Step-major `window * features`.
    pub values: Vec<f64>,
    pub mask: Vec<bool>,
    /// How many points were filled in.
    pub filled_points: usize,
}

/// The instance label a series belongs to.
fn instance_of(series: &Series) -> String {
    series
        .labels
        .get("instance")
        .cloned()
        .unwrap_or_else(|| "(no instance label)".to_string())
}

/// Places points on the window's grid; off-grid or out-of-range points are ignored.
fn to_grid(points: &[(f64, f64)], start: f64, step: f64, window: usize) -> Vec<Option<f64>> {
    let mut grid = vec![None; window];
    for &(t, v) in points {
        let k = ((t - start) / step).round();
        if k >= 0.0 && (k as usize) < window && ((t - start) - k * step).abs() < step / 4.0 {
            grid[k as usize] = Some(v);
        }
    }
    grid
}

/// Fills runs of at most `max_gap` missing steps; returns how many were filled, or which
/// run is too long. Inside runs are interpolated linearly; runs at the edges take the
/// nearest known value.
pub fn fill_gaps(grid: &mut [Option<f64>], max_gap: usize) -> Result<usize, GapError> {
    let known: Vec<usize> = (0..grid.len()).filter(|&i| grid[i].is_some()).collect();
    let (Some(&first), Some(&last)) = (known.first(), known.last()) else {
        return Err(GapError {
            from: 0,
            to: grid.len().saturating_sub(1),
            present: 0,
        });
    };
    let present = known.len();
    let too_long = |from: usize, to: usize| GapError { from, to, present };
    let mut filled = 0;
    if first > max_gap {
        return Err(too_long(0, first - 1));
    }
    if grid.len() - 1 - last > max_gap {
        return Err(too_long(last + 1, grid.len() - 1));
    }
    for pair in known.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b - a - 1 > max_gap {
            return Err(too_long(a + 1, b - 1));
        }
        let (va, vb) = (grid[a].unwrap_or_default(), grid[b].unwrap_or_default());
        for (offset, cell) in grid[a + 1..b].iter_mut().enumerate() {
            let w = (offset + 1) as f64 / (b - a) as f64;
            *cell = Some(va + (vb - va) * w);
            filled += 1;
        }
    }
    let (v_first, v_last) = (
        grid[first].unwrap_or_default(),
        grid[last].unwrap_or_default(),
    );
    for cell in &mut grid[..first] {
        *cell = Some(v_first);
        filled += 1;
    }
    for cell in &mut grid[last + 1..] {
        *cell = Some(v_last);
        filled += 1;
    }
    Ok(filled)
}

/// A run of missing steps too long to fill (step indices, inclusive).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GapError {
    pub from: usize,
    pub to: usize,
    pub present: usize,
}

/// Builds one window per instance: `Ok` when complete after filling, `Err(reason)` saying
/// what is missing otherwise. Instances are in name order.
pub fn assemble(
    meta: &ModelMeta,
    fetched: &Fetched,
    max_gap: usize,
) -> Vec<(String, Result<InstanceWindow, String>)> {
    let (w, step) = (meta.window, meta.step_seconds);
    let instances: BTreeSet<String> = fetched.features.iter().flatten().map(instance_of).collect();
    let mut out = Vec::with_capacity(instances.len());
    for instance in instances {
        let mut columns = Vec::with_capacity(meta.features.len());
        let mut filled_points = 0;
        let mut problems = Vec::new();
        for (spec, series) in meta.features.iter().zip(&fetched.features) {
            let mut grid: Vec<Option<f64>> = vec![None; w];
            for s in series.iter().filter(|s| instance_of(s) == instance) {
                for (cell, v) in grid
                    .iter_mut()
                    .zip(to_grid(&s.points, fetched.start, step, w))
                {
                    if cell.is_none_or(f64::is_nan) && v.is_some() {
                        *cell = v;
                    }
                }
            }
            if let Some(k) = grid.iter().position(|v| v.is_some_and(f64::is_infinite)) {
                let sign = if grid[k].is_some_and(|v| v > 0.0) {
                    "+"
                } else {
                    "-"
                };
                problems.push(format!(
                    "feature `{}` is {sign}Inf at {}, which cannot be scored",
                    spec.name,
                    fetched.start + k as f64 * step,
                ));
                columns.push(grid);
                continue;
            }
            // No requests in a rate window: the quantile is NaN or missing, the latency 0.
            grid.iter_mut().for_each(|cell| *cell = spec.reading(*cell));
            match fill_gaps(&mut grid, max_gap) {
                Ok(n) => filled_points += n,
                Err(gap) => problems.push(format!(
                    "feature `{}` has {} of {w} points, missing {} steps from {} to {} (at most {max_gap} are filled)",
                    spec.name,
                    gap.present,
                    gap.to + 1 - gap.from,
                    fetched.start + gap.from as f64 * step,
                    fetched.start + gap.to as f64 * step,
                )),
            }
            columns.push(grid);
        }
        if !problems.is_empty() {
            out.push((
                instance.clone(),
                Err(format!(
                    "instance {instance}: not enough points for a window of {w} x {step}s ending at {}: {}",
                    fetched.end,
                    problems.join("; ")
                )),
            ));
            continue;
        }
        let mut mask = vec![false; w];
        for s in fetched.mask.iter().filter(|s| instance_of(s) == instance) {
            for (m, v) in mask
                .iter_mut()
                .zip(to_grid(&s.points, fetched.start, step, w))
            {
                *m |= v.is_some_and(|v| v > 0.0);
            }
        }
        let values = (0..w)
            .flat_map(|t| columns.iter().map(move |col| col[t].unwrap_or_default()))
            .collect();
        out.push((
            instance.clone(),
            Ok(InstanceWindow {
                instance,
                values,
                mask,
                filled_points,
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::model_dir::tests::meta;

    #[test]
    fn short_gaps_are_filled_long_ones_refused() {
        let mut grid = vec![None, Some(1.0), None, None, Some(4.0), None];
        assert_eq!(fill_gaps(&mut grid, 2), Ok(4));
        let values: Vec<f64> = grid.into_iter().map(|v| v.unwrap()).collect();
        assert_eq!(values, [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]);

        let mut grid = vec![Some(1.0), None, None, None, Some(4.0)];
        let err = fill_gaps(&mut grid, 2).unwrap_err();
        assert_eq!((err.from, err.to, err.present), (1, 3, 2));
        let mut empty = vec![None; 4];
        assert_eq!(fill_gaps(&mut empty, 2).unwrap_err().present, 0);
    }

    fn series(instance: &str, points: &[(f64, f64)]) -> Series {
        Series {
            labels: [("instance".to_string(), instance.to_string())].into(),
            points: points.to_vec(),
        }
    }

    #[test]
    fn assembles_one_window_per_instance_and_names_what_is_missing() {
        let m = meta(2, 4, 4);
        let full = |i: &str| series(i, &[(10.0, 1.0), (12.0, 2.0), (14.0, 3.0), (16.0, 4.0)]);
        let fetched = Fetched {
            start: 10.0,
            end: 16.0,
            features: vec![
                vec![full("a"), full("b")],
                vec![full("a"), series("b", &[(10.0, 1.0)])],
            ],
            mask: vec![series("a", &[(12.0, 1.0)])],
            pushes: Vec::new(),
        };
        let result = assemble(&m, &fetched, 1);
        assert_eq!(result.len(), 2);
        let a = result[0].1.as_ref().unwrap();
        assert_eq!(a.values, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
        assert_eq!(a.mask, [false, true, false, false]);
        assert_eq!(a.filled_points, 0);
        let b = result[1].1.as_ref().unwrap_err();
        assert!(
            b.contains("instance b") && b.contains("has 1 of 4 points"),
            "{b}"
        );
        assert!(b.contains(&m.features[1].name), "{b}");
    }

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
    fn an_idle_member_has_zero_latency_but_an_infinite_one_is_refused() {
        // Features 0..6 of the catalogue; the sixth (index 5) is wal_fsync_p99.
        let m = meta(6, 4, 4);
        assert!(m.features[5].is_latency_quantile());
        let full = |i: &str| series(i, &[(10.0, 1.0), (12.0, 2.0), (14.0, 3.0), (16.0, 4.0)]);
        let mut features: Vec<Vec<Series>> = (0..5).map(|_| vec![full("a"), full("b")]).collect();
        features.push(vec![
            // No requests: NaN twice, and a step Prometheus left out.
            series("a", &[(10.0, f64::NAN), (12.0, 0.004), (16.0, f64::NAN)]),
            series("b", &[(10.0, 0.004), (12.0, f64::INFINITY)]),
        ]);
        let fetched = Fetched {
            start: 10.0,
            end: 16.0,
            features,
            mask: Vec::new(),
            pushes: Vec::new(),
        };
        let result = assemble(&m, &fetched, 0);
        let a = result[0].1.as_ref().unwrap();
        let fsync: Vec<f64> = a.values.chunks(6).map(|row| row[5]).collect();
        assert_eq!(fsync, [0.0, 0.004, 0.0, 0.0]);
        assert_eq!(a.filled_points, 0, "zeros are values, not filled gaps");
        let b = result[1].1.as_ref().unwrap_err();
        assert!(
            b.contains("wal_fsync_p99") && b.contains("+Inf at 12"),
            "{b}"
        );
        // Any other feature's NaN is a gap, as before.
        let mut fetched = fetched;
        fetched.features[0][0] = series(
            "a",
            &[(10.0, f64::NAN), (12.0, 1.0), (14.0, 1.0), (16.0, 1.0)],
        );
        let a = assemble(&m, &fetched, 0).remove(0).1.unwrap_err();
        assert!(
            a.contains("db_size_over_quota") && a.contains("3 of 4"),
            "{a}"
        );
    }

    #[test]
    fn instance_names_are_quoted_for_promql() {
        assert_eq!(promql_string("10.0.0.1:2381"), r#""10.0.0.1:2381""#);
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
