//! The static rules an operator would otherwise rely on (the chart's safety net and the
//! etcd mixin's), evaluated on a recording's columns so `eval` can put the model beside
//! them. Each rule reads the built-in features it needs; a recording without them skips it.
//!
//! Time in a rule is the time a step *stands for* (`represents_seconds`: a real 60 s step
//! stands for 60 s; the compressed recordings' 1 s steps stand for a minute), so `for: 10m`
//! is ten steps of a compressed recording and twenty of a real cluster scraped every 30 s.
//! Per-second thresholds are per represented second. The rules' own rate windows differ
//! from the features' (four steps); where a rule sums over a longer window, the four-step
//! `increase`s are added up, which is what Prometheus would see to within one window.

use crate::training::dataset::Dataset;

/// A rule as written in the chart or the mixin: a condition per step, held for `for`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    /// Which incident kind it is meant to catch (for the reader; every kind is scored).
    pub meant_for: &'static str,
    /// `for:`, in seconds of represented time.
    pub for_seconds: f64,
    condition: Condition,
}

#[derive(Clone, Copy, Debug)]
enum Condition {
    /// `column >= value`, or `> value` when `strict`.
    Above {
        column: &'static str,
        value: f64,
        strict: bool,
    },
    /// The column's four-step `increase`s summed over `window_seconds` `>= value`.
    CountOver {
        column: &'static str,
        window_seconds: f64,
        value: f64,
    },
    /// The column's per-second rate, averaged over `window_seconds` and read per
    /// represented second, `> value`.
    RateOver {
        column: &'static str,
        window_seconds: f64,
        value: f64,
    },
}

/// The chart's safety net (charts/dr-stack/templates/prometheusrule.yaml, default values)
/// and the mixin's leader-change rule, which the chart leaves to kube-prometheus-stack.
pub const RULES: &[Rule] = &[
    // The chart's EtcdNoSpace also fires near the quota while etcd answers writes with
    // ResourceExhausted; the recordings have no such column, so only "at the quota" is
    // judged here, which misses the alarms etcd raised at 96-99% of the quota.
    Rule {
        name: "EtcdNoSpace",
        meant_for: "space",
        for_seconds: 60.0,
        condition: Condition::Above {
            column: "db_size_over_quota",
            value: 1.0,
            strict: false,
        },
    },
    Rule {
        name: "EtcdDatabaseQuotaLowSpace",
        meant_for: "space",
        for_seconds: 600.0,
        condition: Condition::Above {
            column: "db_size_over_quota",
            value: 0.8,
            strict: true,
        },
    },
    Rule {
        name: "EtcdHighFsyncDurations",
        meant_for: "disk",
        for_seconds: 600.0,
        condition: Condition::Above {
            column: "wal_fsync_p99",
            value: 0.5,
            strict: true,
        },
    },
    Rule {
        name: "EtcdHighCommitDurations",
        meant_for: "disk",
        for_seconds: 600.0,
        condition: Condition::Above {
            column: "backend_commit_p99",
            value: 0.25,
            strict: true,
        },
    },
    Rule {
        name: "etcdHighNumberOfLeaderChanges",
        meant_for: "leader",
        for_seconds: 300.0,
        condition: Condition::CountOver {
            column: "leader_changes",
            window_seconds: 900.0,
            value: 4.0,
        },
    },
    Rule {
        name: "EtcdHighNumberOfFailedProposals",
        meant_for: "leader",
        for_seconds: 900.0,
        condition: Condition::RateOver {
            column: "failed_proposals",
            window_seconds: 900.0,
            value: 5.0,
        },
    },
];

/// Steps a represented duration spans (at least one).
pub fn steps(seconds: f64, represents_seconds: f64) -> usize {
    ((seconds / represents_seconds).ceil() as usize).max(1)
}

impl Rule {
    /// The column the rule reads.
    pub fn column(&self) -> &'static str {
        match self.condition {
            Condition::Above { column, .. }
            | Condition::CountOver { column, .. }
            | Condition::RateOver { column, .. } => column,
        }
    }

    pub fn for_steps(&self, represents_seconds: f64) -> usize {
        steps(self.for_seconds, represents_seconds)
    }

    /// The condition at every row, or `None` when the data lacks the column. A row
    /// without enough history for the rule's window is unknown.
    pub fn evaluate(
        &self,
        data: &Dataset,
        step_seconds: f64,
        represents_seconds: f64,
    ) -> Option<Vec<Option<bool>>> {
        let col = data.feature_names.iter().position(|n| n == self.column())?;
        let value = |i: usize| data.rows[i][col];
        let n = data.len();
        Some(match self.condition {
            Condition::Above {
                value: v, strict, ..
            } => (0..n)
                .map(|i| Some(if strict { value(i) > v } else { value(i) >= v }))
                .collect(),
            Condition::CountOver {
                window_seconds,
                value: v,
                ..
            } => {
                // The column is an increase over four steps: add every fourth one.
                let span = steps(window_seconds, represents_seconds);
                let samples = span.div_ceil(4);
                (0..n)
                    .map(|i| {
                        (i >= (samples - 1) * 4)
                            .then(|| (0..samples).map(|k| value(i - 4 * k)).sum::<f64>() >= v)
                    })
                    .collect()
            }
            Condition::RateOver {
                window_seconds,
                value: v,
                ..
            } => {
                let span = steps(window_seconds, represents_seconds);
                let per_represented = step_seconds / represents_seconds;
                (0..n)
                    .map(|i| {
                        (i + 1 >= span).then(|| {
                            let mean = (i + 1 - span..=i).map(value).sum::<f64>() / span as f64;
                            mean * per_represented > v
                        })
                    })
                    .collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(columns: &[&str], rows: &[Vec<f64>]) -> Dataset {
        Dataset {
            feature_names: columns.iter().map(|c| c.to_string()).collect(),
            timestamps: (0..rows.len()).map(|i| i as f64).collect(),
            rows: rows.to_vec(),
            labels: None,
            mask: None,
        }
    }

    fn rule(name: &str) -> Rule {
        *RULES.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn durations_are_in_represented_time() {
        // Compressed: a 1 s step stands for a minute.
        assert_eq!(rule("EtcdHighFsyncDurations").for_steps(60.0), 10);
        // A real cluster scraped every 30 s.
        assert_eq!(rule("EtcdHighFsyncDurations").for_steps(30.0), 20);
        assert_eq!(steps(1.0, 60.0), 1);
    }

    #[test]
    fn thresholds_and_missing_columns() {
        let d = data(&["db_size_over_quota"], &[vec![0.5], vec![0.81], vec![1.0]]);
        let low = rule("EtcdDatabaseQuotaLowSpace")
            .evaluate(&d, 1.0, 60.0)
            .unwrap();
        assert_eq!(low, [Some(false), Some(true), Some(true)]);
        let full = rule("EtcdNoSpace").evaluate(&d, 1.0, 60.0).unwrap();
        assert_eq!(full, [Some(false), Some(false), Some(true)]);
        assert!(
            rule("EtcdHighFsyncDurations")
                .evaluate(&d, 1.0, 60.0)
                .is_none()
        );
    }

    #[test]
    fn leader_changes_are_summed_over_the_window_from_four_step_increases() {
        // 15 represented minutes at one minute a step: 15 steps, four samples 4 apart.
        let mut rows = vec![vec![0.0]; 20];
        for i in [4, 8, 12, 16] {
            rows[i][0] = 1.0;
        }
        let d = data(&["leader_changes"], &rows);
        let c = rule("etcdHighNumberOfLeaderChanges")
            .evaluate(&d, 1.0, 60.0)
            .unwrap();
        assert_eq!(c[11], None, "not enough history for the window");
        assert_eq!(c[16], Some(true), "4 + 4 + 4 + 4: four changes seen");
        assert_eq!(c[15], Some(false), "samples at 15, 11, 7, 3 miss them");
    }

    #[test]
    fn rates_are_per_represented_second() {
        // 10 failed proposals per real second, steps of 1 s standing for 60 s: 1/6 per
        // represented second, far below the mixin's 5.
        let d = data(&["failed_proposals"], &vec![vec![10.0]; 20]);
        let r = rule("EtcdHighNumberOfFailedProposals");
        let c = r.evaluate(&d, 1.0, 60.0).unwrap();
        assert_eq!(c[14], Some(false));
        // The same on a real 1 s step: 10 per second is above 5.
        let c = r.evaluate(&d, 1.0, 1.0).unwrap();
        assert_eq!(c[19], None, "900 steps of history needed");
        let d = data(&["failed_proposals"], &vec![vec![10.0]; 901]);
        let c = r.evaluate(&d, 1.0, 1.0).unwrap();
        assert_eq!(c[900], Some(true));
    }
}
