//! An instance's own normal as serving can know it: a robust baseline fitted on the
//! instance's *trailing* history, refitted every few steps, and not trusted (warming up)
//! until that history is long enough. Training, `eval` and serving all score through
//! [`Trailing`] or the same policy, so the figures `eval` reports are the ones serving
//! gives: a baseline fitted on a whole recording would have seen the incidents' future.

use serde::{Deserialize, Serialize};

use crate::model::inference::Scorer;
use crate::model::normalisation::Normalisation;

/// How much history an instance's baseline is fitted on, and when it may alert.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselinePolicy {
    /// The most recent steps a baseline is fitted on (6 h at a 30 s step).
    pub history_steps: usize,
    /// Unmasked steps of history an instance needs before it may alert (30 min at 30 s);
    /// fewer: it is warming up, scored but never anomalous.
    pub min_steps: usize,
    /// The baseline is refitted every this many steps (15 min at 30 s).
    pub refresh_steps: usize,
}

impl Default for BaselinePolicy {
    fn default() -> Self {
        BaselinePolicy {
            history_steps: 720,
            min_steps: 60,
            refresh_steps: 30,
        }
    }
}

impl BaselinePolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.refresh_steps == 0 || self.history_steps == 0 {
            return Err("the baseline's history_steps and refresh_steps must be at least 1".into());
        }
        if self.min_steps > self.history_steps {
            return Err(format!(
                "the baseline needs {} steps of history but keeps only {}",
                self.min_steps, self.history_steps
            ));
        }
        Ok(())
    }
}

/// One instance's baseline and how many unmasked steps of history it was fitted on.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceBaseline {
    pub normalisation: Normalisation,
    pub steps: usize,
}

impl InstanceBaseline {
    /// Fits `scorer`'s baseline on `rows` (the model's features, in order), leaving out the
    /// steps `mask` marks (defrags). `None` for a format 1 model.
    pub fn fit(scorer: &Scorer, rows: &[Vec<f64>], mask: Option<&[bool]>) -> Option<Self> {
        let normalisation = scorer.instance_baseline(rows, mask)?;
        let steps = match mask {
            Some(m) => m.iter().filter(|masked| !**masked).count(),
            None => rows.len(),
        };
        Some(InstanceBaseline {
            normalisation,
            steps,
        })
    }

    pub fn ready(&self, policy: &BaselinePolicy) -> bool {
        self.steps >= policy.min_steps
    }
}

/// The baselines serving would have had over a recording of one instance: refitted at
/// steps 0, R, 2R, ... on the `history_steps` rows before each refit point.
#[derive(Clone, Debug)]
pub struct Trailing {
    policy: BaselinePolicy,
    /// `fits[k]` was fitted at step `k * refresh_steps`.
    fits: Vec<InstanceBaseline>,
}

impl Trailing {
    /// `None` for a format 1 model (one global normalisation, nothing per instance).
    pub fn fit(scorer: &Scorer, rows: &[Vec<f64>], mask: Option<&[bool]>) -> Option<Self> {
        let policy = scorer.bundle.meta.scoring_v2.as_ref()?.baseline;
        Trailing::build(rows.len(), policy, |from, at| {
            InstanceBaseline::fit(scorer, &rows[from..at], mask.map(|m| &m[from..at]))
        })
    }

    /// The refits of a recording of `n_rows` steps, each made by `fit(from, at)` on rows
    /// `from..at` (training fits before a model exists, so it brings its own).
    pub fn build(
        n_rows: usize,
        policy: BaselinePolicy,
        mut fit: impl FnMut(usize, usize) -> Option<InstanceBaseline>,
    ) -> Option<Self> {
        let r = policy.refresh_steps.max(1);
        let mut fits = Vec::with_capacity(n_rows / r + 1);
        for at in (0..n_rows).step_by(r) {
            fits.push(fit(at.saturating_sub(policy.history_steps), at)?);
        }
        Some(Trailing { policy, fits })
    }

    /// The baseline the window ending at step `end` (inclusive) is scored against, and
    /// whether it is ready (warming up: scored, never anomalous).
    pub fn at(&self, end: usize) -> Option<(&Normalisation, bool)> {
        let fit = self.fits.get(end / self.policy.refresh_steps.max(1))?;
        Some((&fit.normalisation, fit.ready(&self.policy)))
    }

    /// The first step whose window may alert; `None` when the recording never has enough
    /// history.
    pub fn ready_from(&self) -> Option<usize> {
        self.fits
            .iter()
            .position(|f| f.ready(&self.policy))
            .map(|k| k * self.policy.refresh_steps.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::model_dir::tests::v2_scorer;

    #[test]
    fn a_window_is_set_against_the_history_before_it_and_alerts_only_once_ready() {
        let scorer = v2_scorer(BaselinePolicy {
            history_steps: 40,
            min_steps: 20,
            refresh_steps: 10,
        });
        let f = scorer.n_features();
        // 100 steps at 1.0, then a jump to 50.0: the jump must not be in the baseline of
        // the windows it ends.
        let mut rows: Vec<Vec<f64>> = (0..100).map(|i| vec![1.0 + (i % 3) as f64; f]).collect();
        rows.extend((0..20).map(|_| vec![50.0; f]));
        let mut mask = vec![false; rows.len()];
        // Masked steps are not history: 15 masked of the first 30.
        for m in &mut mask[0..15] {
            *m = true;
        }
        let trailing = Trailing::fit(&scorer, &rows, Some(&mask)).unwrap();
        // At step 20: 5 unmasked steps behind it; at 30: 15; at 40: 25 >= 20.
        assert!(!trailing.at(25).unwrap().1);
        assert!(!trailing.at(39).unwrap().1);
        assert!(trailing.at(40).unwrap().1);
        assert_eq!(trailing.ready_from(), Some(40));
        // The window ending at 105 uses the fit at 100, on rows 60..100: centre near 2.
        let (before, _) = trailing.at(105).unwrap();
        let (baseline_100, _) = trailing.at(100).unwrap();
        assert_eq!(before, baseline_100);
        assert!(before.mean[0] < 3.0, "{:?}", before.mean);
        // At 110 the fit includes 10 steps of the jump, a minority of 40: still robust.
        let (after, _) = trailing.at(110).unwrap();
        assert!(after.mean[0] < 3.0, "{:?}", after.mean);
    }

    #[test]
    fn a_policy_that_can_never_be_ready_is_refused() {
        let bad = BaselinePolicy {
            history_steps: 10,
            min_steps: 20,
            refresh_steps: 5,
        };
        assert!(bad.validate().unwrap_err().contains("20 steps"));
        let zero = BaselinePolicy {
            refresh_steps: 0,
            ..BaselinePolicy::default()
        };
        assert!(zero.validate().is_err());
        assert!(BaselinePolicy::default().validate().is_ok());
    }
}
