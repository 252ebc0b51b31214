//! What an alert rule built on a per-step signal would have done on a labelled recording:
//! which incidents it caught, how many steps after their start, and how often it fired on
//! normal operation. The same judgement serves the model's score (above its threshold) and
//! the etcd mixin's rules ([`super::rules`]), so the two are compared on equal terms.
//!
//! An incident is a run of labelled steps (the recorder labels an incident's steps plus
//! the rate windows' look-back). An alert *fires* at a step once its condition has held for
//! `for_steps` consecutive steps, as Prometheus' `for:` does; an unknown step (no score)
//! breaks the run. An alert *onset* on a normal step is a false alarm, unless it follows an
//! incident's end by at most `for_steps` steps: that alert is the incident's, late.

use serde::Serialize;

/// One incident of a recording, as step indices into its rows (inclusive).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub kind: String,
    pub start: usize,
    pub end: usize,
}

/// The runs of label 1, named in order by `kinds` when it lists exactly one kind per run
/// (the recorder's `<name>.incidents.csv`), and `incident` otherwise.
pub fn incidents(labels: &[u8], kinds: Option<&[String]>) -> Vec<Incident> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &label) in labels.iter().enumerate() {
        match (label == 1, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, labels.len() - 1));
    }
    let named = kinds.filter(|k| k.len() == runs.len());
    runs.into_iter()
        .enumerate()
        .map(|(i, (start, end))| Incident {
            kind: named.map_or_else(|| "incident".to_string(), |k| k[i].clone()),
            start,
            end,
        })
        .collect()
}

/// Whether the alert fires at each step: `condition` held (`Some(true)`) for the last
/// `for_steps` steps in a row (at least one).
pub fn firing(condition: &[Option<bool>], for_steps: usize) -> Vec<bool> {
    let need = for_steps.max(1);
    let mut run = 0usize;
    condition
        .iter()
        .map(|c| {
            run = if *c == Some(true) { run + 1 } else { 0 };
            run >= need
        })
        .collect()
}

/// What one alert did on one recording.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judged {
    /// Per incident (in order): steps from its start to the first firing step, or `None`.
    pub delays: Vec<Option<usize>>,
    /// Onsets on normal steps, not a late alert of the incident just before.
    pub false_alarms: usize,
    /// The steps where those onsets were, in order.
    pub false_alarm_steps: Vec<usize>,
    /// Steps with label 0 where the condition was known.
    pub normal_steps: usize,
    /// Of those, the ones where the alert was firing (not a late alert of an incident):
    /// an alert that never ends is one onset but many steps.
    pub normal_steps_in_alert: usize,
}

/// The fast alert of a model, judged: its score at each step, threshold and hold.
pub type FastSignal<'a> = (&'a [Option<f64>], f64, usize);

/// Whether a model's alerts fire at each step: the main one (`score > threshold` held
/// `for_steps`) or, when there is one, the fast one (its own score above its threshold,
/// held its steps).
pub fn model_firing(
    scores: &[Option<f64>],
    threshold: f64,
    for_steps: usize,
    fast: Option<FastSignal>,
) -> Vec<bool> {
    let above = |scores: &[Option<f64>], t: f64| -> Vec<Option<bool>> {
        scores.iter().map(|s| s.map(|s| s > t)).collect()
    };
    let mut fires = firing(&above(scores, threshold), for_steps);
    if let Some((fast_scores, fast_threshold, fast_for)) = fast {
        let fast_fires = firing(&above(fast_scores, fast_threshold), fast_for);
        for (f, fast) in fires.iter_mut().zip(fast_fires) {
            *f |= fast;
        }
    }
    fires
}

pub fn judge(
    condition: &[Option<bool>],
    for_steps: usize,
    labels: &[u8],
    incidents: &[Incident],
) -> Judged {
    let known: Vec<bool> = condition.iter().map(Option::is_some).collect();
    judge_fired(
        &firing(condition, for_steps),
        &known,
        for_steps,
        labels,
        incidents,
    )
}

/// [`judge`] on steps already known to fire; `known` says where the signal had a value,
/// and an alert's onset up to `grace` steps after an incident's end is that incident's.
pub fn judge_fired(
    fires: &[bool],
    known: &[bool],
    grace: usize,
    labels: &[u8],
    incidents: &[Incident],
) -> Judged {
    let grace = grace.max(1);
    let delays = incidents
        .iter()
        .map(|inc| {
            // Late by up to `grace` steps past the labelled end still counts as caught.
            let last = (inc.end + grace).min(fires.len().saturating_sub(1));
            (inc.start..=last)
                .find(|&i| fires[i])
                .map(|i| i - inc.start)
        })
        .collect();
    let after_incident = |i: usize| {
        incidents
            .iter()
            .any(|inc| i > inc.end && i <= inc.end + grace)
    };
    let false_alarm_steps: Vec<usize> = (0..fires.len())
        .filter(|&i| {
            let onset = fires[i] && (i == 0 || !fires[i - 1]);
            onset && labels[i] == 0 && !after_incident(i)
        })
        .collect();
    let normal = |i: usize| known[i] && labels[i] == 0;
    let normal_steps = (0..fires.len()).filter(|&i| normal(i)).count();
    let normal_steps_in_alert = (0..fires.len())
        .filter(|&i| normal(i) && fires[i] && !after_incident(i))
        .count();
    Judged {
        delays,
        false_alarms: false_alarm_steps.len(),
        false_alarm_steps,
        normal_steps,
        normal_steps_in_alert,
    }
}

/// One incident kind's figures for one alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KindStats {
    pub kind: String,
    pub incidents: usize,
    pub detected: usize,
    pub recall: f64,
    /// Steps from the incident's start to the first alert, over the caught ones.
    pub median_delay_steps: Option<f64>,
    pub max_delay_steps: Option<usize>,
}

/// One alert's figures over every recording evaluated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertStats {
    pub name: String,
    /// How long the condition must hold, in steps.
    pub for_steps: usize,
    pub kinds: Vec<KindStats>,
    pub false_alarms: usize,
    pub normal_steps: usize,
    pub false_alarms_per_1000_normal_steps: f64,
    /// The share of normal steps spent alerting: a stuck alert is one false alarm, but
    /// it catches every incident that starts under it.
    pub normal_steps_in_alert_share: f64,
    /// The recording with the most false alarms per 1,000 of its normal steps (`None`
    /// without false alarms): a rate over all of them can hide one that alarms often.
    pub worst_recording: Option<RecordingAlarms>,
    /// Per incident, in the order of [`AlertStats`]' recordings: the delay or `None`.
    #[serde(skip)]
    pub delays: Vec<Option<usize>>,
}

/// One recording's false alarms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordingAlarms {
    pub recording: String,
    pub false_alarms: usize,
    pub normal_steps: usize,
    pub false_alarms_per_1000_normal_steps: f64,
}

fn per_1000(false_alarms: usize, normal_steps: usize) -> f64 {
    if normal_steps == 0 {
        0.0
    } else {
        1000.0 * false_alarms as f64 / normal_steps as f64
    }
}

/// Adds up per-recording judgements of one alert; `incidents` lists each recording's, and
/// `recordings` names them.
pub fn summarise(
    name: &str,
    for_steps: usize,
    judged: &[Judged],
    incidents: &[Vec<Incident>],
    recordings: &[String],
) -> AlertStats {
    let mut kinds: Vec<String> = Vec::new();
    let mut delays = Vec::new();
    let mut by_kind: Vec<(String, Option<usize>)> = Vec::new();
    for (j, incs) in judged.iter().zip(incidents) {
        for (delay, inc) in j.delays.iter().zip(incs) {
            if !kinds.contains(&inc.kind) {
                kinds.push(inc.kind.clone());
            }
            by_kind.push((inc.kind.clone(), *delay));
            delays.push(*delay);
        }
    }
    let kinds = kinds
        .into_iter()
        .map(|kind| {
            let all: Vec<Option<usize>> = by_kind
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, d)| *d)
                .collect();
            let mut caught: Vec<usize> = all.iter().flatten().copied().collect();
            caught.sort_unstable();
            KindStats {
                incidents: all.len(),
                detected: caught.len(),
                recall: caught.len() as f64 / all.len().max(1) as f64,
                median_delay_steps: median(&caught),
                max_delay_steps: caught.last().copied(),
                kind,
            }
        })
        .collect();
    let false_alarms = judged.iter().map(|j| j.false_alarms).sum();
    let normal_steps = judged.iter().map(|j| j.normal_steps).sum();
    let in_alert: usize = judged.iter().map(|j| j.normal_steps_in_alert).sum();
    let worst_recording = judged
        .iter()
        .zip(recordings)
        .filter(|(j, _)| j.false_alarms > 0)
        .map(|(j, recording)| RecordingAlarms {
            recording: recording.clone(),
            false_alarms: j.false_alarms,
            normal_steps: j.normal_steps,
            false_alarms_per_1000_normal_steps: per_1000(j.false_alarms, j.normal_steps),
        })
        .max_by(|a, b| {
            a.false_alarms_per_1000_normal_steps
                .total_cmp(&b.false_alarms_per_1000_normal_steps)
        });
    AlertStats {
        name: name.to_string(),
        for_steps,
        kinds,
        false_alarms,
        normal_steps,
        false_alarms_per_1000_normal_steps: per_1000(false_alarms, normal_steps),
        normal_steps_in_alert_share: in_alert as f64 / normal_steps.max(1) as f64,
        worst_recording,
        delays,
    }
}

fn median(sorted: &[usize]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2] as f64),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_are_label_runs_named_in_order() {
        let labels = [0, 1, 1, 0, 0, 1, 0, 1];
        let kinds = vec!["space".to_string(), "disk".into(), "leader".into()];
        let found = incidents(&labels, Some(&kinds));
        assert_eq!(
            found,
            [
                Incident {
                    kind: "space".into(),
                    start: 1,
                    end: 2
                },
                Incident {
                    kind: "disk".into(),
                    start: 5,
                    end: 5
                },
                Incident {
                    kind: "leader".into(),
                    start: 7,
                    end: 7
                },
            ]
        );
        // A list that does not match the runs names none of them.
        let unnamed = incidents(&labels, Some(&kinds[..2]));
        assert!(unnamed.iter().all(|i| i.kind == "incident"));
    }

    #[test]
    fn an_alert_fires_after_its_condition_held_for_steps_and_unknown_breaks_it() {
        let c = [
            Some(true),
            Some(true),
            None,
            Some(true),
            Some(true),
            Some(true),
            Some(false),
        ];
        assert_eq!(
            firing(&c, 2),
            [false, true, false, false, true, true, false]
        );
        assert_eq!(firing(&c, 0), firing(&c, 1));
    }

    #[test]
    fn a_fast_alert_fires_on_a_short_high_run_the_main_alert_holds_too_long_for() {
        // Steps:            0    1    2    3    4     5    6    7    8    9
        let s = |v: f64| Some(v);
        let scores = [
            s(1.),
            s(3.),
            s(3.),
            s(9.),
            s(9.),
            None,
            s(3.),
            s(3.),
            s(3.),
            s(1.),
        ];
        // The fast alert's own score: here the one feature that drove steps 3 and 4.
        let fast = [
            s(0.),
            s(0.),
            s(0.),
            s(9.),
            s(9.),
            None,
            s(0.),
            s(0.),
            s(0.),
            s(0.),
        ];
        // Main alert: above 2 held 3 steps; the gap at 5 restarts it.
        let main = model_firing(&scores, 2.0, 3, None);
        assert_eq!(
            main,
            [
                false, false, false, true, true, false, false, false, true, false
            ]
        );
        // Fast: above 8 held 2 steps, at step 4; it adds to the main alert, never removes.
        let both = model_firing(&scores, 2.0, 3, Some((&fast, 8.0, 2)));
        assert_eq!(
            both,
            [
                false, false, false, true, true, false, false, false, true, false
            ]
        );
        let main_held_longer = model_firing(&scores, 2.0, 5, None);
        assert!(main_held_longer.iter().all(|f| !f));
        let fast_only = model_firing(&scores, 2.0, 5, Some((&fast, 8.0, 2)));
        assert_eq!(
            fast_only,
            [
                false, false, false, false, true, false, false, false, false, false
            ]
        );
        // The same steps judged: the unknown step is not a normal step.
        let labels = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0];
        let known: Vec<bool> = scores.iter().map(Option::is_some).collect();
        let j = judge_fired(&fast_only, &known, 5, &labels, &incidents(&labels, None));
        assert_eq!(j.delays, [Some(2)]);
        assert_eq!((j.false_alarms, j.normal_steps), (0, 6));
    }

    #[test]
    fn judge_counts_delays_false_alarms_and_a_late_alert_as_the_incidents() {
        // Steps:        0  1  2  3  4  5  6  7  8  9
        let labels = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0];
        let incs = incidents(&labels, None);
        let t = Some(true);
        let f = Some(false);
        // Fires from step 3 (held 2 steps from 2), a false onset at 9.
        let cond = [f, f, t, t, t, t, f, f, t, t];
        let j = judge(&cond, 2, &labels, &incs);
        assert_eq!(j.delays, [Some(1)]);
        assert_eq!(j.false_alarms, 1, "the onset at 9 is normal");
        assert_eq!(j.false_alarm_steps, [9]);
        assert_eq!(j.normal_steps, 7);
        assert_eq!(
            j.normal_steps_in_alert, 1,
            "step 9; 5 is step 3's alert, late"
        );
        // Condition only after the incident, within the grace: caught late, not false.
        let late = [f, f, f, f, f, t, t, f, f, f];
        let j = judge(&late, 2, &labels, &incs);
        assert_eq!(j.delays, [Some(4)]);
        assert_eq!(j.false_alarms, 0);
    }

    #[test]
    fn summary_per_kind_and_per_thousand_normal_steps() {
        let incs = vec![
            vec![
                Incident {
                    kind: "space".into(),
                    start: 0,
                    end: 1,
                },
                Incident {
                    kind: "disk".into(),
                    start: 5,
                    end: 6,
                },
            ],
            vec![Incident {
                kind: "space".into(),
                start: 2,
                end: 3,
            }],
        ];
        let judged = vec![
            Judged {
                delays: vec![Some(2), None],
                false_alarms: 1,
                false_alarm_steps: vec![9],
                normal_steps: 1500,
                normal_steps_in_alert: 150,
            },
            Judged {
                delays: vec![Some(4)],
                false_alarms: 0,
                false_alarm_steps: Vec::new(),
                normal_steps: 500,
                normal_steps_in_alert: 0,
            },
        ];
        let names = ["a.csv".to_string(), "b.csv".to_string()];
        let s = summarise("model", 3, &judged, &incs, &names);
        assert_eq!(s.kinds[0].kind, "space");
        assert_eq!((s.kinds[0].incidents, s.kinds[0].detected), (2, 2));
        assert_eq!(s.kinds[0].median_delay_steps, Some(3.0));
        assert_eq!(s.kinds[0].max_delay_steps, Some(4));
        assert_eq!(s.kinds[1].recall, 0.0);
        assert_eq!(s.false_alarms_per_1000_normal_steps, 0.5);
        let worst = s.worst_recording.as_ref().unwrap();
        assert_eq!(worst.recording, "a.csv");
        assert!((worst.false_alarms_per_1000_normal_steps - 1000.0 / 1500.0).abs() < 1e-12);
        assert_eq!(s.normal_steps_in_alert_share, 0.075);
        assert_eq!(s.delays, [Some(2), None, Some(4)]);
    }
}
