//! Is an instance's data fresh, and does it arrive at the model's step? Two ways a window
//! can look fine and mean nothing, or never fill:
//!
//! - The Pushgateway serves a dead collector's last push forever, so its values read as a
//!   healthy, idle etcd. `push_time_seconds{job,instance}` (set by the Pushgateway on each
//!   push) tells how old they are.
//! - Series sampled coarser than the model's step (a collector pushing every 30 s, or
//!   Prometheus scraping every 30 s, under a 1 s model) leave the features' rate windows
//!   of a few steps empty or flat. The spacing of new values in `push_time_seconds` (or of
//!   `up` samples, when Prometheus scrapes etcd directly) shows it.
//!
//! The judges read `(timestamp, value)` points; `serving::pull` asks Prometheus for them.

use std::time::Duration;

/// New data arriving this many steps apart, or more, is coarser than the step; a push
/// loop's jitter stays well below.
const COARSE_FACTOR: f64 = 1.5;

/// `--max-push-age` by default: three steps, at least 10 s. Three missed pushes mean the
/// collector is not just late; the 10 s floor rides out a collector restart or a slow
/// scrape of the Pushgateway at 1-2 s steps.
pub fn default_max_push_age(step_seconds: f64) -> Duration {
    Duration::from_secs_f64((3.0 * step_seconds).max(10.0))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The median time between samples that bring a new value (for `push_time_seconds`: how
/// often Prometheus sees a new push). `None` with fewer than two new values.
pub fn new_value_spacing(points: &[(f64, f64)]) -> Option<f64> {
    let mut changes = Vec::new();
    let mut last: Option<f64> = None;
    for &(t, v) in points {
        if last != Some(v) {
            changes.push(t);
        }
        last = Some(v);
    }
    median(changes.windows(2).map(|p| p[1] - p[0]).collect())
}

/// The median time between samples (for `up`: the scrape interval).
pub fn sample_spacing(points: &[(f64, f64)]) -> Option<f64> {
    median(points.windows(2).map(|p| p[1].0 - p[0].0).collect())
}

/// Seconds as an operator writes them: `30s`, `1.5s`.
fn seconds(s: f64) -> String {
    if (s - s.round()).abs() < 0.05 {
        format!("{}s", s.round())
    } else {
        format!("{s:.1}s")
    }
}

/// What is wrong with an instance's data, if anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Fresh,
    /// New data arrives coarser than the model's step; the message says both and the fix.
    StepMismatch(String),
    /// The collector stopped pushing; the message says since when.
    Stale(String),
}

/// The 422 message for data that arrives every `spacing` seconds under a model at `step`.
pub fn mismatch_message(instance: &str, spacing: f64, step: f64) -> String {
    format!(
        "instance {instance}: its series get a new sample only every {} (median), but the model's step is {}, so the features' rate windows of a few steps are empty or flat. \
         Collect at the model's step (dr-collector --interval {}, and Prometheus scraping the Pushgateway, or etcd, every {}), \
         or export and train a model at your step (dr-detector export --step {} ..., then dr-detector train) and serve that",
        seconds(spacing),
        seconds(step),
        seconds(step),
        seconds(step),
        seconds(spacing.round().max(1.0)),
    )
}

/// Judges an instance by the points of its `push_time_seconds` series (one per job that
/// pushes it; the freshest counts) as of `end`. No series: nothing to judge (no
/// Pushgateway), `Fresh`. `max_push_age` of zero turns the staleness check off; the step
/// check stays.
pub fn judge_pushes(
    instance: &str,
    series: &[&[(f64, f64)]],
    step: f64,
    end: f64,
    max_push_age: Duration,
) -> Verdict {
    let freshest = series
        .iter()
        .filter_map(|s| {
            let last = s.iter().rev().find(|(_, v)| v.is_finite())?;
            Some((last.1, *s))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let Some((last_push, s)) = freshest else {
        return Verdict::Fresh;
    };
    let coarse = new_value_spacing(s).filter(|&sp| sp > COARSE_FACTOR * step);
    let age = (end - last_push).max(0.0);
    let limit = max_push_age.as_secs_f64();
    // A collector pushing coarser than the step is up to its spacing late every time:
    // that is the mismatch below, not an outage, until it misses two pushes.
    let stale_after = limit.max(coarse.map_or(0.0, |sp| 2.0 * sp));
    if limit > 0.0 && age > stale_after {
        return Verdict::Stale(format!(
            "instance {instance}: its last push reached the Pushgateway {} ago (push_time_seconds {last_push:.0}), more than --max-push-age {}; \
             the Pushgateway keeps serving a dead collector's last values, so they say nothing about etcd now. \
             Is dr-collector running and reaching the Pushgateway?",
            seconds(age),
            seconds(stale_after),
        ));
    }
    match coarse {
        Some(spacing) => Verdict::StepMismatch(mismatch_message(instance, spacing, step)),
        None => Verdict::Fresh,
    }
}

/// Judges an instance scraped directly (no Pushgateway) by the points of its `up` series:
/// the step mismatch message when they are coarser than the step.
pub fn judge_scrapes(instance: &str, up: &[&[(f64, f64)]], step: f64) -> Option<String> {
    up.iter()
        .filter_map(|s| sample_spacing(s))
        .min_by(f64::total_cmp)
        .filter(|&sp| sp > COARSE_FACTOR * step)
        .map(|spacing| mismatch_message(instance, spacing, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `push_time_seconds` as Prometheus samples it: scraped every `scrape` seconds, each
    /// sample holding the time of the last push (pushes every `push` seconds, the last one
    /// at `last_push`).
    fn pushes(scrape: f64, push: f64, last_push: f64, until: f64) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        let mut t = until - 300.0;
        while t <= until {
            let pushed = ((t.min(last_push)) / push).floor() * push;
            points.push((t, pushed));
            t += scrape;
        }
        points
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn pushes_at_the_step_are_fresh() {
        let s = pushes(1.0, 1.0, 1000.0, 1000.0);
        assert_eq!(new_value_spacing(&s), Some(1.0));
        assert_eq!(
            judge_pushes("etcd-1", &[&s[..]], 1.0, 1000.0, LIMIT),
            Verdict::Fresh
        );
        // No push_time_seconds at all: Prometheus scrapes etcd directly; nothing to judge.
        assert_eq!(
            judge_pushes("etcd-1", &[], 1.0, 1000.0, LIMIT),
            Verdict::Fresh
        );
    }

    #[test]
    fn coarse_pushes_or_scrapes_are_a_step_mismatch_naming_both_and_the_fix() {
        // The collector pushes every 30 s; Prometheus scrapes the Pushgateway every second.
        let slow_push = pushes(1.0, 30.0, 990.0, 1000.0);
        // The collector pushes every second; Prometheus scrapes every 30 s.
        let slow_scrape = pushes(30.0, 1.0, 1000.0, 1000.0);
        for s in [slow_push, slow_scrape] {
            let Verdict::StepMismatch(message) =
                judge_pushes("etcd-1", &[&s[..]], 1.0, 1000.0, LIMIT)
            else {
                panic!("not a mismatch");
            };
            for needle in [
                "etcd-1",
                "every 30s",
                "step is 1s",
                "--interval 1s",
                "export --step 30s",
                "train",
            ] {
                assert!(message.contains(needle), "{needle}: {message}");
            }
        }
    }

    #[test]
    fn a_collector_that_stopped_pushing_is_stale() {
        // Pushed every second until t=940, scraped since: 60 s old at t=1000.
        let s = pushes(1.0, 1.0, 940.0, 1000.0);
        let Verdict::Stale(message) = judge_pushes("etcd-1", &[&s[..]], 1.0, 1000.0, LIMIT) else {
            panic!("not stale");
        };
        assert!(
            message.contains("60s ago") && message.contains("dr-collector"),
            "{message}"
        );
        // The check can be turned off.
        assert_eq!(
            judge_pushes("etcd-1", &[&s[..]], 1.0, 1000.0, Duration::ZERO),
            Verdict::Fresh
        );
        // A second job still pushing the same instance keeps it fresh.
        let live = pushes(1.0, 1.0, 1000.0, 1000.0);
        assert_eq!(
            judge_pushes("etcd-1", &[&s[..], &live[..]], 1.0, 1000.0, LIMIT),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_coarse_collector_is_late_by_its_interval_without_being_dead_until_it_misses_two() {
        // 30 s pushes, the last one (at 960) 40 s ago: late, but that is its cadence.
        let late = pushes(1.0, 30.0, 975.0, 1000.0);
        assert!(matches!(
            judge_pushes("etcd-1", &[&late[..]], 1.0, 1000.0, LIMIT),
            Verdict::StepMismatch(_)
        ));
        // The last one (at 900) 100 s ago: it has missed two, it has stopped.
        let dead = pushes(1.0, 30.0, 910.0, 1000.0);
        assert!(matches!(
            judge_pushes("etcd-1", &[&dead[..]], 1.0, 1000.0, LIMIT),
            Verdict::Stale(_)
        ));
    }

    #[test]
    fn direct_scrapes_are_judged_by_up() {
        let every = |spacing: f64| -> Vec<(f64, f64)> {
            (0..20)
                .map(|k| (1000.0 + k as f64 * spacing, 1.0))
                .collect()
        };
        assert_eq!(judge_scrapes("etcd-1", &[&every(1.0)[..]], 1.0), None);
        let message = judge_scrapes("etcd-1", &[&every(15.0)[..]], 1.0).unwrap();
        assert!(message.contains("every 15s"), "{message}");
        assert_eq!(default_max_push_age(1.0), Duration::from_secs(10));
        assert_eq!(default_max_push_age(30.0), Duration::from_secs(90));
    }
}
