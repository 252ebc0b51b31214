//! Scoring raw windows: a client's window checked, normalised and run through the
//! fused forward pass of [`super::fused`].

use anyhow::Context;

use crate::model::fused::FusedModel;
use crate::model::model_dir::ModelBundle;
use crate::model::scoring::{self, Score};

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
}

impl Scorer {
    pub fn new(bundle: ModelBundle) -> anyhow::Result<Scorer> {
        let meta = &bundle.meta;
        let fused = FusedModel::from_safetensors(&meta.architecture, meta.window, &bundle.weights)
            .with_context(|| format!("loading the weights of model {}", bundle.source))?;
        Ok(Scorer { bundle, fused })
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

    /// Scores a raw step-major window of the right size; `mask` marks defrag steps.
    pub fn score(&self, values: &[f64], mask: &[bool]) -> Result<Score, WindowError> {
        let (window, features) = (self.bundle.meta.window, self.bundle.meta.features.len());
        if values.len() != window * features || mask.len() != window {
            return Err(WindowError::Steps {
                got: mask.len(),
                window,
            });
        }
        let x = scoring::prepare(values, mask, &self.bundle.meta.normalisation)
            .ok_or(WindowError::AllMasked)?;
        let recon = self.fused.reconstruct(&x);
        Ok(scoring::score_reconstruction(&x, &recon, mask))
    }
}
