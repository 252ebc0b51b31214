//! Each live instance's own baseline (format 2 models): fitted on its history in
//! Prometheus at the first score and refitted every `refresh_steps`, with the policy saved
//! in model.json (`model::baseline`). An instance whose history is too short is warming up:
//! `/score` shows its score with `baseline.ready: false`, it is never anomalous, and it
//! has no score gauge for an alert to fire on.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::model::baseline::{BaselinePolicy, InstanceBaseline};
use crate::model::inference::Scorer;
use crate::model::normalisation::Normalisation;
use crate::prometheus::PromClient;
use crate::serving::pull;

/// How far an instance's baseline is, as `/score` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineStatus {
    pub ready: bool,
    /// Unmasked steps of history it was fitted on.
    pub steps: usize,
    pub min_steps: usize,
    /// Unix seconds of the step its history ended before.
    pub fitted_at: f64,
}

#[derive(Clone, Debug)]
struct Kept {
    baseline: InstanceBaseline,
    fitted_at: f64,
}

/// The baselines of the instances seen so far.
#[derive(Debug, Default)]
pub struct Baselines {
    kept: Mutex<HashMap<String, Kept>>,
}

impl Baselines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether one of `instances` has no baseline, or one older than the policy's refresh
    /// at `end`.
    pub fn due(&self, policy: &BaselinePolicy, step: f64, end: f64, instances: &[&str]) -> bool {
        let kept = self.lock();
        let every = policy.refresh_steps as f64 * step;
        instances.iter().any(|i| {
            kept.get(*i)
                .is_none_or(|k| end - k.fitted_at >= every - 1e-9 || end < k.fitted_at)
        })
    }

    /// Refits every instance Prometheus has history for, from the history before `end`.
    /// A failed pull keeps the baselines there are (the caller logs it).
    pub async fn refit(
        &self,
        scorer: &Scorer,
        policy: &BaselinePolicy,
        prometheus: &PromClient,
        end: f64,
    ) -> Result<(), crate::prometheus::PromError> {
        let histories =
            pull::history(prometheus, &scorer.bundle.meta, end, policy.history_steps).await?;
        let mut fitted = Vec::with_capacity(histories.len());
        for (instance, history) in histories {
            if let Some(baseline) =
                InstanceBaseline::fit(scorer, &history.rows, Some(&history.mask))
            {
                fitted.push((instance, baseline));
            }
        }
        let mut kept = self.lock();
        for (instance, baseline) in fitted {
            kept.insert(
                instance,
                Kept {
                    baseline,
                    fitted_at: end,
                },
            );
        }
        Ok(())
    }

    /// `instance`'s baseline and its status; `None` when it has none yet (no history
    /// answered): it is scored against the model's reference and warming up.
    pub fn of(
        &self,
        instance: &str,
        policy: &BaselinePolicy,
    ) -> Option<(Normalisation, BaselineStatus)> {
        let kept = self.lock();
        let k = kept.get(instance)?;
        Some((
            k.baseline.normalisation.clone(),
            BaselineStatus {
                ready: k.baseline.ready(policy),
                steps: k.baseline.steps,
                min_steps: policy.min_steps,
                fitted_at: k.fitted_at,
            },
        ))
    }
}
