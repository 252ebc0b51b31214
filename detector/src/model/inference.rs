//! Scoring raw windows: a client's window checked, normalised and run through the
//! fused forward pass of [`super::fused`].

use anyhow::Context;

use crate::model::fused::FusedModel;
use crate::model::model_dir::ModelBundle;
use crate::model::normalisation::Normalisation;
use crate::model::scoring::{self, Score};
use crate::model::transform;

/// Why a raw window cannot be scored; the message is meant for the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WindowError {
    #[error("the window is empty; send {window} steps of {features} features")]
    Empty { window: usize, features: usize },
    #[error("the window has {got} steps; the model needs exactly {window}")]
    Steps { got: usize, window: usize },
    #[error("step {step} has {got} values; the model needs {features} ({names})")]
    Features {
        step: usize,
        got: usize,
        features: usize,
        names: String,
    },
    #[error("step {step}, feature `{feature}` is not a finite number")]
    NonFinite { step: usize, feature: String },
    #[error("every step of the window is masked (a defrag was in flight throughout)")]
    AllMasked,
}

/// A model ready to score raw windows: model.json plus the fused weights.
#[derive(Clone, Debug)]
pub struct Scorer {
    pub bundle: ModelBundle,
    fused: FusedModel,
    /// Format 2 with a fast alert: one flag per feature, the ones it watches.
    fast_features: Option<Vec<bool>>,
}

impl Scorer {
    pub fn new(bundle: ModelBundle) -> anyhow::Result<Scorer> {
        let meta = &bundle.meta;
        let fused = FusedModel::from_safetensors(&meta.architecture, meta.window, &bundle.weights)
            .with_context(|| format!("loading the weights of model {}", bundle.source))?;
        let fast_features = match &meta.scoring_v2 {
            Some(v2) => v2.fast_features(&meta.feature_names())?,
            None => None,
        };
        Ok(Scorer {
            bundle,
            fused,
            fast_features,
        })
    }

    pub fn window(&self) -> usize {
        self.fused.window()
    }

    pub fn n_features(&self) -> usize {
        self.fused.n_features()
    }

    pub fn threshold(&self) -> f64 {
        self.bundle.meta.threshold
    }

    /// The fast alert's threshold, when the model has one.
    pub fn fast_threshold(&self) -> Option<f64> {
        let v2 = self.bundle.meta.scoring_v2.as_ref()?;
        v2.fast_alert.as_ref().map(|f| f.threshold)
    }

    /// Checks a client's `[W][F]` window and flattens it step-major.
    pub fn check_window(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>, WindowError> {
        let (window, features) = (self.window(), self.n_features());
        if rows.is_empty() {
            return Err(WindowError::Empty { window, features });
        }
        if rows.len() != window {
            return Err(WindowError::Steps {
                got: rows.len(),
                window,
            });
        }
        let mut flat = Vec::with_capacity(window * features);
        for (step, row) in rows.iter().enumerate() {
            if row.len() != features {
                return Err(WindowError::Features {
                    step,
                    got: row.len(),
                    features,
                    names: self.bundle.meta.feature_names().join(", "),
                });
            }
            for (j, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    return Err(WindowError::NonFinite {
                        step,
                        feature: self.bundle.meta.features[j].name.clone(),
                    });
                }
            }
            flat.extend_from_slice(row);
        }
        Ok(flat)
    }

    /// Scores a raw step-major window of the right size; `mask` marks defrag steps. A
    /// format 2 model sets it against its reference baseline (windows without their
    /// instance's history, as `POST /score` receives); see [`Scorer::score_against`].
    pub fn score(&self, values: &[f64], mask: &[bool]) -> Result<Score, WindowError> {
        self.score_against(values, mask, None)
    }

    /// Scores a window against `baseline`, the instance's own (from
    /// [`Scorer::instance_baseline`]), or the model's reference when `None`. Format 1
    /// models have one global normalisation and ignore `baseline`.
    pub fn score_against(
        &self,
        values: &[f64],
        mask: &[bool],
        baseline: Option<&Normalisation>,
    ) -> Result<Score, WindowError> {
        let meta = &self.bundle.meta;
        let Some(v2) = &meta.scoring_v2 else {
            self.check_size(values, mask)?;
            let x = scoring::prepare(values, mask, &meta.normalisation)
                .ok_or(WindowError::AllMasked)?;
            let recon = self.fused.reconstruct(&x);
            return Ok(scoring::score_reconstruction(&x, &recon, mask));
        };
        let mask = &scoring::lead_mask(mask, v2.mask_lead_steps);
        let (x, recon) = self.reconstruct_v2(values, mask, baseline)?;
        scoring::score_calibrated(
            &x,
            &recon,
            mask,
            &v2.tail_rule(),
            &v2.calibration,
            &v2.scored,
            self.fast_features.as_deref(),
        )
        .ok_or(WindowError::AllMasked)
    }

    /// Format 2: each feature's uncalibrated tail error (what the calibration is fitted
    /// on); `None` for a format 1 model.
    pub fn feature_errors(
        &self,
        values: &[f64],
        mask: &[bool],
        baseline: Option<&Normalisation>,
    ) -> Result<Option<Vec<f64>>, WindowError> {
        let Some(v2) = &self.bundle.meta.scoring_v2 else {
            return Ok(None);
        };
        let mask = &scoring::lead_mask(mask, v2.mask_lead_steps);
        let (x, recon) = self.reconstruct_v2(values, mask, baseline)?;
        scoring::tail_errors(&x, &recon, mask, &v2.tail_rule())
            .map(Some)
            .ok_or(WindowError::AllMasked)
    }

    /// Format 2: the robust baseline of one instance's history (`rows` in the model's
    /// feature order, `mask` its defrag steps, which are left out), with the model's
    /// floors; `None` for a format 1 model, which has no per-instance baseline.
    pub fn instance_baseline(
        &self,
        rows: &[Vec<f64>],
        mask: Option<&[bool]>,
    ) -> Option<Normalisation> {
        let meta = &self.bundle.meta;
        let v2 = meta.scoring_v2.as_ref()?;
        let transformed: Vec<Vec<f64>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&v2.transforms)
                    .map(|(v, t)| t.apply(*v))
                    .collect()
            })
            .collect();
        let floors: Vec<Option<f64>> = meta
            .normalisation
            .std_floor
            .iter()
            .map(|&f| Some(f))
            .collect();
        Some(transform::fit_baseline(
            &transformed,
            |i| mask.is_none_or(|m| !m[i]),
            &floors,
        ))
    }

    fn reconstruct_v2(
        &self,
        values: &[f64],
        mask: &[bool],
        baseline: Option<&Normalisation>,
    ) -> Result<(Vec<f32>, Vec<f32>), WindowError> {
        self.check_size(values, mask)?;
        let meta = &self.bundle.meta;
        let transforms = meta
            .scoring_v2
            .as_ref()
            .map_or(&[][..], |v2| v2.transforms.as_slice());
        let baseline = baseline.unwrap_or(&meta.normalisation);
        let x = scoring::prepare_v2(values, mask, transforms, baseline)
            .ok_or(WindowError::AllMasked)?;
        let recon = self.fused.reconstruct(&x);
        Ok((x, recon))
    }

    fn check_size(&self, values: &[f64], mask: &[bool]) -> Result<(), WindowError> {
        let (window, features) = (self.bundle.meta.window, self.bundle.meta.features.len());
        if values.len() != window * features || mask.len() != window {
            return Err(WindowError::Steps {
                got: mask.len(),
                window,
            });
        }
        Ok(())
    }
}
