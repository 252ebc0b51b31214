//! Format 2's view of a feature: a step-invariant transform of the raw value, whether it
//! is scored or only context for the LSTM, and the per-instance baseline (robust centre
//! and scale of the transformed values) that turns it into the model's input.
//!
//! Why: format 1 normalised raw values with one mean and std fitted on one recording, so
//! a cluster busier or quieter than that recording read as an anomaly. Format 2 judges
//! each instance against its own history, on scales (log, per step, counts per rate
//! window) where a cluster's size and load shift a feature instead of stretching it.

use serde::{Deserialize, Serialize};

use crate::model::normalisation::Normalisation;

/// How a raw feature value becomes the value the baseline and the model see.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    /// The value as is (ratios, and any feature the catalogue does not know).
    Identity,
    /// `x * factor`: a per-second rate made per step.
    Scale { factor: f64 },
    /// `ln(1 + max(x * factor, 0))`: a rate made a count per rate window, then logged so
    /// one event and a storm of them are both on a readable scale.
    Log1p { factor: f64 },
    /// `log10(max(x, floor))`: latencies and request rates span orders of magnitude; the
    /// floor keeps an idle member's 0 from being minus infinity.
    Log10 { floor: f64 },
    /// `-log10(max(1 - x, floor))`: a share of a limit as decades of the headroom used (0
    /// empty, 1 at 90%, 2 at 99%), so the last percents before the limit weigh what they
    /// cost; the floor caps it at a full one.
    Headroom { floor: f64 },
}

impl Transform {
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Transform::Identity => x,
            Transform::Scale { factor } => x * factor,
            Transform::Log1p { factor } => (x * factor).max(0.0).ln_1p(),
            Transform::Log10 { floor } => x.max(floor).log10(),
            Transform::Headroom { floor } => -(1.0 - x).max(floor).log10(),
        }
    }

    pub fn is_valid(&self) -> bool {
        match *self {
            Transform::Identity => true,
            Transform::Scale { factor } | Transform::Log1p { factor } => {
                factor.is_finite() && factor > 0.0
            }
            Transform::Log10 { floor } => floor.is_finite() && floor > 0.0,
            Transform::Headroom { floor } => floor.is_finite() && floor > 0.0 && floor < 1.0,
        }
    }
}

/// A feature's format-2 treatment: its transform, whether its error is scored, and the
/// smallest baseline scale it may have, in transformed units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureTreatment {
    pub transform: Transform,
    /// False for context: an input to the LSTM whose own error is not scored (the
    /// request rate: ten times the usual load is not an incident by itself).
    pub scored: bool,
    /// Only values above normal are incidents (sizes, latencies, event counts).
    pub upward: bool,
    pub scale_floor: f64,
}

/// `ln 2 / 1.5`: one event in a rate window where there were none (log1p 0 -> log1p 1) is
/// 1.5 scales out and three events 3 scales: a busy cluster's occasional failed proposal
/// (measured at 10x load) stays in the noise, a storm does not.
const ONE_EVENT_SCALE: f64 = std::f64::consts::LN_2 / 1.5;

/// `ln 2 / 2.5`: one election in the rate window is 2.5 to 3 scales out (6-9 squared,
/// as `increase` extrapolates) and two are 4 (16), so an election storm crosses the
/// threshold (about 8) with its first or second election and the alert (held ten steps)
/// fires no later than the mixin's four-elections rule held five. A lone election cannot
/// hold it: it leaves the four-step window and the five-step tail within nine steps.
const ELECTION_SCALE: f64 = std::f64::consts::LN_2 / 2.5;

/// The treatment of a default feature at `step_seconds` (rate windows of four steps, at
/// least 4 s, as in `features::default_features`); unknown names: identity, scored, with a
/// scale floor taken from their own median when the baseline is fitted (`None` here).
pub fn treatment(name: &str, step_seconds: f64) -> (FeatureTreatment, Option<f64>) {
    let range = (4.0 * step_seconds).max(4.0).round();
    let known = |transform, scored, floor: f64| {
        (
            FeatureTreatment {
                transform,
                scored,
                // Every catalogue feature is "more is worse"; the request rate is context.
                upward: scored,
                scale_floor: floor,
            },
            Some(floor),
        )
    };
    match name {
        // The db against its quota as the headroom used, in decades: a busy member on a
        // small quota swings to 80% of it between its defrags (0.7 decades) as its normal,
        // and NOSPACE (99.9%, 3 decades) must still stand out from that. A floor of 0.15
        // of a decade (30% of the quota from empty) on its scale.
        "db_size_over_quota" => known(Transform::Headroom { floor: 1e-3 }, true, 0.15),
        // A fraction that sits still for long stretches (a median absolute deviation near
        // 0) and moves by tens of percent in normal operation (a churn's freed pages wait
        // for the next defrag): a floor of 10% of the db.
        "fragmentation" => known(Transform::Identity, true, 0.1),
        // Per step, so a minute's growth reads the same at any step; 0.1% of the quota.
        // Context, not scored: a share of the quota a step is a small quota's normal
        // regrowth after a defrag (0.4% a step at 8x on 128 MiB) and a big quota's storm
        // (0.3% on 2 GiB) alike. What a storm changes at any quota and load is the bytes
        // per request (`db_growth_per_request`) and, near the end, the headroom.
        "db_growth_rate" => known(
            Transform::Scale {
                factor: step_seconds,
            },
            false,
            1e-3,
        ),
        // `increase` over the range: already a count.
        "leader_changes" => known(Transform::Log1p { factor: 1.0 }, true, ELECTION_SCALE),
        // `rate` per second times the range: a count per rate window.
        "failed_proposals" | "slow_applies" => {
            known(Transform::Log1p { factor: range }, true, ONE_EVENT_SCALE)
        }
        // etcd's latency buckets double (0.3 decades), so a quantile sitting in one bucket
        // has a MAD near 0 and jumps a bucket at a time: one bucket.
        "wal_fsync_p99" | "backend_commit_p99" => {
            known(Transform::Log10 { floor: 1e-4 }, true, 0.3)
        }
        "grpc_request_rate" => known(Transform::Log10 { floor: 0.1 }, false, 0.05),
        // A share of the requests: the same at any step and any load; a quiet member's
        // share moves a few percent with each request, hence 5%.
        "write_fraction" => known(Transform::Identity, true, 0.05),
        // Decades of bytes per request above 8 KiB: a workload's own value size (a few
        // KB) and the no-growth steps between its bursts all sit at the floor, so the
        // baseline is the floor and a storm of 50 KB values is 0.8 decades out; 0.2 of a
        // decade (x1.6) per scale.
        "db_growth_per_request" => known(Transform::Log10 { floor: 8192.0 }, true, 0.2),
        _ => (
            FeatureTreatment {
                transform: Transform::Identity,
                scored: true,
                upward: false,
                scale_floor: 0.0,
            },
            None,
        ),
    }
}

/// The scale a robust fit would give a constant feature without a known floor: 0.1% of its
/// centre, at least 1e-6 (as format 1's std floor for unknown features).
fn default_floor(centre: f64) -> f64 {
    (1e-3 * centre.abs()).max(1e-6)
}

/// The median of `values` (sorted in place); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

/// MAD times this estimates a normal distribution's standard deviation.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// A robust baseline of transformed rows: per feature, the median and `1.4826 * MAD` over
/// the rows where `use_row` is true (unmasked steps), each scale held to at least its floor
/// (`None`: 0.1% of the median). Robust, so an instance's own incidents (a minority of its
/// history) do not move it. Returned as a [`Normalisation`] (centre as `mean`, scale as
/// `std`), which applies `clip((t - centre) / scale)`.
pub fn fit_baseline(
    transformed_rows: &[Vec<f64>],
    use_row: impl Fn(usize) -> bool,
    floors: &[Option<f64>],
) -> Normalisation {
    let f = floors.len();
    let mut mean = Vec::with_capacity(f);
    let mut std = Vec::with_capacity(f);
    let mut std_floor = Vec::with_capacity(f);
    let rows: Vec<&Vec<f64>> = transformed_rows
        .iter()
        .enumerate()
        .filter(|(i, _)| use_row(*i))
        .map(|(_, r)| r)
        .collect();
    let mut column = Vec::with_capacity(rows.len());
    for (j, floor) in floors.iter().enumerate() {
        column.clear();
        column.extend(rows.iter().map(|r| r[j]));
        let centre = median(&mut column);
        let mut deviations: Vec<f64> = column.iter().map(|v| (v - centre).abs()).collect();
        let scale = MAD_TO_SIGMA * median(&mut deviations);
        let floor = floor.unwrap_or_else(|| default_floor(centre));
        mean.push(centre);
        std.push(scale.max(floor));
        std_floor.push(floor);
    }
    Normalisation {
        mean,
        std,
        std_floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_are_step_invariant_where_the_units_say_so() {
        // One election in the window: log1p(1) at any step.
        let (leader, _) = treatment("leader_changes", 1.0);
        assert!((leader.transform.apply(1.0) - 2f64.ln()).abs() < 1e-12);
        // One failed proposal per 4 s window at 1 s, per 240 s window at 60 s: both 1 count.
        let (fast, _) = treatment("failed_proposals", 1.0);
        let (slow, _) = treatment("failed_proposals", 60.0);
        assert!((fast.transform.apply(0.25) - slow.transform.apply(1.0 / 240.0)).abs() < 1e-12);
        // 1e-5 of the quota per second: per step.
        let (growth, _) = treatment("db_growth_rate", 30.0);
        assert!((growth.transform.apply(1e-5) - 3e-4).abs() < 1e-15);
        // Latency in decades, with a floor for an idle member's 0.
        let (fsync, _) = treatment("wal_fsync_p99", 1.0);
        assert!((fsync.transform.apply(0.01) + 2.0).abs() < 1e-12);
        assert_eq!(fsync.transform.apply(0.0), -4.0);
        // Ten times the load is one decade: a shift, which a baseline removes.
        let (grpc, _) = treatment("grpc_request_rate", 1.0);
        assert!(!grpc.scored, "the request rate is context, not an incident");
        let d = grpc.transform.apply(300.0) - grpc.transform.apply(30.0);
        assert!((d - 1.0).abs() < 1e-12);
        // Bytes per request in decades above 8 KiB: a workload's own few KB and no
        // growth at all are both the floor; a storm of 80 KiB values is one decade out,
        // five scales, at any step (bytes per request have no time in them).
        let (per_request, floor) = treatment("db_growth_per_request", 30.0);
        assert!(per_request.scored && per_request.upward);
        assert_eq!(
            per_request.transform.apply(0.0),
            per_request.transform.apply(6e3)
        );
        let storm = per_request.transform.apply(81920.0) - per_request.transform.apply(0.0);
        assert!((storm - 1.0).abs() < 1e-12, "{storm}");
        assert_eq!(floor, Some(0.2));
        assert_eq!(treatment("db_growth_per_request", 1.0).0, per_request);
        // The db against its quota: decades of headroom used, capped at the floor.
        let (quota, _) = treatment("db_size_over_quota", 30.0);
        assert_eq!(quota.transform.apply(0.0), 0.0);
        assert!((quota.transform.apply(0.9) - 1.0).abs() < 1e-12);
        assert!((quota.transform.apply(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(quota.transform.apply(1.2), 3.0, "past the quota: the cap");
        assert!(!Transform::Headroom { floor: 1.0 }.is_valid());
        // A user's feature: identity, scored, floor from its own data.
        let (user, floor) = treatment("cpu_temp", 1.0);
        assert_eq!(user.transform, Transform::Identity);
        assert!(user.scored && floor.is_none());
        assert_eq!(user.transform.apply(-3.5), -3.5);
        assert!(!Transform::Log10 { floor: 0.0 }.is_valid());
    }

    #[test]
    fn transforms_round_trip_through_json() {
        for t in [
            Transform::Identity,
            Transform::Scale { factor: 2.0 },
            Transform::Log1p { factor: 4.0 },
            Transform::Log10 { floor: 1e-4 },
            Transform::Headroom { floor: 1e-3 },
        ] {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<Transform>(&text).unwrap(),
                t,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Transform::Log10 { floor: 0.5 }).unwrap(),
            r#"{"kind":"log10","floor":0.5}"#
        );
    }

    #[test]
    fn baseline_is_median_and_mad_over_unmasked_rows() {
        // Feature 0: 1..=5 plus a wild incident value; feature 1 never moves.
        let rows: Vec<Vec<f64>> = [1.0, 2.0, 3.0, 4.0, 5.0, 1000.0, -50.0]
            .iter()
            .map(|&v| vec![v, 7.0])
            .collect();
        // Row 6 is masked (a defrag): left out entirely.
        let b = fit_baseline(&rows, |i| i != 6, &[Some(0.1), Some(0.25)]);
        // Median of 1,2,3,4,5,1000 is 3.5; |dev| 2.5,1.5,.5,.5,1.5,996.5: MAD 1.5.
        assert_eq!(b.mean, [3.5, 7.0]);
        assert!((b.std[0] - 1.5 * MAD_TO_SIGMA).abs() < 1e-12);
        // The incident did not inflate the scale; the constant feature takes its floor.
        assert_eq!(b.std[1], 0.25);
        assert_eq!(b.std_floor, [0.1, 0.25]);
        // A floor above the fitted scale wins; without a floor: 0.1% of the centre.
        let b = fit_baseline(&rows, |i| i != 6, &[Some(10.0), None]);
        assert_eq!(b.std[0], 10.0);
        assert!((b.std[1] - 7e-3).abs() < 1e-15);
        // The masked row would have moved the median if counted.
        let all = fit_baseline(&rows, |_| true, &[Some(0.1), Some(0.25)]);
        assert_eq!(all.mean[0], 3.0);
    }

    #[test]
    fn median_of_even_and_empty() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
