//! `eval`: how a model does on labelled CSVs, scored exactly as serving scores: per window
//! (AUC, precision, recall) and as an alert beside the static rules ([`alerting`]).

use anyhow::{Context, ensure};
use serde::Serialize;

use crate::model::baseline::Trailing;
use crate::model::inference::Scorer;
use crate::training::alerting::{self, AlertStats, Judged};
use crate::training::dataset::Dataset;
use crate::training::roc::{self, Confusion, YoudenPoint};
use crate::training::rules::{self, RULES};
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
    /// The model as an alert beside the static rules, per incident kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingReport>,
    /// Data files that trained or calibrated the model (format 2 records them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub fn evaluate(scorer: &Scorer, data: &Dataset) -> anyhow::Result<EvalReport> {
    evaluate_all(scorer, std::slice::from_ref(data))
}

/// The window figures over every window of every dataset, pooled.
pub fn evaluate_all(scorer: &Scorer, datasets: &[Dataset]) -> anyhow::Result<EvalReport> {
    let meta = &scorer.bundle.meta;
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for data in datasets {
        ensure!(
            data.labels.is_some(),
            "the data has no `label` column; eval needs labelled rows"
        );
        let data = data.for_model(meta)?;
        let starts = data.window_starts(meta.window, meta.step_seconds);
        let (s, l) = score_windows(scorer, &data, &starts);
        scores.extend(s);
        labels.extend(l);
    }
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
        alerting: None,
        warnings: Vec::new(),
    })
}

/// One labelled recording of one etcd member, as `eval` reads it.
#[derive(Clone, Debug)]
pub struct Recording {
    pub name: String,
    pub data: Dataset,
    /// Incident kinds in order (`<recording>.incidents.csv`), when known.
    pub kinds: Option<Vec<String>>,
}

/// How the alerts are judged.
#[derive(Clone, Copy, Debug)]
pub struct AlertingOptions {
    /// How long the model's score must stay above its threshold, in represented time.
    pub alert_for_seconds: f64,
    /// What one step of the data stands for (the step itself for a real cluster; a
    /// minute for the compressed recordings).
    pub represents_seconds: f64,
}

/// The model's alert and the static rules on the same recordings, per incident kind.
#[derive(Clone, Debug, Serialize)]
pub struct AlertingReport {
    pub recordings: Vec<String>,
    pub step_seconds: f64,
    pub represents_seconds: f64,
    pub threshold: f64,
    /// The model's fast alert (a higher threshold held fewer steps), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_alert: Option<FastAlertUsed>,
    /// The model's alerts together: the main one, or the fast one.
    pub model: AlertStats,
    /// The main alert alone (a model with a fast alert), to show what the fast one adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_main_alert_only: Option<AlertStats>,
    pub rules: Vec<AlertStats>,
    /// Any of the rules, each with its own `for`.
    pub any_rule: AlertStats,
    /// Incidents some rule caught, and of those, the ones the model caught no later.
    pub caught_by_a_rule: usize,
    pub model_no_later_than_rules: usize,
    /// How the model scored: format 1 (one global normalisation) or 2 (each recording
    /// against its own baseline).
    pub model_format: u32,
    /// Incidents that began while the recording's baseline was still warming up (its first
    /// steps): the model may not alert then, so neither it nor the rules are judged on them.
    pub incidents_in_warm_up: usize,
    /// Each of the model's false alarms, in order: where it began and what drove it.
    pub model_false_alarms: Vec<FalseAlarm>,
    /// Each incident a rule caught before the model did, or that the model missed.
    pub model_later_than_rules: Vec<LaterThanRule>,
}

/// The fast alert as judged: the features it watches, its threshold and hold, in steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FastAlertUsed {
    pub features: Vec<String>,
    pub threshold: f64,
    pub for_steps: usize,
}

/// An incident where a rule alerted first: the one to look at when the model is meant to
/// come no later than the rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaterThanRule {
    pub recording: String,
    pub kind: String,
    /// The incident's first step.
    pub start: usize,
    /// Steps from the start to the model's first alert; `None`: it never alerted.
    pub model_delay_steps: Option<usize>,
    /// The first rule to alert, and after how many steps.
    pub rule: String,
    pub rule_delay_steps: usize,
}

/// One of the model's false alarms: the step it began (the window ending there), the
/// row's timestamp, and the feature with the largest share of that window's score, so a
/// user tuning a model sees which signal was noisy on their cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FalseAlarm {
    pub recording: String,
    pub step: usize,
    pub timestamp: Option<f64>,
    pub feature: Option<String>,
    pub score: f64,
}

/// Judges the model's alert (score above its threshold for `alert_for`) and every rule
/// whose columns the recordings have, over all of `recordings`.
pub fn alerting(
    scorer: &Scorer,
    recordings: &[Recording],
    opts: AlertingOptions,
) -> anyhow::Result<AlertingReport> {
    let meta = &scorer.bundle.meta;
    let w = meta.window;
    let model_for = rules::steps(opts.alert_for_seconds, opts.represents_seconds);
    // The fast alert's hold is in steps of the model: at the step it was calibrated for,
    // it stands for the same time.
    let fast = meta
        .scoring_v2
        .as_ref()
        .and_then(|v2| v2.fast_alert.as_ref());
    let mut incidents = Vec::new();
    let mut model_judged = Vec::new();
    let mut main_judged = Vec::new();
    let mut rule_judged: Vec<Vec<Judged>> = vec![Vec::new(); RULES.len()];
    let mut rule_present = vec![true; RULES.len()];
    let mut any_judged = Vec::new();
    let mut incidents_in_warm_up = 0;
    let mut model_false_alarms = Vec::new();
    for rec in recordings {
        let labels = rec.data.labels.as_deref().with_context(|| {
            format!(
                "{} has no `label` column; eval needs labelled rows",
                rec.name
            )
        })?;
        let data = rec
            .data
            .for_model(meta)
            .with_context(|| format!("reading {}", rec.name))?;
        let mut incs = alerting::incidents(labels, rec.kinds.as_deref());
        // The score of the window ending at each step, and the feature with the largest
        // share of it.
        let mut scores = vec![None; data.len()];
        let mut fast_scores = vec![None; data.len()];
        let mut drivers: Vec<Option<(f64, Option<usize>)>> = vec![None; data.len()];
        // One recording is one instance: format 2 sets each window against the baseline
        // of the history before it, as serving does, and never alerts while it warms up.
        let trailing = Trailing::fit(scorer, &data.rows, data.mask.as_deref());
        if let Some(trailing) = &trailing {
            let ready_from = trailing.ready_from().unwrap_or(data.len());
            let before = incs.len();
            // Neither the model nor the rules are judged on incidents it could not alert on.
            incs.retain(|inc| inc.start >= ready_from);
            incidents_in_warm_up += before - incs.len();
        }
        for s in data.window_starts(w, meta.step_seconds) {
            let end = s + w - 1;
            let baseline = match &trailing {
                Some(t) => match t.at(end) {
                    Some((b, true)) => Some(b),
                    _ => continue,
                },
                None => None,
            };
            if let Ok(score) =
                scorer.score_against(&data.window_values(s, w), &data.window_mask(s, w), baseline)
            {
                scores[end] = Some(score.score);
                fast_scores[end] = score.fast_score;
                let top = (0..score.feature_shares.len())
                    .max_by(|&a, &b| score.feature_shares[a].total_cmp(&score.feature_shares[b]));
                drivers[end] = Some((score.score, top));
            }
        }
        let known: Vec<bool> = scores.iter().map(Option::is_some).collect();
        let signal = fast.map(|f| (fast_scores.as_slice(), f.threshold, f.for_steps));
        let fired = alerting::model_firing(&scores, meta.threshold, model_for, signal);
        let judged = alerting::judge_fired(&fired, &known, model_for, labels, &incs);
        if fast.is_some() {
            let main = alerting::model_firing(&scores, meta.threshold, model_for, None);
            main_judged.push(alerting::judge_fired(
                &main, &known, model_for, labels, &incs,
            ));
        }
        for &step in &judged.false_alarm_steps {
            let (score, top) = drivers[step].unwrap_or((f64::NAN, None));
            model_false_alarms.push(FalseAlarm {
                recording: rec.name.clone(),
                step,
                timestamp: rec.data.timestamps.get(step).copied(),
                feature: top
                    .and_then(|i| meta.features.get(i))
                    .map(|f| f.name.clone()),
                score,
            });
        }
        model_judged.push(judged);
        let mut any = vec![false; data.len()];
        for (i, rule) in RULES.iter().enumerate() {
            let step = meta.step_seconds;
            match rule.evaluate(&rec.data, step, opts.represents_seconds) {
                Some(condition) => {
                    let for_steps = rule.for_steps(opts.represents_seconds);
                    for (a, f) in any.iter_mut().zip(alerting::firing(&condition, for_steps)) {
                        *a |= f;
                    }
                    rule_judged[i].push(alerting::judge(&condition, for_steps, labels, &incs));
                }
                None => rule_present[i] = false,
            }
        }
        let any: Vec<Option<bool>> = any.into_iter().map(Some).collect();
        any_judged.push(alerting::judge(&any, 1, labels, &incs));
        incidents.push(incs);
    }
    let names: Vec<String> = recordings.iter().map(|r| r.name.clone()).collect();
    let model = alerting::summarise("model", model_for, &model_judged, &incidents, &names);
    let model_main_alert_only = fast.map(|_| {
        alerting::summarise(
            "model, main alert only",
            model_for,
            &main_judged,
            &incidents,
            &names,
        )
    });
    let rules: Vec<AlertStats> = RULES
        .iter()
        .zip(&rule_judged)
        .zip(&rule_present)
        .filter(|(_, present)| **present)
        .map(|((rule, judged), _)| {
            alerting::summarise(
                rule.name,
                rule.for_steps(opts.represents_seconds),
                judged,
                &incidents,
                &names,
            )
        })
        .collect();
    let any_rule = alerting::summarise("any rule", 1, &any_judged, &incidents, &names);
    let mut caught_by_a_rule = 0;
    let mut model_no_later_than_rules = 0;
    let mut model_later_than_rules = Vec::new();
    // `delays` run over the recordings' incidents in order, as `incidents` does.
    let placed = names
        .iter()
        .zip(&incidents)
        .flat_map(|(name, incs)| incs.iter().map(move |inc| (name, inc)));
    for ((i, model_delay), (recording, inc)) in model.delays.iter().enumerate().zip(placed) {
        let first_rule = rules
            .iter()
            .filter_map(|r| r.delays[i].map(|d| (d, &r.name)))
            .min_by_key(|&(d, _)| d);
        if let Some((rule_delay, rule)) = first_rule {
            caught_by_a_rule += 1;
            if model_delay.is_some_and(|d| d <= rule_delay) {
                model_no_later_than_rules += 1;
            } else {
                model_later_than_rules.push(LaterThanRule {
                    recording: recording.clone(),
                    kind: inc.kind.clone(),
                    start: inc.start,
                    model_delay_steps: *model_delay,
                    rule: rule.clone(),
                    rule_delay_steps: rule_delay,
                });
            }
        }
    }
    Ok(AlertingReport {
        recordings: names,
        step_seconds: meta.step_seconds,
        represents_seconds: opts.represents_seconds,
        threshold: meta.threshold,
        fast_alert: fast.map(|f| FastAlertUsed {
            features: f.features.clone(),
            threshold: f.threshold,
            for_steps: f.for_steps,
        }),
        model,
        model_main_alert_only,
        rules,
        any_rule,
        caught_by_a_rule,
        model_no_later_than_rules,
        model_format: meta.format_version,
        incidents_in_warm_up,
        model_false_alarms,
        model_later_than_rules,
    })
}

impl AlertingReport {
    /// The side-by-side table for a terminal.
    pub fn table(&self) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        for alert in std::iter::once(&self.model).chain(&self.rules) {
            for k in &alert.kinds {
                if !kinds.contains(&k.kind.as_str()) {
                    kinds.push(&k.kind);
                }
            }
        }
        let mut out = format!(
            "{} recording(s); a step of {}s stands for {}s; model threshold {:.4}\n\
             per kind: caught/incidents (median steps from the start to the first alert)\n\n",
            self.recordings.len(),
            self.step_seconds,
            self.represents_seconds,
            self.threshold
        );
        if let Some(fast) = &self.fast_alert {
            out.push_str(&format!(
                "model: the main alert (the score above {:.4} for {} steps) or the fast one ({} above {:.4} for {} steps)\n\n",
                self.threshold,
                self.model.for_steps,
                fast.features.join(" or "),
                fast.threshold,
                fast.for_steps
            ));
        }
        if self.model_format >= 2 {
            out.push_str(&format!(
                "model format 2: each recording is one instance, each window scored against the \
                 baseline of the history before it; {} incident(s) began while that baseline \
                 warmed up and are not counted\n\n",
                self.incidents_in_warm_up
            ));
        }
        out.push_str(&format!("{:34} {:>5}", "alert", "for"));
        for k in &kinds {
            out.push_str(&format!(" {k:>16}"));
        }
        out.push_str(
            "   false alarms / 1000 normal steps; normal steps in alert; the worst recording's\n",
        );
        for alert in std::iter::once(&self.model)
            .chain(&self.model_main_alert_only)
            .chain(&self.rules)
            .chain(std::iter::once(&self.any_rule))
        {
            out.push_str(&format!("{:34} {:>5}", alert.name, alert.for_steps));
            for k in &kinds {
                let cell = alert.kinds.iter().find(|s| s.kind == *k).map_or_else(
                    || "-".to_string(),
                    |s| {
                        let delay = s
                            .median_delay_steps
                            .map_or_else(String::new, |d| format!(" ({d:.0})"));
                        format!("{}/{}{delay}", s.detected, s.incidents)
                    },
                );
                out.push_str(&format!(" {cell:>16}"));
            }
            out.push_str(&format!(
                "   {:.2} ({} in {} steps); {:.1}%",
                alert.false_alarms_per_1000_normal_steps,
                alert.false_alarms,
                alert.normal_steps,
                100.0 * alert.normal_steps_in_alert_share
            ));
            if let Some(worst) = &alert.worst_recording {
                out.push_str(&format!(
                    "; {:.2} in {}",
                    worst.false_alarms_per_1000_normal_steps, worst.recording
                ));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "\nthe model's first alert came no later than the rules' in {} of the {} incidents a rule caught\n",
            self.model_no_later_than_rules, self.caught_by_a_rule
        ));
        if !self.model_later_than_rules.is_empty() {
            out.push_str("\nwhere a rule came first (recording, kind at step: model, rule):\n");
            for late in &self.model_later_than_rules {
                let model = late
                    .model_delay_steps
                    .map_or_else(|| "missed".to_string(), |d| format!("{d} steps"));
                out.push_str(&format!(
                    "  {}, {} at step {}: model {model}, {} {} steps\n",
                    late.recording, late.kind, late.start, late.rule, late.rule_delay_steps
                ));
            }
        }
        if !self.model_false_alarms.is_empty() {
            out.push_str(
                "\nthe model's false alarms (recording, step: the feature that drove it):\n",
            );
            for fa in &self.model_false_alarms {
                out.push_str(&format!(
                    "  {}, step {}: {} (score {:.2})\n",
                    fa.recording,
                    fa.step,
                    fa.feature.as_deref().unwrap_or("-"),
                    fa.score
                ));
            }
        }
        out
    }
}
