//! `eval`: how a model does on a labelled CSV, scored exactly as serving scores.

use anyhow::ensure;
use serde::Serialize;

use crate::model::inference::Scorer;
use crate::training::dataset::Dataset;
use crate::training::roc::{self, Confusion, YoudenPoint};
use crate::training::train::score_windows;

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub windows: usize,
    pub anomalous_windows: usize,
    pub auc: Option<f64>,
    /// The model's own threshold and how it does.
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub confusion: Confusion,
    /// The threshold that would maximise Youden's J on this data.
    pub best_j: Option<YoudenPoint>,
}

pub fn evaluate(scorer: &Scorer, data: &Dataset) -> anyhow::Result<EvalReport> {
    let meta = &scorer.bundle.meta;
    ensure!(
        data.labels.is_some(),
        "the data has no `label` column; eval needs labelled rows"
    );
    let data = data.for_model(meta)?;
    let starts = data.window_starts(meta.window, meta.step_seconds);
    let (scores, labels) = score_windows(scorer, &data, &starts);
    ensure!(
        !scores.is_empty(),
        "the data has no scorable window of {} consecutive steps",
        meta.window
    );
    let confusion = roc::confusion(&scores, &labels, meta.threshold);
    Ok(EvalReport {
        model: scorer.bundle.source.clone(),
        windows: scores.len(),
        anomalous_windows: labels.iter().filter(|&&l| l).count(),
        auc: roc::auc(&scores, &labels),
        threshold: meta.threshold,
        precision: confusion.precision,
        recall: confusion.recall,
        f1: confusion.f1,
        confusion,
        best_j: roc::best_youden(&scores, &labels),
    })
}
