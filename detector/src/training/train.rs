//! Training: normal windows in, a model directory out. The data is split by time blocks
//! (every fourth block validates), the model learns to reconstruct normal training
//! windows, early stopping watches the normal validation windows, and the threshold comes
//! from the labelled validation windows (Youden's J) or, without labels, from a high
//! quantile of held-out normal windows' errors. Data too short for a validation block
//! holds out its last normal windows for that instead; only without any held-out window
//! does the threshold come from the training windows, and model.json says so.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};

use crate::model::baseline::Trailing;
use crate::model::features::{self, FeatureSpec};
use crate::model::inference::Scorer;
use crate::model::lstm::{
    Architecture, Autoencoder, SeededRng, init_varmap, varmap_to_safetensors,
};
use crate::model::model_dir::{FORMAT_VERSION, ModelBundle, ModelMeta, TrainingMetrics};
use crate::model::normalisation::Normalisation;
use crate::training::dataset::Dataset;
use crate::training::roc;

/// The knobs of one training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub window: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// At most this many training windows (evenly strided) per epoch, bounding the time.
    pub max_train_windows: usize,
    /// The quantile of normal validation errors used as threshold without labels.
    pub normal_quantile: f64,
    /// With labels: the threshold maximises Youden's J among ROC points whose
    /// false-positive rate is at most this (1: plain Youden's J).
    pub max_fpr: f64,
    /// Queries per feature; `None`: the built-in catalogue, at the data's step.
    pub features: Option<Vec<FeatureSpec>>,
    /// Normalisation std floors by feature name, in the feature's units; features not
    /// named here take the catalogue's (`features::std_floor`).
    pub std_floors: BTreeMap<String, f64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            window: 30,
            hidden: 32,
            epochs: 20,
            seed: 42,
            batch_size: 64,
            learning_rate: 3e-3,
            patience: 5,
            max_train_windows: 4096,
            normal_quantile: 0.995,
            max_fpr: 1.0,
            features: None,
            std_floors: BTreeMap::new(),
        }
    }
}

/// What a finished epoch reports, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub best: bool,
}

/// A labelled split of the windows by time block.
struct Split {
    train: Vec<usize>,
    validation: Vec<usize>,
}

fn split_windows(starts: &[usize], window: usize) -> Split {
    // Blocks of ten windows; a window crossing a block edge would leak across the split.
    let block = 10 * window;
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
    };
    for &s in starts {
        let (first, last) = (s / block, (s + window - 1) / block);
        if first != last {
            continue;
        }
        if first % 4 == 3 {
            split.validation.push(s);
        } else {
            split.train.push(s);
        }
    }
    split
}

/// Threshold methods, as model.json records them.
pub const YOUDEN_J: &str = "youden_j";
pub const NORMAL_QUANTILE: &str = "normal_quantile";
pub const TRAINING_QUANTILE: &str = "training_quantile";

/// What the train summary says about a threshold method that needs a caveat.
pub fn threshold_warning(method: &str) -> Option<&'static str> {
    (method == TRAINING_QUANTILE).then_some(
        "no held-out normal windows: the threshold is a quantile of the training windows' own \
         errors, which are lower than on unseen data, so expect false alarms; train on more \
         data (a validation block needs 40 windows' worth of rows)",
    )
}

/// The last quarter (by time) of `train`, for picking a threshold when the data is too
/// short for a validation block, and the training windows that do not overlap it.
fn hold_out_tail(train: &[usize], window: usize) -> (Vec<usize>, Vec<usize>) {
    let held = train.len() / 4;
    if held == 0 {
        return (train.to_vec(), Vec::new());
    }
    let held_out = train[train.len() - held..].to_vec();
    let first = held_out[0];
    let kept = train
        .iter()
        .copied()
        .filter(|&s| s + window <= first)
        .collect();
    (kept, held_out)
}

fn batch_tensor(windows: &[&Vec<f32>], window: usize, f: usize) -> candle_core::Result<Tensor> {
    let flat: Vec<f32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
    Tensor::from_vec(flat, (windows.len(), window, f), &Device::Cpu)
}

fn mean_loss(
    model: &Autoencoder,
    windows: &[Vec<f32>],
    window: usize,
    f: usize,
) -> anyhow::Result<f64> {
    if windows.is_empty() {
        return Ok(f64::NAN);
    }
    let recon = model.reconstruct(windows, window, f)?;
    let total: f64 = windows
        .iter()
        .zip(&recon)
        .flat_map(|(x, y)| x.iter().zip(y))
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    Ok(total / (windows.len() * window * f) as f64)
}

/// The weights of the best epoch and how the fit went.
pub(crate) struct Fitted {
    pub arch: Architecture,
    pub weights: Vec<u8>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
}

impl Fitted {
    /// The record of this fit, before the threshold is known.
    pub(crate) fn metrics(
        &self,
        seed: u64,
        data_rows: usize,
        train_windows: usize,
        validation_windows: usize,
    ) -> TrainingMetrics {
        TrainingMetrics {
            seed,
            data_rows,
            train_windows,
            validation_windows,
            validation_anomalous_windows: 0,
            epochs_run: self.epochs_run,
            best_epoch: self.best_epoch,
            train_loss: self.train_loss,
            validation_loss: self.validation_loss,
            validation_auc: None,
            threshold_windows: 0,
            threshold_max_fpr: None,
            seconds: 0.0,
        }
    }
}

/// Fits the autoencoder to `train_x` (normalised windows), keeping the epoch with the
/// lowest loss on `val_x` (the training loss when there is none), with early stopping.
pub(crate) fn fit_autoencoder(
    train_x: &[Vec<f32>],
    val_x: &[Vec<f32>],
    w: usize,
    f: usize,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(EpochReport),
) -> anyhow::Result<Fitted> {
    let arch = Architecture::new(f, opts.hidden);
    let varmap = init_varmap(&arch, opts.seed)?;
    let model = Autoencoder::new(
        &arch,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let mut optimiser = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = SeededRng::new(opts.seed ^ 0x5EED);
    let mut order: Vec<usize> = (0..train_x.len()).collect();
    let mut best: Option<(f64, usize, f64, Vec<u8>)> = None;
    let mut epochs_run = 0;
    for epoch in 1..=opts.epochs {
        epochs_run = epoch;
        rng.shuffle(&mut order);
        let mut total = 0.0;
        for batch in order.chunks(opts.batch_size) {
            let windows: Vec<&Vec<f32>> = batch.iter().map(|&i| &train_x[i]).collect();
            let x = batch_tensor(&windows, w, f)?;
            let loss = model.forward(&x)?.sub(&x)?.sqr()?.mean_all()?;
            optimiser.backward_step(&loss)?;
            total += f64::from(loss.to_scalar::<f32>()?) * batch.len() as f64;
        }
        let train_loss = total / train_x.len() as f64;
        // Without normal validation windows, the training loss is all there is to watch.
        let validation_loss = if val_x.is_empty() {
            train_loss
        } else {
            mean_loss(&model, val_x, w, f)?
        };
        ensure!(
            validation_loss.is_finite(),
            "training diverged at epoch {epoch} (loss {validation_loss}); try a smaller learning rate"
        );
        let improved = best.as_ref().is_none_or(|b| validation_loss < b.0);
        if improved {
            best = Some((
                validation_loss,
                epoch,
                train_loss,
                varmap_to_safetensors(&varmap)?,
            ));
        }
        on_epoch(EpochReport {
            epoch,
            epochs: opts.epochs,
            train_loss,
            validation_loss,
            best: improved,
        });
        if best.as_ref().is_some_and(|b| epoch - b.1 >= opts.patience) {
            break;
        }
    }
    let Some((validation_loss, best_epoch, train_loss, weights)) = best else {
        bail!("no epoch ran");
    };

    Ok(Fitted {
        arch,
        weights,
        epochs_run,
        best_epoch,
        train_loss,
        validation_loss,
    })
}

/// Trains a model on `data`; `on_epoch` sees each epoch's losses.
pub fn train(
    data: &Dataset,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(EpochReport),
) -> anyhow::Result<ModelBundle> {
    let started = Instant::now();
    ensure!(opts.window >= 2, "--window must be at least 2");
    ensure!(opts.hidden >= 1, "--hidden must be at least 1");
    ensure!(opts.epochs >= 1, "--epochs must be at least 1");
    ensure!(opts.batch_size >= 1, "the batch size must be at least 1");
    let step = data.step_seconds()?;
    let feature_specs = match &opts.features {
        // Columns the data lacks are named by `select_features` below.
        Some(specs) => specs.clone(),
        None => {
            features::catalogue_lookup(&data.feature_names, step).map_err(anyhow::Error::msg)?
        }
    };
    let names: Vec<String> = feature_specs.iter().map(|s| s.name.clone()).collect();
    let data = data.select_features(&names)?;
    let (w, f) = (opts.window, names.len());

    let starts = data.window_starts(w, step);
    if starts.is_empty() {
        bail!(
            "the data has no stretch of {w} consecutive steps ({} rows); use a smaller --window or more data",
            data.len()
        );
    }
    let split = split_windows(&starts, w);
    let is_normal = |s: usize| data.label_any(s, w) != Some(true) && !data.masked_any(s, w);
    let mut train_starts: Vec<usize> = split
        .train
        .iter()
        .copied()
        .filter(|&s| is_normal(s))
        .collect();
    let val_normal: Vec<usize> = split
        .validation
        .iter()
        .copied()
        .filter(|&s| is_normal(s))
        .collect();
    // Without normal validation windows, a threshold from the training windows would be
    // optimistic (they are what the model fitted): hold some out for it instead.
    let mut held_out = Vec::new();
    if val_normal.is_empty() {
        let (kept, tail) = hold_out_tail(&train_starts, w);
        if !kept.is_empty() {
            train_starts = kept;
            held_out = tail;
        }
    }
    ensure!(
        !train_starts.is_empty(),
        "no normal training windows: the data needs stretches of {w} unlabelled, unmasked steps"
    );

    // Normalisation from the normal training rows only: all of them, not just those of
    // the windows an epoch uses (below), so it does not depend on `max_train_windows`.
    let mut normal_rows = vec![false; data.len()];
    for &s in &train_starts {
        normal_rows[s..s + w].iter_mut().for_each(|r| *r = true);
    }
    let floors: Vec<Option<f64>> = names
        .iter()
        .map(|name| {
            opts.std_floors
                .get(name)
                .copied()
                .or_else(|| features::std_floor(name, step))
        })
        .collect();
    let norm = Normalisation::fit(
        data.rows
            .iter()
            .zip(&normal_rows)
            .filter(|(_, keep)| **keep)
            .map(|(row, _)| row.as_slice()),
        &floors,
    );
    if train_starts.len() > opts.max_train_windows {
        let stride = train_starts.len().div_ceil(opts.max_train_windows);
        train_starts = train_starts.into_iter().step_by(stride).collect();
    }
    let prepare = |s: usize| norm.apply(&data.window_values(s, w));
    let train_x: Vec<Vec<f32>> = train_starts.iter().map(|&s| prepare(s)).collect();
    let val_x: Vec<Vec<f32>> = val_normal.iter().map(|&s| prepare(s)).collect();

    let fitted = fit_autoencoder(&train_x, &val_x, w, f, opts, on_epoch)?;

    let meta = ModelMeta {
        format_version: FORMAT_VERSION,
        window: w,
        step_seconds: step,
        features: feature_specs,
        mask: Some(features::default_mask(step)),
        architecture: fitted.arch.clone(),
        normalisation: norm,
        threshold: 0.0,
        threshold_method: String::new(),
        scoring_v2: None,
        training: fitted.metrics(opts.seed, data.len(), train_x.len(), split.validation.len()),
    };
    let scorer = Scorer::new(ModelBundle {
        meta,
        weights: fitted.weights,
        source: "training".into(),
    })?;
    let (scores, labels) = score_windows(&scorer, &data, &split.validation);
    let (threshold, method, threshold_windows) =
        match roc::best_youden_within(&scores, &labels, opts.max_fpr) {
            Some(point) => (point.threshold, YOUDEN_J, scores.len()),
            None => {
                let mut normal: Vec<f64> = scores
                    .iter()
                    .zip(&labels)
                    .filter(|(_, l)| !**l)
                    .map(|(s, _)| *s)
                    .collect();
                if normal.is_empty() {
                    normal = score_windows(&scorer, &data, &held_out).0;
                }
                let method = if normal.is_empty() {
                    // Nothing was held out (too little data): all that is left.
                    normal = score_windows(&scorer, &data, &train_starts).0;
                    TRAINING_QUANTILE
                } else {
                    NORMAL_QUANTILE
                };
                let threshold = roc::quantile(&normal, opts.normal_quantile)
                    .context("no windows to pick a threshold from")?;
                (threshold, method, normal.len())
            }
        };
    let mut bundle = scorer.bundle;
    bundle.meta.threshold = threshold;
    bundle.meta.threshold_method = method.into();
    bundle.meta.training.threshold_windows = threshold_windows;
    bundle.meta.training.threshold_max_fpr = (method == YOUDEN_J).then_some(opts.max_fpr);
    bundle.meta.training.validation_anomalous_windows = labels.iter().filter(|&&l| l).count();
    bundle.meta.training.validation_auc = roc::auc(&scores, &labels);
    finish(bundle, started)
}

/// Stamps the training time, checks the model as loading would, and names its source:
/// the last step of both formats' training.
pub(crate) fn finish(mut bundle: ModelBundle, started: Instant) -> anyhow::Result<ModelBundle> {
    bundle.meta.training.seconds = started.elapsed().as_secs_f64();
    bundle
        .meta
        .validate()
        .context("the trained model failed its own checks")?;
    bundle.source = "trained".into();
    Ok(bundle)
}

/// Scores the windows at `starts` the way serving does; windows masked throughout are
/// skipped. `data` (in the model's feature order) is one instance's recording: a format 2
/// model sets each window against the baseline of the rows before it and skips windows
/// while that baseline warms up. Returns scores and labels (false
/// where the data has none).
pub fn score_windows(scorer: &Scorer, data: &Dataset, starts: &[usize]) -> (Vec<f64>, Vec<bool>) {
    let w = scorer.window();
    // Format 2: the baseline of the history before each window; warming up: not scored.
    let trailing = Trailing::fit(scorer, &data.rows, data.mask.as_deref());
    let mut scores = Vec::with_capacity(starts.len());
    let mut labels = Vec::with_capacity(starts.len());
    for &s in starts {
        let baseline = match &trailing {
            Some(t) => match t.at(s + w - 1) {
                Some((b, true)) => Some(b),
                _ => continue,
            },
            None => None,
        };
        if let Ok(score) =
            scorer.score_against(&data.window_values(s, w), &data.window_mask(s, w), baseline)
        {
            scores.push(score.score);
            labels.push(data.label_any(s, w) == Some(true));
        }
    }
    (scores, labels)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::training::synth::{SynthOptions, generate};

    pub(crate) fn small_data() -> Dataset {
        let csv = generate(&SynthOptions {
            rows: 900,
            step_seconds: 2.0,
            seed: 3,
            incidents: 4,
            load_scale: 1.0,
        });
        Dataset::parse(&csv).unwrap()
    }

    pub(crate) fn quick() -> TrainOptions {
        TrainOptions {
            window: 10,
            hidden: 8,
            epochs: 3,
            max_train_windows: 256,
            ..TrainOptions::default()
        }
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let data = small_data();
        let a = train(&data, &quick(), &mut |_| {}).unwrap();
        let b = train(&data, &quick(), &mut |_| {}).unwrap();
        assert_eq!(a.weights, b.weights);
        assert_eq!(a.meta.threshold, b.meta.threshold);
        let other = TrainOptions { seed: 7, ..quick() };
        let c = train(&data, &other, &mut |_| {}).unwrap();
        assert_ne!(a.weights, c.weights);
    }

    #[test]
    fn training_lowers_the_loss_and_records_what_it_did() {
        let data = small_data();
        let mut losses = Vec::new();
        let opts = TrainOptions {
            epochs: 6,
            patience: 10,
            ..quick()
        };
        let bundle = train(&data, &opts, &mut |r| losses.push(r.train_loss)).unwrap();
        assert_eq!(losses.len(), 6);
        assert!(losses[5] < losses[0], "{losses:?}");
        let meta = &bundle.meta;
        assert_eq!(meta.window, 10);
        assert_eq!(meta.step_seconds, 2.0);
        assert_eq!(meta.features.len(), data.feature_names.len());
        assert!(meta.mask.is_some());
        assert_eq!(meta.threshold_method, "youden_j");
        assert!(meta.training.validation_auc.is_some());
        assert!(meta.training.validation_anomalous_windows > 0);
    }

    #[test]
    fn without_labels_the_threshold_is_a_normal_quantile() {
        let data = small_data();
        let unlabelled = Dataset {
            labels: None,
            ..data
        };
        let bundle = train(&unlabelled, &quick(), &mut |_| {}).unwrap();
        assert_eq!(bundle.meta.threshold_method, "normal_quantile");
        assert!(bundle.meta.threshold > 0.0);
        assert_eq!(bundle.meta.training.validation_auc, None);
    }

    #[test]
    fn normalisation_uses_every_normal_training_row_however_few_windows_train() {
        let data = small_data();
        let opts = TrainOptions {
            epochs: 1,
            ..quick()
        };
        let all = train(&data, &opts, &mut |_| {}).unwrap();
        // A stride of more than a window leaves rows out of every epoch.
        let few = TrainOptions {
            max_train_windows: 20,
            ..opts
        };
        let strided = train(&data, &few, &mut |_| {}).unwrap();
        assert!(strided.meta.training.train_windows * 10 < all.meta.training.train_windows);
        assert_eq!(strided.meta.normalisation, all.meta.normalisation);
    }

    #[test]
    fn too_little_data_says_what_is_needed() {
        let data = Dataset::parse("timestamp,wal_fsync_p99,label\n0,1,0\n2,1,0\n").unwrap();
        let err = train(&data, &quick(), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("10 consecutive steps"), "{err}");
    }

    /// Unlabelled synthetic rows from before the first scheduled defrag (row 700), so
    /// every window is normal.
    fn short_normal_data(rows: usize) -> Dataset {
        let csv = generate(&SynthOptions {
            rows,
            step_seconds: 2.0,
            seed: 5,
            incidents: 0,
            load_scale: 1.0,
        });
        Dataset {
            labels: None,
            ..Dataset::parse(&csv).unwrap()
        }
    }

    #[test]
    fn data_too_short_to_validate_takes_the_threshold_from_its_held_out_tail() {
        // Window 10: validation blocks are every fourth 100 rows; 300 rows have none.
        let data = short_normal_data(300);
        let bundle = train(&data, &quick(), &mut |_| {}).unwrap();
        let meta = &bundle.meta;
        assert_eq!(meta.threshold_method, NORMAL_QUANTILE);
        assert_eq!(meta.training.validation_windows, 0);
        // The last quarter of the normal windows, by time, never trained on.
        let all = split_windows(&data.window_starts(10, 2.0), 10).train;
        let tail = &all[all.len() - all.len() / 4..];
        assert_eq!(meta.training.threshold_windows, tail.len());
        assert!(
            meta.training.train_windows + tail.len() < all.len(),
            "windows overlapping the tail are not trained on either"
        );
        let scorer = Scorer::new(bundle.clone()).unwrap();
        let tail_scores = score_windows(&scorer, &data, tail).0;
        let expected = roc::quantile(&tail_scores, quick().normal_quantile).unwrap();
        assert_eq!(meta.threshold, expected);
        assert_eq!(threshold_warning(&meta.threshold_method), None);
    }

    #[test]
    fn without_any_held_out_window_model_json_says_the_threshold_is_optimistic() {
        // 12 rows, window 10: three windows, too few to hold one out.
        let data = short_normal_data(12);
        let bundle = train(&data, &quick(), &mut |_| {}).unwrap();
        assert_eq!(bundle.meta.threshold_method, TRAINING_QUANTILE);
        assert_eq!(bundle.meta.training.threshold_windows, 3);
        let warning = threshold_warning(&bundle.meta.threshold_method).unwrap();
        assert!(warning.contains("no held-out"), "{warning}");
    }

    #[test]
    fn a_feature_that_never_moved_keeps_its_floor() {
        // Short normal data has no failed proposal: its std is the floor, one proposal
        // per 8 s rate window (1/8 per second at a 2 s step).
        let data = short_normal_data(300);
        let bundle = train(&data, &quick(), &mut |_| {}).unwrap();
        let norm = &bundle.meta.normalisation;
        let j = bundle
            .meta
            .features
            .iter()
            .position(|f| f.name == "failed_proposals")
            .unwrap();
        assert_eq!(norm.std[j], 0.125);
        assert_eq!(norm.std_floor[j], 0.125);
        assert_eq!(norm.std_floor.len(), bundle.meta.features.len());
        // An override by name wins over the catalogue.
        let opts = TrainOptions {
            std_floors: [("failed_proposals".to_string(), 0.5)].into(),
            ..quick()
        };
        let bundle = train(&data, &opts, &mut |_| {}).unwrap();
        assert_eq!(bundle.meta.normalisation.std[j], 0.5);
    }
}
