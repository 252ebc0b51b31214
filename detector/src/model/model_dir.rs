//! A model directory: `model.safetensors` (weights) and `model.json` (everything needed to
//! feed and judge it: features with their PromQL, window, step, normalisation, threshold).

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::model::baseline::BaselinePolicy;
use crate::model::features::FeatureSpec;
use crate::model::lstm::Architecture;
use crate::model::normalisation::Normalisation;
use crate::model::transform::Transform;

/// Format 1: raw values, one global normalisation, the mean squared error of the window.
pub const FORMAT_VERSION: u32 = 1;
/// Format 2: transformed values against each instance's own baseline, per-feature
/// calibrated errors of the window's last steps, the max of them (see [`ScoringV2`]).
pub const FORMAT_VERSION_2: u32 = 2;
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "model.json";

/// How training went, for the record and for `eval` to compare against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetrics {
    pub seed: u64,
    pub data_rows: usize,
    pub train_windows: usize,
    pub validation_windows: usize,
    pub validation_anomalous_windows: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    /// AUC on the labelled validation windows; absent without both classes.
    pub validation_auc: Option<f64>,
    /// How many windows the threshold was picked from (0 in models saved before it was
    /// recorded).
    #[serde(default)]
    pub threshold_windows: usize,
    /// The false-positive cap the Youden threshold was picked under (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_max_fpr: Option<f64>,
    pub seconds: f64,
}

/// A data file that played a role in training, so `eval` can say when it is given one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    /// `train` (the LSTM fitted its normal windows) or `calibrate` (epoch, per-feature
    /// calibration and threshold).
    pub role: String,
    pub name: String,
    pub sha256: String,
}

/// What format 2 adds to model.json. `ModelMeta::normalisation` is then the pooled
/// reference baseline in transformed units, used only for windows scored without their
/// instance's history (`POST /score`); eval scores each recording against its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoringV2 {
    /// One per feature, applied to raw values before the baseline.
    pub transforms: Vec<Transform>,
    /// One per feature: false for context features (input only, error not scored).
    pub scored: Vec<bool>,
    /// One per feature (empty in early files: none): only values above the
    /// reconstruction count, for metrics where only "more" is an incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upward: Vec<bool>,
    /// A feature's error is also its input's distance from the baseline, the larger of
    /// the two (see `scoring::TailRule`); false in early files.
    #[serde(default)]
    pub level: bool,
    /// The per-feature error is the squared error over this many last unmasked steps of
    /// the window ...
    pub tail_steps: usize,
    /// ... their mean or their max (`mean` in files from before the field).
    #[serde(default)]
    pub tail_aggregate: crate::model::scoring::TailAggregate,
    /// In each window, this many steps before a masked run are masked too (see
    /// `scoring::lead_mask`); 0 in files from before the field.
    #[serde(default)]
    pub mask_lead_steps: usize,
    /// One per feature: a feature's error is divided by this (a high quantile of its
    /// error on the calibration recordings' normal windows, at least `calibration_floor`;
    /// since the slow-disk recordings, each error the least of `alert_for_steps` windows
    /// in a row, as the alert holds it).
    pub calibration: Vec<f64>,
    pub calibration_quantile: f64,
    pub calibration_floor: f64,
    /// The threshold is the lowest score whose alert (held `alert_for_steps`) raised at
    /// most this many false alarms per 1000 normal steps of the calibration recordings.
    pub max_false_alarms_per_1000: f64,
    pub alert_for_steps: usize,
    /// What the threshold gave on the calibration recordings.
    pub calibration_false_alarms_per_1000: f64,
    /// A second alert for what cannot wait `alert_for_steps`: the score of a few features
    /// held fewer steps (a NOSPACE storm on a small quota runs its course in fewer steps
    /// than the main alert holds). Absent in earlier files: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_alert: Option<FastAlert>,
    pub data_files: Vec<DataFile>,
    /// How each instance's own baseline is kept (history, warm-up, refit), as the
    /// threshold was calibrated with it. Absent in early format 2 files: the default.
    #[serde(default)]
    pub baseline: BaselinePolicy,
}

/// The fast alert of [`ScoringV2`]: the largest calibrated error of `features` (the fast
/// score) above `threshold` for `for_steps` steps. Only features where a short excursion
/// is an incident, not noise (the db against its quota, not a disk's latency).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastAlert {
    /// Scored features, by name.
    pub features: Vec<String>,
    /// The lowest fast score, at least the main threshold, whose alert on its own raised
    /// at most `max_false_alarms_per_1000` on the calibration recordings.
    pub threshold: f64,
    pub for_steps: usize,
    /// What the two alerts together gave on the calibration recordings.
    pub calibration_false_alarms_per_1000: f64,
}

/// The contents of model.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    pub window: usize,
    pub step_seconds: f64,
    pub features: Vec<FeatureSpec>,
    /// Steps where this query is > 0 are masked (see `scoring`); absent: nothing masked.
    pub mask: Option<FeatureSpec>,
    pub architecture: Architecture,
    pub normalisation: Normalisation,
    pub threshold: f64,
    /// `youden_j` (labelled validation windows), `normal_quantile` (a high quantile of
    /// held-out normal windows' errors) or `training_quantile` (no held-out window: the
    /// training windows' errors, which are lower than unseen ones, so it alarms early).
    pub threshold_method: String,
    pub training: TrainingMetrics,
    /// Present exactly in format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_v2: Option<ScoringV2>,
}

impl ModelMeta {
    /// Refuses a model.json whose parts disagree, before anything runs on it.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.format_version == FORMAT_VERSION || self.format_version == FORMAT_VERSION_2,
            "model format version {} is not supported (this build reads {FORMAT_VERSION} and {FORMAT_VERSION_2})",
            self.format_version
        );
        let f = self.features.len();
        match (&self.scoring_v2, self.format_version) {
            (None, FORMAT_VERSION) => {}
            (Some(v2), FORMAT_VERSION_2) => {
                v2.validate(f, self.window)?;
                v2.validate_fast_alert(self.threshold)?;
                v2.fast_features(&self.feature_names())?;
            }
            _ => bail!(
                "model format version {} with{} a `scoring_v2` section: format 2 has one, format 1 none",
                self.format_version,
                if self.scoring_v2.is_some() { "" } else { "out" }
            ),
        }
        ensure!(f > 0, "the model has no features");
        ensure!(self.window > 0, "the model's window is 0");
        // Checked here, not only on the candle path: the fused forward that serves
        // slices its weights by `hidden` and would panic on 0.
        ensure!(
            self.architecture.kind == crate::model::lstm::KIND,
            "unknown model kind `{}`",
            self.architecture.kind
        );
        ensure!(
            self.architecture.hidden >= 1,
            "the model's hidden size is 0"
        );
        ensure!(
            self.step_seconds.is_finite() && self.step_seconds > 0.0,
            "step_seconds must be positive"
        );
        ensure!(
            self.architecture.n_features == f,
            "architecture has {} features but `features` lists {f}",
            self.architecture.n_features
        );
        ensure!(
            self.normalisation.mean.len() == f && self.normalisation.std.len() == f,
            "normalisation does not have one mean and std per feature"
        );
        ensure!(
            self.normalisation.std.iter().all(|s| *s > 0.0),
            "normalisation has a non-positive std"
        );
        let floors = &self.normalisation.std_floor;
        if !floors.is_empty() {
            ensure!(
                floors.len() == f,
                "normalisation has {} std floors for {f} features",
                floors.len()
            );
            // The stored std is what serving divides by; a floor above it means the file
            // was edited by hand and no longer says what the model learned with.
            if let Some(j) = (0..f).find(|&j| self.normalisation.std[j] < floors[j]) {
                bail!(
                    "feature `{}`: std {} is below its floor {}",
                    self.features[j].name,
                    self.normalisation.std[j],
                    floors[j]
                );
            }
        }
        ensure!(self.threshold.is_finite(), "threshold is not finite");
        Ok(())
    }

    pub fn feature_names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }
}

impl ScoringV2 {
    pub fn tail_rule(&self) -> crate::model::scoring::TailRule<'_> {
        crate::model::scoring::TailRule {
            tail: self.tail_steps,
            aggregate: self.tail_aggregate,
            upward: &self.upward,
            level: self.level,
        }
    }

    fn validate(&self, f: usize, window: usize) -> anyhow::Result<()> {
        ensure!(
            self.transforms.len() == f && self.scored.len() == f && self.calibration.len() == f,
            "scoring_v2 needs one transform, scored flag and calibration per feature ({f})"
        );
        ensure!(
            self.upward.is_empty() || self.upward.len() == f,
            "scoring_v2.upward needs one flag per feature ({f}) or none"
        );
        ensure!(
            self.transforms.iter().all(Transform::is_valid),
            "scoring_v2 has a transform with a non-positive factor or floor"
        );
        ensure!(
            self.scored.iter().any(|&s| s),
            "scoring_v2 scores no feature"
        );
        ensure!(
            (1..=window).contains(&self.tail_steps),
            "scoring_v2.tail_steps must be between 1 and the window ({window})"
        );
        ensure!(
            self.calibration.iter().all(|c| c.is_finite() && *c > 0.0),
            "scoring_v2 has a non-positive calibration"
        );
        self.baseline
            .validate()
            .map_err(|why| anyhow::anyhow!("scoring_v2.baseline: {why}"))?;
        Ok(())
    }

    /// One flag per feature of `names`: whether the fast alert watches it. Checks that it
    /// names scored features, each once.
    pub fn fast_features(&self, names: &[String]) -> anyhow::Result<Option<Vec<bool>>> {
        let Some(fast) = &self.fast_alert else {
            return Ok(None);
        };
        ensure!(
            !fast.features.is_empty(),
            "scoring_v2.fast_alert.features is empty"
        );
        let mut flags = vec![false; names.len()];
        for name in &fast.features {
            let j = names
                .iter()
                .position(|n| n == name)
                .with_context(|| format!("scoring_v2.fast_alert.features: no feature `{name}`"))?;
            ensure!(
                self.scored.get(j) == Some(&true),
                "scoring_v2.fast_alert.features: `{name}` is not scored"
            );
            ensure!(
                !flags[j],
                "scoring_v2.fast_alert.features names `{name}` twice"
            );
            flags[j] = true;
        }
        Ok(Some(flags))
    }

    /// `threshold`: the main one. The fast score is never above the score, so a fast
    /// threshold at least the main one means a fast alert is always a window the detector
    /// calls anomalous (what the remediator asks before it acts).
    fn validate_fast_alert(&self, threshold: f64) -> anyhow::Result<()> {
        if let Some(fast) = &self.fast_alert {
            ensure!(
                fast.threshold.is_finite() && fast.threshold >= threshold,
                "scoring_v2.fast_alert.threshold {} must be a number at least the threshold {threshold}",
                fast.threshold
            );
            ensure!(
                fast.calibration_false_alarms_per_1000.is_finite(),
                "scoring_v2.fast_alert.calibration_false_alarms_per_1000 is not finite"
            );
            ensure!(
                (1..self.alert_for_steps).contains(&fast.for_steps),
                "scoring_v2.fast_alert.for_steps must be at least 1 and below alert_for_steps ({})",
                self.alert_for_steps
            );
        }
        Ok(())
    }
}

/// A loaded model: its description and its raw weights.
#[derive(Clone, Debug)]
pub struct ModelBundle {
    pub meta: ModelMeta,
    pub weights: Vec<u8>,
    /// Where it came from (a directory, or `default`), for responses and logs.
    pub source: String,
}

/// The model that ships with the binary, so `serve` works without `--model`.
const DEFAULT_META: &[u8] = include_bytes!("../../models/default/model.json");
const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../models/default/model.safetensors");

impl ModelBundle {
    pub fn from_parts(meta_json: &[u8], weights: Vec<u8>, source: String) -> anyhow::Result<Self> {
        let meta: ModelMeta = serde_json::from_slice(meta_json).context("parsing model.json")?;
        meta.validate().context("checking model.json")?;
        Ok(ModelBundle {
            meta,
            weights,
            source,
        })
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let meta_path = dir.join(META_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        let meta = std::fs::read(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let weights = std::fs::read(&weights_path)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        Self::from_parts(&meta, weights, dir.display().to_string())
            .with_context(|| format!("loading the model in {}", dir.display()))
    }

    pub fn default_model() -> anyhow::Result<Self> {
        Self::from_parts(DEFAULT_META, DEFAULT_WEIGHTS.to_vec(), "default".into())
            .context("loading the built-in default model")
    }

    /// `dir` when given, else the built-in model.
    pub fn load_or_default(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            Some(dir) => Self::load(dir),
            None => Self::default_model(),
        }
    }

    /// Writes both files, each through a temporary name and a rename, so a reader never
    /// sees half a model.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut json = serde_json::to_vec_pretty(&self.meta).context("encoding model.json")?;
        json.push(b'\n');
        for (name, bytes) in [(WEIGHTS_FILE, &self.weights), (META_FILE, &json)] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::features::default_features;
    use crate::training::dataset::Dataset;

    pub(crate) fn meta(n_features: usize, hidden: usize, window: usize) -> ModelMeta {
        let mut features = default_features(2.0);
        features.truncate(n_features);
        ModelMeta {
            format_version: FORMAT_VERSION,
            window,
            step_seconds: 2.0,
            features,
            mask: None,
            architecture: Architecture::new(n_features, hidden),
            normalisation: Normalisation {
                mean: vec![0.5; n_features],
                std: vec![2.0; n_features],
                std_floor: vec![1.0; n_features],
            },
            threshold: 1.0,
            threshold_method: "youden_j".into(),
            training: TrainingMetrics {
                seed: 1,
                data_rows: 0,
                train_windows: 0,
                validation_windows: 0,
                validation_anomalous_windows: 0,
                epochs_run: 0,
                best_epoch: 0,
                train_loss: 0.0,
                validation_loss: 0.0,
                validation_auc: None,
                threshold_windows: 0,
                threshold_max_fpr: None,
                seconds: 0.0,
            },
            scoring_v2: None,
        }
    }

    /// Format 2 scoring of three features, identity transforms, every one scored, over a
    /// tail of `tail_steps`, calibrations 1.
    fn identity_v2(tail_steps: usize) -> ScoringV2 {
        ScoringV2 {
            transforms: vec![Transform::Identity; 3],
            scored: vec![true; 3],
            upward: Vec::new(),
            level: false,
            tail_steps,
            tail_aggregate: Default::default(),
            mask_lead_steps: 0,
            calibration: vec![1.0; 3],
            calibration_quantile: 0.99,
            calibration_floor: 1.0,
            max_false_alarms_per_1000: 0.5,
            alert_for_steps: 3,
            calibration_false_alarms_per_1000: 0.0,
            fast_alert: None,
            data_files: Vec::new(),
            baseline: BaselinePolicy::default(),
        }
    }

    /// A small random format 2 model (identity transforms, every feature scored) whose
    /// baselines follow `policy`.
    pub(crate) fn v2_scorer(policy: BaselinePolicy) -> crate::model::inference::Scorer {
        use crate::model::lstm::{init_varmap, varmap_to_safetensors};
        let mut m = meta(3, 4, 6);
        m.format_version = FORMAT_VERSION_2;
        m.scoring_v2 = Some(ScoringV2 {
            max_false_alarms_per_1000: 1.0,
            alert_for_steps: 2,
            baseline: policy,
            ..identity_v2(3)
        });
        m.validate().unwrap();
        let weights = varmap_to_safetensors(&init_varmap(&m.architecture, 1).unwrap()).unwrap();
        crate::model::inference::Scorer::new(ModelBundle {
            meta: m,
            weights,
            source: "test-v2".into(),
        })
        .unwrap()
    }

    #[test]
    fn save_then_load_gives_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = ModelBundle {
            meta: meta(3, 4, 5),
            weights: vec![1, 2, 3],
            source: "x".into(),
        };
        bundle.save(dir.path()).unwrap();
        let loaded = ModelBundle::load(dir.path()).unwrap();
        assert_eq!(loaded.meta, bundle.meta);
        assert_eq!(loaded.weights, bundle.weights);
    }

    #[test]
    fn a_model_json_from_before_floors_and_threshold_windows_loads() {
        let mut value = serde_json::to_value(meta(3, 4, 5)).unwrap();
        value["normalisation"]
            .as_object_mut()
            .unwrap()
            .remove("std_floor");
        value["training"]
            .as_object_mut()
            .unwrap()
            .remove("threshold_windows");
        let old: ModelMeta = serde_json::from_value(value).unwrap();
        old.validate().unwrap();
        assert!(old.normalisation.std_floor.is_empty());
        assert_eq!(old.training.threshold_windows, 0);
    }

    #[test]
    fn inconsistent_meta_is_refused_with_a_reason() {
        let mut m = meta(3, 4, 5);
        m.architecture.n_features = 4;
        assert!(m.validate().unwrap_err().to_string().contains("features"));
        let mut m = meta(3, 4, 5);
        m.format_version = 99;
        assert!(m.validate().unwrap_err().to_string().contains("version"));
        let mut m = meta(3, 4, 5);
        m.architecture.hidden = 0;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("hidden size is 0")
        );
        let mut m = meta(3, 4, 5);
        m.normalisation.std_floor[1] = 3.0;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("below its floor")
        );
        let mut m = meta(3, 4, 5);
        m.architecture.kind = "transformer".into();
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("unknown model kind")
        );
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", ModelBundle::load(dir.path()).unwrap_err());
        assert!(err.contains("model.json"), "{err}");
    }

    #[test]
    fn a_format_1_model_scores_as_before_whatever_baseline_it_is_given() {
        use crate::model::inference::Scorer;
        use crate::model::lstm::{init_varmap, varmap_to_safetensors};
        let m = meta(3, 4, 6);
        let weights = varmap_to_safetensors(&init_varmap(&m.architecture, 1).unwrap()).unwrap();
        let scorer = Scorer::new(ModelBundle {
            meta: m,
            weights,
            source: "format-1".into(),
        })
        .unwrap();
        assert_eq!(scorer.bundle.meta.format_version, FORMAT_VERSION);
        let (w, f) = (scorer.window(), scorer.n_features());
        let rows: Vec<Vec<f64>> = (0..w)
            .map(|i| (0..f).map(|j| 0.01 * (i + j) as f64).collect())
            .collect();
        assert!(scorer.instance_baseline(&rows, None).is_none());
        let values: Vec<f64> = rows.iter().flatten().copied().collect();
        let mask = vec![false; w];
        let other = Normalisation {
            mean: vec![5.0; f],
            std: vec![0.1; f],
            std_floor: Vec::new(),
        };
        let plain = scorer.score(&values, &mask).unwrap();
        assert_eq!(
            scorer.score_against(&values, &mask, Some(&other)).unwrap(),
            plain
        );
        assert_eq!(scorer.feature_errors(&values, &mask, None).unwrap(), None);
        // The score is still the mean squared error of the whole window.
        let x = crate::model::scoring::prepare(&values, &mask, &scorer.bundle.meta.normalisation)
            .unwrap();
        let direct = crate::model::scoring::score_reconstruction(
            &x,
            &crate::model::fused::FusedModel::from_safetensors(
                &scorer.bundle.meta.architecture,
                w,
                &scorer.bundle.weights,
            )
            .unwrap()
            .reconstruct(&x),
            &mask,
        );
        assert_eq!(plain, direct);
    }

    #[test]
    fn a_step_just_before_a_masked_run_is_left_out_when_the_model_says_so() {
        let mut scorer = v2_scorer(BaselinePolicy::default());
        let (w, f) = (scorer.window(), scorer.n_features());
        let rows: Vec<Vec<f64>> = (0..w)
            .map(|i| (0..f).map(|j| 0.1 * ((i * 7 + j * 3) % 5) as f64).collect())
            .collect();
        let mut mask = vec![false; w];
        mask[w - 2] = true;
        mask[w - 1] = true;
        // The step before the run jumps (a compaction's growth); the same window with
        // that step as the one before it.
        let mut spiked = rows.clone();
        spiked[w - 3][0] = 40.0;
        let mut flat = rows.clone();
        flat[w - 3] = rows[w - 4].clone();
        let (spiked, flat): (Vec<f64>, Vec<f64>) = (
            spiked.into_iter().flatten().collect(),
            flat.into_iter().flatten().collect(),
        );
        let score = |scorer: &crate::model::inference::Scorer, values: &[f64]| {
            scorer.score(values, &mask).unwrap().score
        };
        assert_ne!(score(&scorer, &spiked), score(&scorer, &flat));
        if let Some(v2) = scorer.bundle.meta.scoring_v2.as_mut() {
            v2.mask_lead_steps = 1;
        }
        assert_eq!(score(&scorer, &spiked), score(&scorer, &flat));
        assert_eq!(scorer.score(&spiked, &mask).unwrap().masked_steps, 3);
        assert_eq!(
            scorer.feature_errors(&spiked, &mask, None).unwrap(),
            scorer.feature_errors(&flat, &mask, None).unwrap()
        );
    }

    #[test]
    fn format_2_needs_its_section_and_format_1_refuses_one() {
        let mut m = meta(3, 4, 5);
        m.format_version = FORMAT_VERSION_2;
        assert!(m.validate().unwrap_err().to_string().contains("scoring_v2"));
        let mut m = meta(3, 4, 5);
        m.scoring_v2 = Some(identity_v2(5));
        assert!(m.validate().unwrap_err().to_string().contains("scoring_v2"));
        m.format_version = FORMAT_VERSION_2;
        m.validate().unwrap();
        if let Some(s) = m.scoring_v2.as_mut() {
            s.tail_steps = 6;
        }
        assert!(m.validate().unwrap_err().to_string().contains("tail_steps"));
    }

    #[test]
    fn a_fast_alert_must_watch_scored_features_and_alert_no_lower_or_longer_than_the_main() {
        let mut m = meta(3, 4, 5);
        m.format_version = FORMAT_VERSION_2;
        let first = m.features[0].name.clone();
        let fast = FastAlert {
            features: vec![first.clone()],
            threshold: 1.5,
            for_steps: 2,
            calibration_false_alarms_per_1000: 0.0,
        };
        let with = |edit: &dyn Fn(&mut ScoringV2)| {
            let mut m = m.clone();
            let mut v2 = ScoringV2 {
                fast_alert: Some(fast.clone()),
                ..identity_v2(5)
            };
            edit(&mut v2);
            m.scoring_v2 = Some(v2);
            m.validate().map_err(|e| e.to_string())
        };
        assert_eq!(with(&|_| {}), Ok(()));
        let refused = [
            (
                with(&|v| v.fast_alert.as_mut().unwrap().threshold = 0.5),
                "at least the threshold",
            ),
            (
                with(&|v| v.fast_alert.as_mut().unwrap().for_steps = 3),
                "below alert_for_steps",
            ),
            (
                with(&|v| v.fast_alert.as_mut().unwrap().for_steps = 0),
                "below alert_for_steps",
            ),
            (
                with(&|v| v.fast_alert.as_mut().unwrap().features = vec!["nope".into()]),
                "no feature `nope`",
            ),
            (
                with(&|v| v.fast_alert.as_mut().unwrap().features.push(first.clone())),
                "twice",
            ),
            (
                with(&|v| v.fast_alert.as_mut().unwrap().features.clear()),
                "is empty",
            ),
            (with(&|v| v.scored[0] = false), "is not scored"),
        ];
        for (result, why) in refused {
            let err = result.unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        // Saved and read back; a file from before the fast alert has none.
        m.scoring_v2 = Some(ScoringV2 {
            fast_alert: Some(fast.clone()),
            ..identity_v2(5)
        });
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["scoring_v2"]["fast_alert"]["for_steps"], 2);
        let back: ModelMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, m);
        let mut old = json;
        old["scoring_v2"]
            .as_object_mut()
            .unwrap()
            .remove("fast_alert");
        let old: ModelMeta = serde_json::from_value(old).unwrap();
        assert_eq!(old.scoring_v2.unwrap().fast_alert, None);
    }

    #[test]
    fn a_tail_aggregate_is_saved_by_name_and_absent_means_the_mean() {
        use crate::model::scoring::TailAggregate;
        let mut m = meta(3, 4, 5);
        m.format_version = FORMAT_VERSION_2;
        m.scoring_v2 = Some(ScoringV2 {
            tail_aggregate: TailAggregate::Max,
            ..identity_v2(5)
        });
        let mut json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["scoring_v2"]["tail_aggregate"], "max");
        let back: ModelMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, m);
        let fields = json["scoring_v2"].as_object_mut().unwrap();
        fields.remove("tail_aggregate");
        fields.remove("mask_lead_steps");
        let old: ModelMeta = serde_json::from_value(json).unwrap();
        let v2 = old.scoring_v2.unwrap();
        assert_eq!(v2.tail_aggregate, TailAggregate::Mean);
        // A file from before the mask's lead masks nothing more than it says.
        assert_eq!(v2.mask_lead_steps, 0);
        assert_eq!(v2.tail_rule().aggregate, TailAggregate::Mean);
    }

    #[test]
    fn the_default_model_catches_the_test_recordings_incidents_without_false_alarms() {
        use crate::model::inference::Scorer;
        use crate::training::eval::{AlertingOptions, Recording, alerting};
        let scorer = Scorer::new(ModelBundle::default_model().unwrap()).unwrap();
        let meta = &scorer.bundle.meta;
        assert_eq!(meta.format_version, FORMAT_VERSION_2);
        assert_eq!(
            meta.features,
            crate::model::features::default_features(meta.step_seconds)
        );
        // A test recording (never trained or calibrated on), every member, judged as
        // `eval` judges: this checks the shipped weights and threshold still do what the
        // model's README says on it.
        let judge = |recording: &str| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/recordings");
            let sidecar =
                std::fs::read_to_string(format!("{dir}/{recording}.incidents.csv")).unwrap();
            let kinds: Vec<String> = sidecar
                .lines()
                .skip(1)
                .filter_map(|l| l.split(',').next())
                .map(String::from)
                .collect();
            let recordings: Vec<Recording> = ["", ".etcd-1", ".etcd-2"]
                .iter()
                .map(|member| {
                    let name = format!("{recording}{member}.csv");
                    Recording {
                        data: Dataset::read(&std::path::Path::new(dir).join(&name)).unwrap(),
                        name,
                        kinds: Some(kinds.clone()),
                    }
                })
                .collect();
            for r in &recordings {
                assert!(
                    !meta
                        .scoring_v2
                        .as_ref()
                        .unwrap()
                        .data_files
                        .iter()
                        .any(|f| f.name == r.name),
                    "{} trained or calibrated the default model",
                    r.name
                );
            }
            alerting(
                &scorer,
                &recordings,
                AlertingOptions {
                    alert_for_seconds: 600.0,
                    represents_seconds: 60.0,
                },
            )
            .unwrap()
        };
        // Storms on a 2 GiB quota at 10x load: 0.3% of the quota a step, under every
        // mixin rule; the bytes each request adds (db_growth_per_request) give them away.
        let huge = judge("t10-huge");
        let space = huge.model.kinds.iter().find(|s| s.kind == "space").unwrap();
        assert_eq!(space.detected, space.incidents, "{:?}", huge.model);
        assert!(space.incidents >= 6);
        assert_eq!(huge.model.false_alarms, 0, "{:?}", huge.model);
        let report = judge("t4-mid");
        let model = &report.model;
        let kind = |k: &str| model.kinds.iter().find(|s| s.kind == k).unwrap();
        assert_eq!(kind("space").detected, kind("space").incidents, "{model:?}");
        assert!(kind("space").incidents >= 6);
        // The write share is what sees a churn (a few keys rewritten fast) at any load.
        assert_eq!(kind("churn").detected, kind("churn").incidents, "{model:?}");
        assert!(kind("churn").incidents >= 6);
        // One election crosses (transform::ELECTION_SCALE): every storm is caught, and
        // first alerts are no later than the mixin's rules.
        assert_eq!(
            kind("leader").detected,
            kind("leader").incidents,
            "{model:?}"
        );
        assert!(kind("leader").incidents >= 6);
        assert!(
            report.model_no_later_than_rules + 1 >= report.caught_by_a_rule,
            "{report:?}"
        );
        assert_eq!(
            report.model_later_than_rules.len(),
            report.caught_by_a_rule - report.model_no_later_than_rules
        );
        // The README's figure for this recording: no false alarm in 1533 normal steps.
        assert!(model.false_alarms_per_1000_normal_steps <= 1.0, "{model:?}");
        // Storms to NOSPACE on a 64 MiB quota: the fast alert (the db's headroom and growth
        // per request, held two steps) comes no later than `EtcdNoSpace` on any of them,
        // and sooner than the main alert alone, which has to wait ten steps.
        let tiny = judge("t11-tiny");
        assert_eq!(tiny.fast_alert.as_ref().map(|f| f.for_steps), Some(2));
        assert!(
            tiny.model_later_than_rules
                .iter()
                .all(|l| l.kind != "space"),
            "{:?}",
            tiny.model_later_than_rules
        );
        let space_delay = |stats: &crate::training::alerting::AlertStats| {
            let space = stats.kinds.iter().find(|k| k.kind == "space").unwrap();
            assert_eq!(space.detected, space.incidents, "{stats:?}");
            space.median_delay_steps.unwrap()
        };
        let main_only = tiny.model_main_alert_only.as_ref().unwrap();
        assert!(space_delay(&tiny.model) < space_delay(main_only));
        assert_eq!(tiny.model.false_alarms, main_only.false_alarms);
    }
}
