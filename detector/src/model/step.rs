//! Serving a format 2 model at another step than its recordings had (`serve --step 30s`):
//! the drill and the recordings run at a compressed 1 s, real clusters are scraped every
//! 15-60 s. A format 2 model's inputs are step-invariant by construction (rates per step,
//! counts per rate window, logs, ratios, each against the instance's own baseline), so
//! moving it to step `S` means: every range in its queries covers as many steps as before
//! (four steps of `rate` at 1 s are `[4s]`, at 30 s `[120s]`), and each known feature's
//! transform is the one `transform::treatment` gives at `S`. The window, baseline policy
//! and threshold are counted in steps and stay as they are.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::model::model_dir::ModelMeta;
use crate::model::transform;

/// A PromQL range in whole seconds, `[4s]`; the only form the model's queries use.
static RANGE: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
    Regex::new(r"\[(\d+)s\]").unwrap()
});

/// Why a model cannot be served at the step asked for.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StepError {
    #[error(
        "--step {step}s: the model is format 1 (raw values, one global normalisation), which serves only at its own step of {own}s; use a format 2 model"
    )]
    Format1 { step: f64, own: f64 },
    #[error("--step {0}s: want a step between 1s and 1h")]
    OutOfRange(f64),
    #[error(
        "query of `{feature}` has a range other than whole seconds ([5m] or the like): {query}"
    )]
    Range { feature: String, query: String },
}

/// Moves `meta` to `step` seconds (see the module doc); a no-op at its own step.
pub fn retarget(meta: &mut ModelMeta, step: f64) -> Result<(), StepError> {
    if !(1.0..=3600.0).contains(&step) {
        return Err(StepError::OutOfRange(step));
    }
    let own = meta.step_seconds;
    if (step - own).abs() < 1e-9 {
        return Ok(());
    }
    let Some(v2) = meta.scoring_v2.as_mut() else {
        return Err(StepError::Format1 { step, own });
    };
    let ratio = step / own;
    for spec in meta.features.iter_mut().chain(meta.mask.as_mut()) {
        if spec.query.contains('[') && !RANGE.is_match(&spec.query) {
            return Err(StepError::Range {
                feature: spec.name.clone(),
                query: spec.query.clone(),
            });
        }
        spec.query = RANGE
            .replace_all(&spec.query, |c: &Captures| {
                let seconds: f64 = c[1].parse().unwrap_or(0.0);
                format!("[{}s]", (seconds * ratio).round().max(1.0) as u64)
            })
            .into_owned();
    }
    for (spec, t) in meta.features.iter().zip(v2.transforms.iter_mut()) {
        // Known features: the treatment at the new step. Others keep theirs (identity
        // unless the user's own features file said otherwise).
        if let (treatment, Some(_)) = transform::treatment(&spec.name, step) {
            *t = treatment.transform;
        }
    }
    meta.step_seconds = step;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::baseline::BaselinePolicy;
    use crate::model::features::{default_features, default_mask};
    use crate::model::model_dir::tests::v2_scorer;
    use crate::model::transform::Transform;

    fn v2_meta_at(step: f64) -> ModelMeta {
        let mut meta = v2_scorer(BaselinePolicy::default()).bundle.meta;
        meta.step_seconds = step;
        meta.features = default_features(step);
        meta.mask = Some(default_mask(step));
        let v2 = meta.scoring_v2.as_mut().unwrap();
        v2.transforms = meta
            .features
            .iter()
            .map(|f| transform::treatment(&f.name, step).0.transform)
            .collect();
        meta
    }

    #[test]
    fn a_model_recorded_at_1s_serves_at_30s_with_the_queries_and_transforms_of_30s() {
        let mut meta = v2_meta_at(1.0);
        retarget(&mut meta, 30.0).unwrap();
        let native = v2_meta_at(30.0);
        assert_eq!(meta.features, native.features);
        assert_eq!(meta.mask, native.mask);
        assert_eq!(meta.scoring_v2, native.scoring_v2);
        assert_eq!(meta.step_seconds, 30.0);
        // And back.
        retarget(&mut meta, 1.0).unwrap();
        assert_eq!(meta.features, v2_meta_at(1.0).features);
        let growth = meta
            .features
            .iter()
            .position(|f| f.name == "db_growth_rate");
        assert_eq!(
            meta.scoring_v2.unwrap().transforms[growth.unwrap()],
            Transform::Scale { factor: 1.0 }
        );
    }

    #[test]
    fn steps_that_cannot_be_served_are_refused_with_the_reason() {
        let mut format_1 = crate::model::model_dir::tests::meta(3, 4, 5);
        let err = retarget(&mut format_1, 30.0).unwrap_err();
        assert!(matches!(err, StepError::Format1 { .. }), "{err}");
        // Its own step is always fine.
        retarget(&mut format_1, 2.0).unwrap();
        let mut meta = v2_meta_at(1.0);
        assert_eq!(
            retarget(&mut meta, 0.5).unwrap_err(),
            StepError::OutOfRange(0.5)
        );
        meta.features[0].query = "rate(etcd_x[5m])".into();
        assert!(matches!(
            retarget(&mut meta, 30.0).unwrap_err(),
            StepError::Range { .. }
        ));
    }
}
