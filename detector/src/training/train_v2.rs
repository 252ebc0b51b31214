//! Training a format 2 model on several recordings with disjoint roles. Each recording is
//! one instance and is set against its own robust baseline (`model::transform`), fitted
//! on the history before each window as serving fits it (`model::baseline`). The LSTM
//! fits the normal windows of the `train` recordings; the epoch, each feature's
//! calibration and the alert threshold are all chosen on the `calibrate` recordings, so
//! no figure of a recording used for neither is touched by either.

use std::time::Instant;

use anyhow::{Context, bail, ensure};

use crate::model::baseline::{BaselinePolicy, InstanceBaseline, Trailing};
use crate::model::features::{self, FeatureSpec};
use crate::model::inference::Scorer;
use crate::model::model_dir::{
    DataFile, FORMAT_VERSION_2, FastAlert, ModelBundle, ModelMeta, ScoringV2,
};
use crate::model::normalisation::Normalisation;
use crate::model::scoring;
use crate::model::transform::{self, FeatureTreatment, Transform};
use crate::training::alerting;
use crate::training::dataset::Dataset;
use crate::training::roc;
use crate::training::train::{EpochReport, TrainOptions, fit_autoencoder};

/// One recording (one instance) and where it came from.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: DataFile,
    pub data: Dataset,
}

/// Format 2's own knobs.
#[derive(Clone, Debug)]
pub struct V2Options {
    /// The per-feature error is over the window's last this many unmasked steps ...
    pub tail_steps: usize,
    /// ... the mean or the max of their squared errors.
    pub tail_aggregate: scoring::TailAggregate,
    /// Steps before a masked run masked too (`scoring::lead_mask`).
    pub mask_lead_steps: usize,
    /// A feature's calibration is this quantile of its error on calibration normal
    /// windows, each error the least of `alert_for_steps` windows in a row.
    pub calibration_quantile: f64,
    /// ... and at least this (squared scales): a feature that never moved on the
    /// calibration recordings is reconstructed almost exactly, and dividing by that
    /// would make any noise an alarm.
    pub calibration_floor: f64,
    /// The threshold: the lowest score whose alert gives at most this many false alarms
    /// per 1000 normal steps of the calibration recordings.
    pub max_false_alarms_per_1000: f64,
    /// How many steps the score must stay above the threshold before the alert fires.
    pub alert_for_steps: usize,
    /// A fast alert held this many steps (fewer than `alert_for_steps`) on the largest
    /// calibrated error of `fast_alert_features`, its threshold the lowest at which it
    /// keeps to `max_false_alarms_per_1000` on its own; `None`: none.
    pub fast_alert_for_steps: Option<usize>,
    /// The features the fast alert watches; `None`: those of [`DEFAULT_FAST_FEATURES`]
    /// the data has (none: no fast alert).
    pub fast_alert_features: Option<Vec<String>>,
    /// Each recording is scored against its trailing baseline, as serving scores: windows
    /// while it warms up neither train, calibrate nor count.
    pub baseline: BaselinePolicy,
    /// Per-feature errors also take the input's distance from the baseline (see
    /// `scoring::TailRule::level`).
    pub level: bool,
}

impl Default for V2Options {
    fn default() -> Self {
        V2Options {
            tail_steps: 5,
            tail_aggregate: scoring::TailAggregate::Max,
            mask_lead_steps: 1,
            calibration_quantile: 0.99,
            calibration_floor: 1.0,
            max_false_alarms_per_1000: 0.5,
            alert_for_steps: 3,
            fast_alert_for_steps: None,
            fast_alert_features: None,
            baseline: BaselinePolicy::default(),
            level: true,
        }
    }
}

/// The features a fast alert watches by default: the db against its quota and the bytes it
/// grows by per request. A NOSPACE storm moves them within a few steps, and on normal
/// load they move smoothly; a disk's latency moves for a step or two now and then, which
/// is why the main alert is held ten.
pub const DEFAULT_FAST_FEATURES: [&str; 2] = ["db_size_over_quota", "db_growth_per_request"];

/// model.json's name for how a format 2 threshold was chosen.
pub const CALIBRATION_FALSE_ALARMS: &str = "calibration_false_alarms";

/// A recording's feature columns in `names` order, with its step checked against `step`.
fn columns(source: &Source, names: &[String], step: f64) -> anyhow::Result<Dataset> {
    let data = source
        .data
        .select_features(names)
        .with_context(|| format!("reading {}", source.file.name))?;
    let own = data.step_seconds()?;
    ensure!(
        (own - step).abs() <= 0.01 * step,
        "{}: its step is {own}s but the first training file's is {step}s",
        source.file.name
    );
    Ok(data)
}

fn transformed_rows(data: &Dataset, transforms: &[Transform]) -> Vec<Vec<f64>> {
    data.rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(transforms)
                .map(|(v, t)| t.apply(*v))
                .collect()
        })
        .collect()
}

fn unmasked(data: &Dataset) -> impl Fn(usize) -> bool + '_ {
    move |i| data.mask.as_ref().is_none_or(|m| !m[i])
}

/// Windows of `data` that are wholly normal (no label) and unmasked.
fn normal_starts(data: &Dataset, w: usize, step: f64) -> Vec<usize> {
    data.window_starts(w, step)
        .into_iter()
        .filter(|&s| data.label_any(s, w) != Some(true) && !data.masked_any(s, w))
        .collect()
}

/// Adds to `errors` (one list per feature) what each feature kept up over every `hold`
/// consecutive windows of `run` (their smallest error): a spike shorter than the alert's
/// `for` cannot fire it, so it should not set how far a feature is from normal. Measured
/// per window instead, the noisiest latency's spikes set its scale so high that a disk
/// whose fsync p99 sat at one second for the whole incident stayed under the threshold.
fn push_held(errors: &mut [Vec<f64>], run: &[(usize, Vec<f64>)], hold: usize) {
    let hold = hold.max(1);
    for held in run.windows(hold) {
        for (j, acc) in errors.iter_mut().enumerate() {
            let least = held
                .iter()
                .map(|(_, e)| e.get(j).copied().unwrap_or(0.0))
                .fold(f64::INFINITY, f64::min);
            acc.push(least);
        }
    }
}

/// Trains a format 2 model: `train` recordings fit the LSTM, `calibrate` recordings choose
/// the epoch, the calibration and the threshold.
pub fn train_v2(
    train: &[Source],
    calibrate: &[Source],
    opts: &TrainOptions,
    v2: &V2Options,
    on_epoch: &mut dyn FnMut(EpochReport),
) -> anyhow::Result<ModelBundle> {
    let started = Instant::now();
    ensure!(!train.is_empty(), "format 2 needs at least one --data file");
    ensure!(
        !calibrate.is_empty(),
        "format 2 needs at least one --calibrate file"
    );
    ensure!(opts.window >= 2, "--window must be at least 2");
    ensure!(opts.hidden >= 1, "--hidden must be at least 1");
    ensure!(opts.epochs >= 1, "--epochs must be at least 1");
    ensure!(
        (1..=opts.window).contains(&v2.tail_steps),
        "the tail must be between 1 and the window"
    );
    for t in train {
        if let Some(c) = calibrate.iter().find(|c| c.file.sha256 == t.file.sha256) {
            bail!(
                "{} and {} have the same contents: a recording cannot both train and calibrate",
                t.file.name,
                c.file.name
            );
        }
    }
    let step = train[0].data.step_seconds()?;
    let feature_specs: Vec<FeatureSpec> = match &opts.features {
        Some(specs) => specs.clone(),
        None => features::catalogue_lookup(&train[0].data.feature_names, step)
            .map_err(anyhow::Error::msg)?,
    };
    let names: Vec<String> = feature_specs.iter().map(|s| s.name.clone()).collect();
    let (w, f) = (opts.window, names.len());
    // Overrides by name (`--features` std_floor) are in transformed units here.
    let treatments: Vec<(FeatureTreatment, Option<f64>)> = names
        .iter()
        .map(|name| {
            let (t, floor) = transform::treatment(name, step);
            (t, opts.std_floors.get(name).copied().or(floor))
        })
        .collect();
    let transforms: Vec<Transform> = treatments.iter().map(|(t, _)| t.transform).collect();
    let floors: Vec<Option<f64>> = treatments.iter().map(|(_, f)| *f).collect();

    let load = |sources: &[Source]| -> anyhow::Result<Vec<(Dataset, Vec<Vec<f64>>)>> {
        sources
            .iter()
            .map(|s| {
                let data = columns(s, &names, step)?;
                let t = transformed_rows(&data, &transforms);
                Ok((data, t))
            })
            .collect()
    };
    let train_rows = load(train)?;
    let calib_rows = load(calibrate)?;

    // The pooled reference (for windows without history): every unmasked training row.
    let mut pooled = Vec::new();
    for (data, t) in &train_rows {
        let keep = unmasked(data);
        pooled.extend(
            t.iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, r)| r.clone()),
        );
    }
    let reference = transform::fit_baseline(&pooled, |_| true, &floors);
    // Every instance's baseline uses the reference's floors (features without a
    // catalogue floor get the pooled fit's), as `Scorer::instance_baseline` does.
    let floors: Vec<Option<f64>> = reference.std_floor.iter().map(|&x| Some(x)).collect();
    let policy = v2.baseline;
    policy.validate().map_err(anyhow::Error::msg)?;
    let baselines = |sets: Vec<(Dataset, Vec<Vec<f64>>)>| -> Vec<(Dataset, Trailing)> {
        sets.into_iter()
            .filter_map(|(data, t)| {
                let trailing = {
                    let keep = unmasked(&data);
                    Trailing::build(t.len(), policy, |from, at| {
                        Some(InstanceBaseline {
                            normalisation: transform::fit_baseline(
                                &t[from..at],
                                |i| keep(from + i),
                                &floors,
                            ),
                            steps: (from..at).filter(|&i| keep(i)).count(),
                        })
                    })?
                };
                Some((data, trailing))
            })
            .collect()
    };
    let train_sets = baselines(train_rows);
    let calib_sets = baselines(calib_rows);

    // A window's baseline, when it is ready: warming-up windows are left out.
    let ready = |trailing: &Trailing, s: usize| {
        trailing
            .at(s + w - 1)
            .filter(|(_, ready)| *ready)
            .map(|(b, _)| b.clone())
    };
    let prepare = |data: &Dataset, baseline: &Normalisation, s: usize| {
        scoring::prepare_v2(
            &data.window_values(s, w),
            &data.window_mask(s, w),
            &transforms,
            baseline,
        )
    };
    let mut train_x: Vec<Vec<f32>> = Vec::new();
    for (data, trailing) in &train_sets {
        for s in normal_starts(data, w, step) {
            if let Some(baseline) = ready(trailing, s) {
                train_x.extend(prepare(data, &baseline, s));
            }
        }
    }
    ensure!(
        !train_x.is_empty(),
        "no normal training windows: the --data files need stretches of {w} unlabelled, unmasked steps"
    );
    let all_train_windows = train_x.len();
    if train_x.len() > opts.max_train_windows {
        let stride = train_x.len().div_ceil(opts.max_train_windows);
        train_x = train_x.into_iter().step_by(stride).collect();
    }
    let mut val_x: Vec<Vec<f32>> = Vec::new();
    for (data, trailing) in &calib_sets {
        for s in normal_starts(data, w, step) {
            if let Some(baseline) = ready(trailing, s) {
                val_x.extend(prepare(data, &baseline, s));
            }
        }
    }
    ensure!(
        !val_x.is_empty(),
        "no normal windows in the --calibrate files: they choose the epoch and the threshold"
    );

    let fitted = fit_autoencoder(&train_x, &val_x, w, f, opts, on_epoch)?;

    let scored: Vec<bool> = treatments.iter().map(|(t, _)| t.scored).collect();
    let upward: Vec<bool> = treatments.iter().map(|(t, _)| t.upward).collect();
    let fast_features = fast_alert_features(v2, &names, &scored)?;
    let mut data_files: Vec<DataFile> = train.iter().map(|s| s.file.clone()).collect();
    data_files.extend(calibrate.iter().map(|s| s.file.clone()));
    let meta = ModelMeta {
        format_version: FORMAT_VERSION_2,
        window: w,
        step_seconds: step,
        features: feature_specs,
        mask: Some(features::default_mask(step)),
        architecture: fitted.arch.clone(),
        normalisation: reference,
        threshold: 0.0,
        threshold_method: CALIBRATION_FALSE_ALARMS.into(),
        training: fitted.metrics(
            opts.seed,
            train.iter().map(|s| s.data.len()).sum(),
            train_x.len(),
            val_x.len(),
        ),
        scoring_v2: Some(ScoringV2 {
            transforms,
            scored,
            upward,
            level: v2.level,
            tail_steps: v2.tail_steps,
            tail_aggregate: v2.tail_aggregate,
            mask_lead_steps: v2.mask_lead_steps,
            calibration: vec![1.0; f],
            calibration_quantile: v2.calibration_quantile,
            calibration_floor: v2.calibration_floor,
            max_false_alarms_per_1000: v2.max_false_alarms_per_1000,
            alert_for_steps: v2.alert_for_steps,
            calibration_false_alarms_per_1000: 0.0,
            fast_alert: None,
            data_files,
            baseline: policy,
        }),
    };
    tracing::debug!(
        all_train_windows,
        "format 2 training windows before striding"
    );
    let mut scorer = Scorer::new(ModelBundle {
        meta,
        weights: fitted.weights,
        source: "training".into(),
    })?;

    // Calibration: each feature's error quantile on the calibration normal windows, as
    // the alert sees an error: held for `alert_for_steps` windows in a row.
    let mut errors: Vec<Vec<f64>> = vec![Vec::new(); f];
    for (data, trailing) in &calib_sets {
        let mut run: Vec<(usize, Vec<f64>)> = Vec::new();
        for s in normal_starts(data, w, step) {
            let Some(baseline) = ready(trailing, s) else {
                continue;
            };
            let e = scorer.feature_errors(
                &data.window_values(s, w),
                &data.window_mask(s, w),
                Some(&baseline),
            );
            if let Ok(Some(e)) = e {
                if run.last().is_some_and(|(prev, _)| prev + 1 != s) {
                    push_held(&mut errors, &run, v2.alert_for_steps);
                    run.clear();
                }
                run.push((s, e));
            }
        }
        push_held(&mut errors, &run, v2.alert_for_steps);
    }
    let calibration: Vec<f64> = errors
        .iter()
        .map(|e| {
            roc::quantile(e, v2.calibration_quantile)
                .unwrap_or(v2.calibration_floor)
                .max(v2.calibration_floor)
        })
        .collect();
    let mut bundle = scorer.bundle.clone();
    if let Some(s) = bundle.meta.scoring_v2.as_mut() {
        s.calibration = calibration;
        // So that each window also gets its fast score; the threshold comes below.
        s.fast_alert = fast_features.map(|features| FastAlert {
            features,
            threshold: 0.0,
            for_steps: v2.fast_alert_for_steps.unwrap_or(1),
            calibration_false_alarms_per_1000: 0.0,
        });
    }
    scorer = Scorer::new(bundle)?;

    // The threshold: per-step scores of the calibration recordings, as an alert; and the
    // fast alert's own scores.
    let mut recordings = Vec::with_capacity(calib_sets.len());
    let mut fast_scores = Vec::with_capacity(calib_sets.len());
    for (data, trailing) in &calib_sets {
        let mut at = vec![None; data.len()];
        let mut fast_at = vec![None; data.len()];
        for s in data.window_starts(w, step) {
            let Some(baseline) = ready(trailing, s) else {
                continue;
            };
            if let Ok(score) = scorer.score_against(
                &data.window_values(s, w),
                &data.window_mask(s, w),
                Some(&baseline),
            ) {
                at[s + w - 1] = Some(score.score);
                fast_at[s + w - 1] = score.fast_score;
            }
        }
        let labels = data.labels.clone().unwrap_or_else(|| vec![0; data.len()]);
        recordings.push((at, labels));
        fast_scores.push(fast_at);
    }
    let (threshold, rate, normal_steps) = lowest_threshold(
        &recordings,
        v2.alert_for_steps,
        v2.max_false_alarms_per_1000,
    )
    .context("the calibration recordings have no scored normal step")?;
    let mut bundle = scorer.bundle;
    let fast_alert = match bundle
        .meta
        .scoring_v2
        .as_mut()
        .and_then(|s| s.fast_alert.take())
    {
        Some(fast) => {
            let main = (threshold, v2.alert_for_steps);
            let (threshold, rate, _) = lowest_fast_threshold(
                &recordings,
                &fast_scores,
                main,
                fast.for_steps,
                v2.max_false_alarms_per_1000,
            )
            .context("the calibration recordings have no scored normal step")?;
            Some(FastAlert {
                threshold,
                calibration_false_alarms_per_1000: rate,
                ..fast
            })
        }
        None => None,
    };
    bundle.meta.threshold = threshold;
    bundle.meta.training.threshold_windows = normal_steps;
    if let Some(s) = bundle.meta.scoring_v2.as_mut() {
        s.calibration_false_alarms_per_1000 = rate;
        s.fast_alert = fast_alert;
    }
    crate::training::train::finish(bundle, started)
}

/// The lowest threshold (a score of some normal step) whose alert, held `for_steps`,
/// gives at most `max_per_1000` false alarms per 1000 normal steps over `recordings`
/// (per-step scores, labels). About 1000 quantiles of the normal scores are tried first,
/// then every score between the last that failed and the first that passed. Returns it,
/// the rate it gave, and the normal steps judged; `None` without a scored normal step.
pub fn lowest_threshold(
    recordings: &[(Vec<Option<f64>>, Vec<u8>)],
    for_steps: usize,
    max_per_1000: f64,
) -> Option<(f64, f64, usize)> {
    lowest_passing(
        recordings,
        f64::NEG_INFINITY,
        for_steps,
        max_per_1000,
        |_, scores, t| alerting::model_firing(scores, t, for_steps, None),
    )
}

/// The fast alert's threshold: the lowest fast score (`fast_scores`, per recording of
/// `recordings`), at least the main alert's threshold (`main`: threshold, hold), whose
/// alert held `fast_for` steps gives on its own at most `max_per_1000` false alarms per
/// 1000 normal steps: it is a rule of its own, paging on its own. Returns it, what the
/// two alerts together gave, and the normal steps judged.
pub fn lowest_fast_threshold(
    recordings: &[(Vec<Option<f64>>, Vec<u8>)],
    fast_scores: &[Vec<Option<f64>>],
    main: (f64, usize),
    fast_for: usize,
    max_per_1000: f64,
) -> Option<(f64, f64, usize)> {
    let (threshold, for_steps) = main;
    let fast_recordings: Vec<(Vec<Option<f64>>, Vec<u8>)> = fast_scores
        .iter()
        .zip(recordings)
        .map(|(fast, (_, labels))| (fast.clone(), labels.clone()))
        .collect();
    let (fast, _, _) = lowest_passing(
        &fast_recordings,
        threshold,
        for_steps,
        max_per_1000,
        |_, scores, t| alerting::model_firing(scores, t, fast_for, None),
    )?;
    let (rate, normal_steps) =
        false_alarm_rate(recordings, &judging(recordings), for_steps, |i, scores| {
            let signal = (fast_scores[i].as_slice(), fast, fast_for);
            alerting::model_firing(scores, threshold, for_steps, Some(signal))
        });
    Some((fast, rate, normal_steps))
}

/// The features of a fast alert (`None`: no fast alert): `v2`'s list, each a scored
/// feature of `names`, or without one the defaults the data has.
fn fast_alert_features(
    v2: &V2Options,
    names: &[String],
    scored: &[bool],
) -> anyhow::Result<Option<Vec<String>>> {
    if v2.fast_alert_for_steps.is_none() {
        return Ok(None);
    }
    let is_scored = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .is_some_and(|j| scored[j])
    };
    let features: Vec<String> = match &v2.fast_alert_features {
        Some(list) => {
            if let Some((i, dup)) = list
                .iter()
                .enumerate()
                .find(|(i, n)| list[..*i].contains(n))
            {
                bail!("the fast alert's features name `{dup}` twice (at {i})");
            }
            if let Some(bad) = list.iter().find(|n| !is_scored(n)) {
                bail!(
                    "the fast alert's feature `{bad}` is not a scored feature of the model ({})",
                    names.join(", ")
                );
            }
            list.clone()
        }
        None => DEFAULT_FAST_FEATURES
            .iter()
            .filter(|n| is_scored(n))
            .map(|n| n.to_string())
            .collect(),
    };
    Ok(Some(features).filter(|f| !f.is_empty()))
}

/// False alarms per 1000 normal steps of the alert `fires(scores)` over `recordings`
/// (late alerts within `grace` steps of an incident's end are the incident's), and the
/// normal steps judged.
fn false_alarm_rate(
    recordings: &[(Vec<Option<f64>>, Vec<u8>)],
    judging: &[Judging],
    grace: usize,
    fires: impl Fn(usize, &[Option<f64>]) -> Vec<bool>,
) -> (f64, usize) {
    let (mut false_alarms, mut normal_steps) = (0, 0);
    for (i, ((scores, labels), (known, incidents))) in recordings.iter().zip(judging).enumerate() {
        let judged = alerting::judge_fired(&fires(i, scores), known, grace, labels, incidents);
        false_alarms += judged.false_alarms;
        normal_steps += judged.normal_steps;
    }
    (
        1000.0 * false_alarms as f64 / normal_steps.max(1) as f64,
        normal_steps,
    )
}

/// Per recording, what judging an alert on it needs besides the alert: the steps with a
/// score, and the incidents. Found once per search, not once per threshold tried.
type Judging = (Vec<bool>, Vec<alerting::Incident>);

fn judging(recordings: &[(Vec<Option<f64>>, Vec<u8>)]) -> Vec<Judging> {
    recordings
        .iter()
        .map(|(scores, labels)| {
            let known = scores.iter().map(Option::is_some).collect();
            (known, alerting::incidents(labels, None))
        })
        .collect()
}

/// The lowest `t`, `floor` or a normal score above it, at which the alert `fires(scores,
/// t)` gives at most `max_per_1000` false alarms (late alerts within `grace` steps of an
/// incident's end are the incident's); see [`lowest_threshold`].
fn lowest_passing(
    recordings: &[(Vec<Option<f64>>, Vec<u8>)],
    floor: f64,
    grace: usize,
    max_per_1000: f64,
    fires: impl Fn(usize, &[Option<f64>], f64) -> Vec<bool>,
) -> Option<(f64, f64, usize)> {
    let mut normal: Vec<f64> = recordings
        .iter()
        .flat_map(|(scores, labels)| {
            scores
                .iter()
                .zip(labels)
                .filter(|(_, l)| **l == 0)
                .filter_map(|(s, _)| *s)
        })
        .collect();
    if normal.is_empty() {
        return None;
    }
    if floor.is_finite() {
        normal.retain(|&s| s > floor);
        normal.push(floor);
    }
    normal.sort_by(f64::total_cmp);
    normal.dedup();
    let stride = normal.len().div_ceil(1000).max(1);
    let mut candidates: Vec<f64> = normal.iter().copied().step_by(stride).collect();
    // The largest normal score always qualifies (nothing normal is above it).
    if candidates.last() != normal.last() {
        candidates.extend(normal.last());
    }
    let judging = judging(recordings);
    let rate_at =
        |t: f64| false_alarm_rate(recordings, &judging, grace, |i, scores| fires(i, scores, t));
    let mut below = f64::NEG_INFINITY;
    for &t in &candidates {
        let (rate, normal_steps) = rate_at(t);
        if rate <= max_per_1000 {
            // The lowest score that qualifies lies between the last candidate that did not
            // and this one: the exact one, so that an implementation whose scores differ
            // in the last digits (the notebook's numpy) finds the same window's score.
            for &u in normal.iter().filter(|&&u| u > below && u < t) {
                let (rate, normal_steps) = rate_at(u);
                if rate <= max_per_1000 {
                    return Some((u, rate, normal_steps));
                }
            }
            return Some((t, rate, normal_steps));
        }
        below = t;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_takes_what_a_feature_held_not_its_spikes() {
        // Feature 0 spikes to 50 for 2 windows; feature 1 sits at 4 for 12 windows.
        let run: Vec<(usize, Vec<f64>)> = (0..20)
            .map(|s| {
                let spike = if (5..7).contains(&s) { 50.0 } else { 1.0 };
                let held = if (3..15).contains(&s) { 4.0 } else { 1.0 };
                (s, vec![spike, held])
            })
            .collect();
        let mut errors = vec![Vec::new(), Vec::new()];
        push_held(&mut errors, &run, 10);
        assert_eq!(errors[0].len(), 11, "one value per 10 windows in a row");
        assert_eq!(errors[0].iter().copied().fold(0.0, f64::max), 1.0);
        assert_eq!(errors[1].iter().copied().fold(0.0, f64::max), 4.0);
        // A run shorter than the hold cannot fire an alert alone: it adds nothing.
        let mut none = vec![Vec::new(), Vec::new()];
        push_held(&mut none, &run[..9], 10);
        assert!(none.iter().all(Vec::is_empty));
    }

    #[test]
    fn the_threshold_is_the_lowest_with_few_enough_false_alarms() {
        // 1000 normal steps at 0.1 with two bursts: 5 steps at 3.0 and 2 steps at 5.0.
        let mut scores: Vec<Option<f64>> = vec![Some(0.1); 1000];
        for s in &mut scores[100..105] {
            *s = Some(3.0);
        }
        for s in &mut scores[500..502] {
            *s = Some(5.0);
        }
        let recordings = vec![(scores, vec![0u8; 1000])];
        // Any alert held 1 step: both bursts are false alarms above 0.1, one above 3.
        let (t, rate, steps) = lowest_threshold(&recordings, 1, 1.0).unwrap();
        assert_eq!((t, rate, steps), (3.0, 1.0, 1000));
        let (t, _, _) = lowest_threshold(&recordings, 1, 0.0).unwrap();
        assert_eq!(t, 5.0);
        // Held 3 steps, the 2-step burst never fires; the 5-step one does above 0.1.
        let (t, rate, _) = lowest_threshold(&recordings, 3, 0.0).unwrap();
        assert_eq!((t, rate), (3.0, 0.0));
        assert!(lowest_threshold(&[(vec![None; 3], vec![0; 3])], 1, 1.0).is_none());
    }

    #[test]
    fn a_fast_alert_watches_the_default_db_features_the_data_has_or_those_named() {
        let names: Vec<String> = [
            "db_size_over_quota",
            "leader_changes",
            "db_growth_per_request",
        ]
        .map(String::from)
        .to_vec();
        let scored = [true, true, false];
        let opts = |for_steps: Option<usize>, list: Option<&[&str]>| V2Options {
            fast_alert_for_steps: for_steps,
            fast_alert_features: list.map(|l| l.iter().map(|n| n.to_string()).collect()),
            ..V2Options::default()
        };
        // The defaults, of those the data scores: the growth per request is context here.
        let got = fast_alert_features(&opts(Some(2), None), &names, &scored).unwrap();
        assert_eq!(got, Some(vec!["db_size_over_quota".to_string()]));
        // No hold, no fast alert; none of the defaults scored, none either.
        assert_eq!(
            fast_alert_features(&opts(None, None), &names, &scored).unwrap(),
            None
        );
        let unscored = [false, true, false];
        assert_eq!(
            fast_alert_features(&opts(Some(2), None), &names, &unscored).unwrap(),
            None
        );
        // Named: each must be a scored feature, once.
        let named = opts(Some(2), Some(&["leader_changes"]));
        let got = fast_alert_features(&named, &names, &scored).unwrap();
        assert_eq!(got, Some(vec!["leader_changes".to_string()]));
        for (list, why) in [
            (&["db_growth_per_request"][..], "not a scored feature"),
            (&["nope"][..], "not a scored feature"),
            (&["leader_changes", "leader_changes"][..], "twice"),
        ] {
            let err = fast_alert_features(&opts(Some(2), Some(list)), &names, &scored).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn the_fast_threshold_is_the_lowest_its_own_alert_keeps_to_the_budget_at() {
        // 1000 normal steps at 0.1 with three bursts: 12 steps at 3, 2 at 5, 3 at 7.
        let mut scores: Vec<Option<f64>> = vec![Some(0.1); 1000];
        for (at, len, value) in [(100, 12, 3.0), (400, 2, 5.0), (700, 3, 7.0)] {
            for s in &mut scores[at..at + len] {
                *s = Some(value);
            }
        }
        // The fast alert watches the features of every burst but the first.
        let mut fast = scores.clone();
        for s in &mut fast[100..112] {
            *s = Some(0.1);
        }
        let recordings = vec![(scores, vec![0u8; 1000])];
        let fast = vec![fast];
        // Held 10 steps, only the 12-step burst fires: one false alarm, within 1 per 1000.
        let main = lowest_threshold(&recordings, 10, 1.0).unwrap();
        assert_eq!((main.0, main.1), (0.1, 1.0));
        // Held 2 steps, on its own within 1: at the 5s, so only the 7s alarm. With the main
        // alert's, two alarms in all.
        let (t, rate, steps) =
            lowest_fast_threshold(&recordings, &fast, (0.1, 10), 2, 1.0).unwrap();
        assert_eq!((t, rate, steps), (5.0, 2.0, 1000));
        // Within 2 on its own: from the main threshold up, as its own score never shows
        // the 12-step burst; three alarms with the main alert's.
        let (t, rate, _) = lowest_fast_threshold(&recordings, &fast, (0.1, 10), 2, 2.0).unwrap();
        assert_eq!((t, rate), (0.1, 3.0));
        // Never below the main threshold, even when nothing normal comes near it.
        let calm = vec![(vec![Some(0.1); 50], vec![0u8; 50])];
        let calm_fast = vec![vec![Some(0.1); 50]];
        let (t, rate, _) = lowest_fast_threshold(&calm, &calm_fast, (4.0, 10), 2, 0.0).unwrap();
        assert_eq!((t, rate), (4.0, 0.0));
    }

    #[test]
    fn the_threshold_is_the_exact_lowest_not_a_strided_candidate() {
        // 2999 one-step spikes of heights 1..=2999 between zeros: 3000 distinct normal
        // scores, so the candidates are every third (..., 2994, 2997, 2999). Four false
        // alarms in 6000 steps fit a budget of 0.67 per 1000, five do not: the lowest
        // threshold is 2995, which is not a candidate (2997 would be the strided answer).
        let scores: Vec<Option<f64>> = (1..=2999)
            .flat_map(|h| [Some(0.0), Some(f64::from(h))])
            .chain([Some(0.0), Some(0.0)])
            .collect();
        let n = scores.len();
        let recordings = vec![(scores, vec![0u8; n])];
        let (t, rate, steps) = lowest_threshold(&recordings, 1, 0.67).unwrap();
        assert_eq!((t, steps), (2995.0, 6000));
        assert!((rate - 1000.0 * 4.0 / 6000.0).abs() < 1e-12, "{rate}");
    }

    use crate::model::model_dir::FORMAT_VERSION;
    use crate::training::provenance::sha256_hex;
    use crate::training::synth::{SynthOptions, generate};
    use crate::training::train::tests::quick;
    use crate::training::train::{score_windows, train};

    fn synth(seed: u64, rows: usize, incidents: usize, load_scale: f64) -> (String, Dataset) {
        let csv = generate(&SynthOptions {
            rows,
            step_seconds: 2.0,
            seed,
            incidents,
            load_scale,
        });
        let data = Dataset::parse(&csv).unwrap();
        (csv, data)
    }

    fn source(role: &str, name: &str, seed: u64) -> Source {
        let (csv, data) = synth(seed, 900, 4, 1.0);
        Source {
            file: DataFile {
                role: role.into(),
                name: name.into(),
                sha256: sha256_hex(csv.as_bytes()),
            },
            data,
        }
    }

    #[test]
    fn a_v2_model_does_not_alarm_on_five_times_the_load_while_v1_does() {
        let train_src = source("train", "a.csv", 3);
        let calib_src = source("calibrate", "b.csv", 4);
        let v2 = train_v2(
            std::slice::from_ref(&train_src),
            std::slice::from_ref(&calib_src),
            &quick(),
            &V2Options::default(),
            &mut |_| {},
        )
        .unwrap();
        // What model.json records: format, roles, calibration, context features.
        let meta = &v2.meta;
        assert_eq!(meta.format_version, FORMAT_VERSION_2);
        meta.validate().unwrap();
        let s = meta.scoring_v2.as_ref().unwrap();
        let roles: Vec<(&str, &str)> = s
            .data_files
            .iter()
            .map(|d| (d.role.as_str(), d.name.as_str()))
            .collect();
        assert_eq!(roles, [("train", "a.csv"), ("calibrate", "b.csv")]);
        assert!(s.calibration.iter().all(|&c| c >= s.calibration_floor));
        let grpc = meta
            .features
            .iter()
            .position(|f| f.name == "grpc_request_rate")
            .unwrap();
        assert!(!s.scored[grpc]);
        assert!(meta.threshold > 0.0);
        assert!(s.calibration_false_alarms_per_1000 <= 0.5);
        // Every normal window of the calibration recording but those of its baseline's
        // warm-up (60 steps by default).
        let all_normal = normal_starts(&calib_src.data, 10, 2.0);
        let after_warm_up = all_normal.iter().filter(|&&s| s + 10 > 60).count();
        assert!(meta.training.validation_windows <= after_warm_up);
        assert!(meta.training.validation_windows * 10 >= after_warm_up * 9);
        // Saved and loaded, it is the same model (JSON may move a float's last bit).
        let dir = tempfile::tempdir().unwrap();
        v2.save(dir.path()).unwrap();
        let loaded = ModelBundle::load(dir.path()).unwrap().meta;
        let back = loaded.scoring_v2.as_ref().unwrap();
        assert_eq!(
            (&back.transforms, &back.data_files),
            (&s.transforms, &s.data_files)
        );
        assert!((loaded.threshold - meta.threshold).abs() < 1e-12);

        let v1 = train(&train_src.data, &quick(), &mut |_| {}).unwrap();
        assert_eq!(v1.meta.format_version, FORMAT_VERSION);
        let (v1, v2) = (Scorer::new(v1).unwrap(), Scorer::new(v2).unwrap());
        // A normal recording never seen, at its own load and at five times it.
        let (_, normal) = synth(9, 600, 0, 1.0);
        let (_, busy) = synth(9, 600, 0, 5.0);
        let starts = normal.window_starts(10, 2.0);
        let above = |scorer: &Scorer, data: &Dataset| {
            let (scores, _) = score_windows(scorer, data, &starts);
            let t = scorer.threshold();
            (scores.iter().filter(|&&x| x > t).count(), scores)
        };
        let (v1_busy, _) = above(&v1, &busy);
        assert!(
            v1_busy * 2 > starts.len(),
            "format 1 flags {v1_busy} of {} busy windows",
            starts.len()
        );
        // Format 2 sets each recording against its own baseline, where five times the
        // load is a shift: the scores are those of the same recording at its own load.
        let (v2_normal, normal_scores) = above(&v2, &normal);
        let (v2_busy, busy_scores) = above(&v2, &busy);
        assert_eq!(v2_busy, v2_normal);
        for (a, b) in normal_scores.iter().zip(&busy_scores) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!(v2_busy * 20 < starts.len(), "{v2_busy} of {}", starts.len());
    }

    #[test]
    fn a_recording_cannot_both_train_and_calibrate() {
        let a = source("train", "a.csv", 3);
        let b = Source {
            file: DataFile {
                role: "calibrate".into(),
                ..a.file.clone()
            },
            ..a.clone()
        };
        let err = train_v2(&[a], &[b], &quick(), &V2Options::default(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("both train and calibrate"), "{err}");
    }
}
