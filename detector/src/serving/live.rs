//! Live scoring: every instance's latest window, pulled from Prometheus
//! ([`super::pull`]) and scored, and the background refresh that puts the scores on the
//! gauges. A finished pull is answered again for its window: the refresh and every
//! `GET /score` within one step share it (so a Prometheus that just went away shows as a
//! 503 from the next step on). Requests that arrive while a pull is under way pull for
//! themselves, so each gets its own 503 within the timeout rather than queueing behind a
//! dead Prometheus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dr_common::http::{ApiError, Readiness};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::inference::Scorer;
use crate::model::normalisation::Normalisation;
use crate::model::scoring::Score;
use crate::prometheus::PromClient;
use crate::serving::baselines::{BaselineStatus, Baselines};
use crate::serving::metrics::Metrics;
use crate::serving::pull::{self, Refusal, WindowSource};

/// The scores of one window: scored instances, refused ones with the reason, and the
/// window's end.
#[derive(Debug)]
pub struct LiveScores {
    pub scored: Vec<ScoreResponse>,
    pub refused: Vec<(String, Refusal)>,
    pub end: f64,
}

impl LiveScores {
    /// The score of instance `wanted`, or why it has none.
    pub fn instance(&self, wanted: &str) -> Result<&ScoreResponse, ApiError> {
        if let Some(one) = self
            .scored
            .iter()
            .find(|s| s.instance.as_deref() == Some(wanted))
        {
            return Ok(one);
        }
        if let Some((_, why)) = self.refused.iter().find(|(i, _)| *i == wanted) {
            return Err(why.clone().into_api_error());
        }
        let known: Vec<&str> = self
            .scored
            .iter()
            .filter_map(|s| s.instance.as_deref())
            .chain(self.refused.iter().map(|(i, _)| i.as_str()))
            .collect();
        Err(ApiError::Unprocessable(format!(
            "Prometheus has no points for instance {wanted} in the window ending at {} (instances with data: {})",
            self.end,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    /// The scored instances, anomalous ones first, then worst first; when none scored, why (`first_query` names the
    /// model's first query when Prometheus had no series at all).
    pub fn ranked(&self, first_query: &str) -> Result<Vec<&ScoreResponse>, ApiError> {
        if self.scored.is_empty() {
            let reasons: Vec<&str> = self.refused.iter().map(|(_, why)| why.message()).collect();
            if reasons.is_empty() {
                return Err(ApiError::Unprocessable(format!(
                    "Prometheus returned no series for the model's queries in the window ending at {}; is etcd scraped? first query: {first_query}",
                    self.end
                )));
            }
            let message = reasons.join("; ");
            // Every collector dead: that dependency is the answer. Mixed reasons: all of them.
            let all_stale = self
                .refused
                .iter()
                .all(|(_, why)| matches!(why, Refusal::StaleCollector(_)));
            return Err(if all_stale {
                ApiError::Unavailable {
                    dependency: "collector".into(),
                    message,
                }
            } else {
                ApiError::Unprocessable(message)
            });
        }
        let mut ranked: Vec<&ScoreResponse> = self.scored.iter().collect();
        // Anomalous members first, then by score: the fleet's answer is anomalous exactly
        // when a member is, even when a warming-up member scores higher.
        ranked.sort_by(|a, b| {
            b.anomalous
                .cmp(&a.anomalous)
                .then(b.score.total_cmp(&a.score))
        });
        Ok(ranked)
    }
}

/// The serving state: the model, where its live windows come from, the latest window's
/// scores, the metrics and the readiness every handler and the refresh share.
pub struct LiveScorer {
    pub scorer: Scorer,
    source: WindowSource,
    metrics: Metrics,
    readiness: Readiness,
    /// The latest pull, answered again for its window: the background refresh and every
    /// `GET /score` within one step ask Prometheus once. Failures are not kept.
    last_pull: Mutex<Option<Arc<LiveScores>>>,
    /// Format 2: each instance's own baseline, from its history in Prometheus.
    baselines: Baselines,
}

/// One scored window, as `/score` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub score: f64,
    pub threshold: f64,
    /// The model's fast alert: its own score (the features it watches) and the
    /// threshold above which that alerts after fewer steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_threshold: Option<f64>,
    pub anomalous: bool,
    /// Unix seconds of the window's last step (absent for a posted window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<f64>,
    pub step_seconds: f64,
    pub model: String,
    /// Each feature's share of the error, by name.
    pub feature_shares: Map<String, Value>,
    pub masked_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled_points: Option<usize>,
    /// Format 2, live windows: the instance's own baseline. Not ready (warming up): the
    /// window is scored against the model's reference and is never anomalous.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineStatus>,
}

impl LiveScorer {
    /// A scorer not yet ready (no answer from Prometheus yet), its metrics registered in
    /// `registry` with the model's threshold set.
    pub fn new(
        scorer: Scorer,
        prometheus: PromClient,
        max_gap_steps: usize,
        max_push_age: Duration,
        registry: &mut Registry,
    ) -> LiveScorer {
        let metrics = Metrics::register(registry);
        metrics.set_threshold(scorer.threshold());
        if let Some(fast) = scorer.fast_threshold() {
            metrics.register_fast_alert(registry, fast);
        }
        LiveScorer {
            scorer,
            source: WindowSource::new(prometheus, max_gap_steps, max_push_age),
            metrics,
            readiness: Readiness::not_ready("no answer from Prometheus yet"),
            last_pull: Mutex::default(),
            baselines: Baselines::default(),
        }
    }

    /// What `/readyz` answers: ready after a refresh that reached Prometheus.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn score_timed(
        &self,
        values: &[f64],
        mask: &[bool],
        baseline: Option<&Normalisation>,
    ) -> Result<Score, ApiError> {
        let started = Instant::now();
        let result = self.scorer.score_against(values, mask, baseline);
        self.metrics
            .observe_inference(started.elapsed().as_secs_f64());
        result.map_err(|err| ApiError::BadRequest(err.to_string()))
    }

    fn response(
        &self,
        score: Score,
        instance: Option<String>,
        window_end: Option<f64>,
        baseline: Option<BaselineStatus>,
    ) -> ScoreResponse {
        let meta = &self.scorer.bundle.meta;
        let warming_up = baseline.as_ref().is_some_and(|b| !b.ready);
        ScoreResponse {
            instance,
            anomalous: score.score > meta.threshold && !warming_up,
            score: score.score,
            threshold: meta.threshold,
            fast_score: score.fast_score,
            fast_threshold: self.scorer.fast_threshold(),
            window_end,
            step_seconds: meta.step_seconds,
            model: self.scorer.bundle.source.clone(),
            feature_shares: meta
                .features
                .iter()
                .zip(&score.feature_shares)
                .map(|(f, s)| (f.name.clone(), Value::from(*s)))
                .collect(),
            masked_steps: score.masked_steps,
            filled_points: None,
            baseline,
        }
    }

    /// A client's `[W][F]` window, with its per-step defrag mask (none: no step masked),
    /// checked and scored.
    pub fn score_posted(
        &self,
        window: &[Vec<f64>],
        mask: Option<Vec<bool>>,
    ) -> Result<ScoreResponse, ApiError> {
        let values = self
            .scorer
            .check_window(window)
            .map_err(|err| ApiError::BadRequest(err.to_string()))?;
        let mask = match mask {
            Some(mask) if mask.len() != self.scorer.window() => {
                return Err(ApiError::BadRequest(format!(
                    "mask has {} steps; the window has {}",
                    mask.len(),
                    self.scorer.window()
                )));
            }
            Some(mask) => mask,
            None => vec![false; self.scorer.window()],
        };
        let score = self.score_timed(&values, &mask, None)?;
        Ok(self.response(score, None, None, None))
    }

    /// Every instance's latest window, scored.
    pub async fn latest(&self) -> Result<Arc<LiveScores>, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|err| ApiError::Internal(format!("clock before 1970: {err}")))?
            .as_secs_f64();
        self.live_at(pull::window_end(now, self.scorer.bundle.meta.step_seconds))
            .await
    }

    /// The scores of the windows ending at `end`: the latest pull's when it was for that
    /// window, a new pull otherwise.
    async fn live_at(&self, end: f64) -> Result<Arc<LiveScores>, ApiError> {
        let lock = || {
            self.last_pull
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(live) = lock().as_ref().filter(|live| live.end == end) {
            return Ok(live.clone());
        }
        // Not held across the pull: a slow Prometheus must not queue requests behind it.
        let live = Arc::new(self.pull(end).await?);
        let mut last = lock();
        if last.as_ref().is_none_or(|kept| kept.end < end) {
            *last = Some(live.clone());
        }
        Ok(live)
    }

    /// Pulls every instance's window ending at `end` and scores the ones it got.
    async fn pull(&self, end: f64) -> Result<LiveScores, ApiError> {
        let meta = &self.scorer.bundle.meta;
        let pulled = self.source.pull(meta, end).await?;
        let policy = meta.scoring_v2.as_ref().map(|v2| v2.baseline);
        if let Some(policy) = &policy {
            let live: Vec<&str> = pulled
                .windows
                .iter()
                .filter(|(_, w)| w.is_ok())
                .map(|(i, _)| i.as_str())
                .collect();
            if !live.is_empty()
                && self
                    .baselines
                    .due(policy, meta.step_seconds, pulled.end, &live)
            {
                let refit = self
                    .baselines
                    .refit(&self.scorer, policy, self.source.prometheus(), pulled.end)
                    .await;
                if let Err(err) = refit {
                    tracing::warn!(error = %err, "cannot pull the instances' history for their baselines; keeping the ones there are");
                }
            }
        }
        let mut scored = Vec::new();
        let mut refused = Vec::new();
        for (instance, window) in pulled.windows {
            // Format 2: the instance's own baseline; none yet: the reference, warming up.
            let (baseline, status) = match &policy {
                Some(policy) => match self.baselines.of(&instance, policy) {
                    Some((b, status)) => (Some(b), Some(status)),
                    None => (
                        None,
                        Some(BaselineStatus {
                            ready: false,
                            steps: 0,
                            min_steps: policy.min_steps,
                            fitted_at: pulled.end,
                        }),
                    ),
                },
                None => (None, None),
            };
            let result = window.and_then(|w| {
                self.score_timed(&w.values, &w.mask, baseline.as_ref())
                    .map(|s| (s, w.filled_points))
                    .map_err(|err| Refusal::Window(format!("instance {instance}: {err}")))
            });
            match result {
                Ok((score, filled)) => {
                    let mut response =
                        self.response(score, Some(instance), Some(pulled.end), status);
                    response.filled_points = Some(filled);
                    scored.push(response);
                }
                Err(why) => refused.push((instance, why)),
            }
        }
        Ok(LiveScores {
            scored,
            refused,
            end: pulled.end,
        })
    }

    /// One background refresh: scores to gauges; instances without a score lose their
    /// gauge, so an alert never fires on a stale value. Not ready while a wrong set-up
    /// (data coarser than the model's step) leaves no instance scorable.
    pub async fn refresh(&self) {
        match self.latest().await {
            Ok(live) => {
                // A warming-up instance has no score gauge: an alert must not fire on it.
                let ready = |s: &ScoreResponse| s.baseline.as_ref().is_none_or(|b| b.ready);
                let scores: Vec<(String, f64)> = live
                    .scored
                    .iter()
                    .filter(|s| ready(s))
                    .filter_map(|s| s.instance.clone().map(|i| (i, s.score)))
                    .collect();
                self.metrics.set_scores(&scores);
                let fast_scores: Vec<(String, f64)> = live
                    .scored
                    .iter()
                    .filter(|s| ready(s))
                    .filter_map(|s| Some((s.instance.clone()?, s.fast_score?)))
                    .collect();
                self.metrics.set_fast_scores(&fast_scores);
                let baselines: Vec<(String, bool)> = live
                    .scored
                    .iter()
                    .filter(|s| s.baseline.is_some())
                    .filter_map(|s| s.instance.clone().map(|i| (i, ready(s))))
                    .collect();
                self.metrics.set_baseline_ready(&baselines);
                let warming: Vec<String> = live
                    .scored
                    .iter()
                    .filter(|s| !ready(s))
                    .filter_map(|s| {
                        let b = s.baseline.as_ref()?;
                        Some(format!(
                            "{} ({} of {} steps)",
                            s.instance.as_deref()?,
                            b.steps,
                            b.min_steps
                        ))
                    })
                    .collect();
                for (instance, why) in &live.refused {
                    tracing::warn!(%instance, reason = %why.message(), "cannot score instance");
                }
                self.metrics.count_refresh("success");
                let mismatch = live.refused.iter().find_map(|(_, why)| match why {
                    Refusal::StepMismatch(m) => Some(m),
                    _ => None,
                });
                match mismatch {
                    Some(why) if live.scored.is_empty() => self
                        .readiness
                        .set_not_ready(format!("no instance can be scored: {why}")),
                    _ if warming.is_empty() => self.readiness.set_ready(),
                    // Ready (the service works), but it says who cannot alert yet.
                    _ => self.readiness.set_ready_noting(format!(
                        "baseline warming up, scored but never alerting: {}",
                        warming.join(", ")
                    )),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "refresh failed");
                self.metrics.clear_scores();
                self.metrics.count_refresh("failure");
                self.readiness.set_not_ready(err.to_string());
            }
        }
    }
}

/// Refreshes the score gauges every `every` until the process stops.
pub async fn refresh_loop(state: Arc<LiveScorer>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.refresh().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::lstm::{init_varmap, varmap_to_safetensors};
    use crate::model::model_dir::ModelBundle;
    use crate::model::model_dir::tests::meta;
    use axum::http::StatusCode;

    /// The test model's window steps and features.
    pub(crate) const W: usize = 6;
    pub(crate) const F: usize = 3;

    /// A scorer with a small random model, pointed at `prometheus_url`, its metrics in
    /// `registry`.
    pub(crate) fn live_scorer(
        prometheus_url: &str,
        timeout: Duration,
        registry: &mut Registry,
    ) -> Arc<LiveScorer> {
        let m = meta(F, 4, W);
        let weights = varmap_to_safetensors(&init_varmap(&m.architecture, 1).unwrap()).unwrap();
        let scorer = Scorer::new(ModelBundle {
            meta: m,
            weights,
            source: "test".into(),
        })
        .unwrap();
        Arc::new(LiveScorer::new(
            scorer,
            PromClient::new(prometheus_url, timeout).unwrap(),
            2,
            Duration::from_secs(10),
            registry,
        ))
    }

    /// A loopback port with nothing listening on it.
    pub(crate) fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_window_already_pulled_is_answered_again_without_asking_prometheus() {
        // Nothing listens there: only the kept pull can answer for its window.
        let state = live_scorer(
            &closed_port_url(),
            Duration::from_secs(2),
            &mut Registry::default(),
        );
        let end = 1_700_000_000.0;
        let kept = Arc::new(LiveScores {
            scored: Vec::new(),
            refused: vec![("etcd-1".into(), Refusal::Window("too few points".into()))],
            end,
        });
        *state.last_pull.lock().unwrap() = Some(kept.clone());
        let again = state.live_at(end).await.unwrap();
        assert!(Arc::ptr_eq(&kept, &again));
        // The next window is pulled; a failed pull is not kept.
        let err = state.live_at(end + 2.0).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE, "{err}");
        let still = state.last_pull.lock().unwrap().clone().unwrap();
        assert!(Arc::ptr_eq(&kept, &still));
    }

    fn scored(instance: &str, score: f64, anomalous: bool) -> ScoreResponse {
        ScoreResponse {
            instance: Some(instance.into()),
            score,
            threshold: 3.0,
            fast_score: None,
            fast_threshold: None,
            anomalous,
            window_end: Some(1.0),
            step_seconds: 1.0,
            model: "test".into(),
            feature_shares: Map::new(),
            masked_steps: 0,
            filled_points: Some(0),
            baseline: Some(BaselineStatus {
                ready: anomalous,
                steps: if anomalous { 60 } else { 10 },
                min_steps: 60,
                fitted_at: 1.0,
            }),
        }
    }

    #[test]
    fn the_fleet_answer_is_an_anomalous_member_before_a_higher_warming_up_one() {
        let live = LiveScores {
            scored: vec![
                scored("warming", 9.0, false),
                scored("ready", 4.0, true),
                scored("calm", 1.0, false),
            ],
            refused: Vec::new(),
            end: 1.0,
        };
        let ranked = live.ranked("q").unwrap();
        let order: Vec<&str> = ranked
            .iter()
            .filter_map(|s| s.instance.as_deref())
            .collect();
        assert_eq!(order, ["ready", "warming", "calm"]);
    }
}
