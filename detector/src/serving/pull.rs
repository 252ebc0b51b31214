//! How a window is pulled from Prometheus for live scoring, from the query to the verdict
//! on each etcd instance:
//!
//! 1. The window ends at the last step boundary ([`window_end`]) and spans the model's
//!    `window` steps.
//! 2. Every feature query (and the defrag mask) runs as `query_range` over it, all at
//!    once, together with the Pushgateway's raw `push_time_seconds` over the look-back
//!    ([`history_seconds`]); one timeout bounds the whole pull.
//! 3. The answers become one complete window per instance ([`assemble`]): short gaps are
//!    filled explicitly (interpolated inside, carried at the edges), longer ones refuse
//!    the window with a message that names the instance, the feature and the missing time
//!    span. A latency quantile that is NaN or absent (no requests in its rate window) is
//!    0; an infinite value refuses the window.
//! 4. Each instance's push times are judged ([`freshness`]): a collector that stopped
//!    pushing, or data coarser than the model's step, refuse it. An instance scraped
//!    directly (no push times) whose window has gaps gets its raw `up` samples asked for,
//!    to tell a coarse scrape interval from a plain gap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dr_common::http::ApiError;

use crate::model::model_dir::ModelMeta;
use crate::prometheus::{PromClient, PromError, Series, promql_string};
use crate::serving::freshness::{self, Verdict};

/// The end of the latest window at `now`: the last step boundary.
pub fn window_end(now: f64, step_seconds: f64) -> f64 {
    (now / step_seconds).floor() * step_seconds
}

/// How far back the push times and `up` samples are read, to judge their spacing: enough
/// to see several pushes of a collector at a 30-60 s interval.
pub fn history_seconds(step_seconds: f64) -> f64 {
    (10.0 * step_seconds).max(300.0).ceil()
}

/// Why an instance has no score; each maps to the status `/score` answers with.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Too few points for a window, or a window that cannot be scored (422).
    Window(String),
    /// Its series arrive coarser than the model's step (422); while no instance scores
    /// for this, `/readyz` says so too: the set-up, not the moment, is wrong.
    StepMismatch(String),
    /// Its collector stopped pushing: a dead dependency (503 naming the collector).
    StaleCollector(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Window(m) | Refusal::StepMismatch(m) | Refusal::StaleCollector(m) => m,
        }
    }

    pub fn into_api_error(self) -> ApiError {
        match self {
            Refusal::Window(m) | Refusal::StepMismatch(m) => ApiError::Unprocessable(m),
            Refusal::StaleCollector(message) => ApiError::Unavailable {
                dependency: "collector".into(),
                message,
            },
        }
    }
}

/// What one pull gave: each instance's window, or why it has none, in name order.
#[derive(Debug)]
pub struct Pulled {
    /// Unix seconds of the windows' last step.
    pub end: f64,
    pub windows: Vec<(String, Result<InstanceWindow, Refusal>)>,
}

/// Where live windows come from: Prometheus, with the limits on filling gaps and on the
/// age of a collector's last push.
#[derive(Clone, Debug)]
pub struct WindowSource {
    /// Its timeout bounds one whole pull (all queries).
    prometheus: PromClient,
    max_gap_steps: usize,
    /// Instances whose last push is older get no window; zero turns the check off.
    max_push_age: Duration,
}

impl WindowSource {
    pub fn new(prometheus: PromClient, max_gap_steps: usize, max_push_age: Duration) -> Self {
        WindowSource {
            prometheus,
            max_gap_steps,
            max_push_age,
        }
    }

    pub fn prometheus(&self) -> &PromClient {
        &self.prometheus
    }

    /// Every instance's window ending at `end` (a step boundary), judged. Prometheus
    /// unreachable, refusing a query or slower than the timeout: a 503 naming it.
    pub async fn pull(&self, meta: &ModelMeta, end: f64) -> Result<Pulled, ApiError> {
        let step = meta.step_seconds;
        let timeout = self.prometheus.timeout();
        let unavailable = |message: String| ApiError::Unavailable {
            dependency: "prometheus".into(),
            message,
        };
        let started = Instant::now();
        let fetched = tokio::time::timeout(timeout, fetch(&self.prometheus, meta, end))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "{} did not answer within {}",
                    self.prometheus.url(),
                    humantime::format_duration(timeout)
                ))
            })?
            .map_err(|err| unavailable(err.to_string()))?;
        let mut windows = Vec::new();
        for (instance, window) in assemble(meta, &fetched, self.max_gap_steps) {
            let pushes = fetched.pushes_of(&instance);
            let verdict =
                freshness::judge_pushes(&instance, &pushes, step, fetched.end, self.max_push_age);
            let window = match (verdict, window) {
                (Verdict::Stale(why), _) => Err(Refusal::StaleCollector(why)),
                (Verdict::StepMismatch(why), _) => Err(Refusal::StepMismatch(why)),
                // Scraped directly (no push times): gaps may still come from a coarse
                // scrape interval, which only `up` shows. Asked only when needed, and only
                // a diagnosis: if it fails, the gap message stands.
                (Verdict::Fresh, Err(gaps)) if pushes.is_empty() => {
                    let left = timeout.saturating_sub(started.elapsed());
                    let up = tokio::time::timeout(
                        left,
                        up_samples(&self.prometheus, &instance, fetched.end, step),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                    let up: Vec<&[(f64, f64)]> = up.iter().map(|s| s.points.as_slice()).collect();
                    match freshness::judge_scrapes(&instance, &up, step) {
                        Some(why) => Err(Refusal::StepMismatch(why)),
                        None => Err(Refusal::Window(gaps)),
                    }
                }
                (Verdict::Fresh, window) => window.map_err(Refusal::Window),
            };
            windows.push((instance, window));
        }
        Ok(Pulled {
            end: fetched.end,
            windows,
        })
    }
}

/// The window ending at `end` (a step boundary, see [`window_end`]) of every feature
/// (and the mask) for every instance found.
async fn fetch(client: &PromClient, meta: &ModelMeta, end: f64) -> Result<Fetched, PromError> {
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
        let client = client.clone();
        tasks.spawn(async move { (index, client.query_range(&query, start, end, step).await) });
    }
    // The Pushgateway's push times, for a dead collector and the push cadence.
    let pushes = format!("push_time_seconds[{}s]", history_seconds(step) as u64);
    let pushes_client = client.clone();
    tasks.spawn(async move { (n_queries, pushes_client.raw_samples(&pushes, end).await) });
    let mut answers: Vec<Option<Vec<Series>>> = vec![None; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) = joined.map_err(|err| PromError::Unreachable {
            url: client.url().to_string(),
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

/// One instance's history for its baseline: the complete rows (every feature present,
/// in the model's order) of the steps before a window, and which of them were masked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub rows: Vec<Vec<f64>>,
    pub mask: Vec<bool>,
}

/// Every instance's last `steps` steps before `end` (not including it), from one
/// `query_range` per feature and the mask, bounded by the client's timeout. Steps with a
/// feature missing are left out (a baseline needs no continuity); a latency quantile that
/// is NaN or absent is 0, as in a window.
pub async fn history(
    client: &PromClient,
    meta: &ModelMeta,
    end: f64,
    steps: usize,
) -> Result<BTreeMap<String, History>, PromError> {
    let step = meta.step_seconds;
    let start = end - steps as f64 * step;
    let last = end - step;
    let mut queries: Vec<String> = meta.features.iter().map(|f| f.query.clone()).collect();
    queries.extend(meta.mask.iter().map(|m| m.query.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, query) in queries.into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move { (index, client.query_range(&query, start, last, step).await) });
    }
    let mut answers: Vec<Vec<Series>> = vec![Vec::new(); tasks.len()];
    let run = async {
        while let Some(joined) = tasks.join_next().await {
            let (index, answer) = joined.map_err(|err| PromError::Unreachable {
                url: client.url().to_string(),
                message: format!("query task failed: {err}"),
            })?;
            answers[index] = answer?;
        }
        Ok::<(), PromError>(())
    };
    tokio::time::timeout(client.timeout(), run)
        .await
        .map_err(|_| PromError::Unreachable {
            url: client.url().to_string(),
            message: format!(
                "the baseline's history ({steps} steps) took longer than {}",
                humantime::format_duration(client.timeout())
            ),
        })??;
    let mask = if meta.mask.is_some() {
        answers.pop().unwrap_or_default()
    } else {
        Vec::new()
    };
    let instances: BTreeSet<String> = answers
        .iter()
        .flatten()
        .map(|s| s.instance().to_string())
        .collect();
    let mut out = BTreeMap::new();
    for instance in instances {
        let columns: Vec<Vec<Option<f64>>> = meta
            .features
            .iter()
            .zip(&answers)
            .map(|(spec, series)| {
                let mut grid = vec![None; steps];
                for s in series.iter().filter(|s| s.instance() == instance) {
                    for (cell, v) in grid.iter_mut().zip(to_grid(&s.points, start, step, steps)) {
                        if cell.is_none_or(f64::is_nan) && v.is_some() {
                            *cell = v;
                        }
                    }
                }
                grid.into_iter().map(|v| spec.reading(v)).collect()
            })
            .collect();
        let mut masked = vec![false; steps];
        for s in mask.iter().filter(|s| s.instance() == instance) {
            for (m, v) in masked
                .iter_mut()
                .zip(to_grid(&s.points, start, step, steps))
            {
                *m |= v.is_some_and(|v| v > 0.0);
            }
        }
        let mut kept = History::default();
        for t in 0..steps {
            let row: Option<Vec<f64>> = columns.iter().map(|c| c[t]).collect();
            if let Some(row) = row {
                kept.rows.push(row);
                kept.mask.push(masked[t]);
            }
        }
        out.insert(instance, kept);
    }
    Ok(out)
}

/// The raw `up` samples of `instance` before `end`: how often Prometheus scrapes it when
/// it scrapes etcd directly.
async fn up_samples(
    client: &PromClient,
    instance: &str,
    end: f64,
    step_seconds: f64,
) -> Result<Vec<Series>, PromError> {
    let query = format!(
        "up{{instance={}}}[{}s]",
        promql_string(instance),
        history_seconds(step_seconds) as u64
    );
    client.raw_samples(&query, end).await
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
    /// The points of each `push_time_seconds` series of `instance` (one per job that
    /// pushes it).
    pub fn pushes_of(&self, instance: &str) -> Vec<&[(f64, f64)]> {
        self.pushes
            .iter()
            .filter(|s| s.instance() == instance)
            .map(|s| s.points.as_slice())
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
    let instances: BTreeSet<String> = fetched
        .features
        .iter()
        .flatten()
        .map(|s| s.instance().to_string())
        .collect();
    let mut out = Vec::with_capacity(instances.len());
    for instance in instances {
        let mut columns = Vec::with_capacity(meta.features.len());
        let mut filled_points = 0;
        let mut problems = Vec::new();
        for (spec, series) in meta.features.iter().zip(&fetched.features) {
            let mut grid: Vec<Option<f64>> = vec![None; w];
            for s in series.iter().filter(|s| s.instance() == instance) {
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
        for s in fetched.mask.iter().filter(|s| s.instance() == instance) {
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
    use axum::http::StatusCode;

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
    fn refusals_map_to_the_contract_statuses() {
        let stale = Refusal::StaleCollector("instance x: last push 60s ago".into());
        let error = stale.into_api_error();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            error
                .to_string()
                .starts_with("collector unavailable: instance x")
        );
        for refusal in [
            Refusal::Window("too few points".into()),
            Refusal::StepMismatch("every 30s".into()),
        ] {
            assert_eq!(
                refusal.into_api_error().status(),
                StatusCode::UNPROCESSABLE_ENTITY
            );
        }
    }
}
