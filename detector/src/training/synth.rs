//! A synthetic but etcd-shaped labelled dataset, for the shipped default model and tests
//! until real recordings exist: daily-ish request load with latency that follows it, a
//! slowly growing and fragmenting db with scheduled defrags (masked), rare benign
//! elections, and four incident kinds (space storm to NOSPACE, slow disk, leader churn,
//! fragmentation build-up), each labelled 1.

use std::fmt::Write as _;

use crate::model::features::{DEFRAG_MASK, default_features};
use crate::model::lstm::SeededRng;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub rows: usize,
    pub step_seconds: f64,
    pub seed: u64,
    pub incidents: usize,
    /// Multiplies the request rate (and the latencies, by its fourth root) without
    /// changing the random draws: the same recording on a busier or quieter cluster.
    pub load_scale: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Incident {
    SpaceStorm,
    SlowDisk,
    LeaderChurn,
    Fragmentation,
}

const KINDS: [Incident; 4] = [
    Incident::SpaceStorm,
    Incident::SlowDisk,
    Incident::LeaderChurn,
    Incident::Fragmentation,
];

struct Rng(SeededRng);

impl Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.next_f64()
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the log away from zero.
        let u = 1.0 - self.0.next_f64();
        let v = self.0.next_f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }
}

/// The dataset as CSV text (`timestamp,<default features>,defrag_inflight,label`).
pub fn generate(opts: &SynthOptions) -> String {
    let mut rng = Rng(SeededRng::new(opts.seed));
    let step = opts.step_seconds;
    // Incidents spread evenly, each starting at a jittered point of its slot.
    let slot = opts.rows / (opts.incidents + 1).max(1);
    let mut schedule: Vec<(usize, usize, Incident)> = (0..opts.incidents)
        .map(|k| {
            let start = ((k + 1) as f64 + rng.uniform(-0.2, 0.2)) * slot as f64;
            let start = start as usize;
            let length = rng.uniform(25.0, 90.0) as usize;
            (start, start + length, KINDS[k % KINDS.len()])
        })
        .collect();
    schedule.sort_by_key(|s| s.0);

    let names: Vec<String> = default_features(step).into_iter().map(|f| f.name).collect();
    let mut out = format!("timestamp,{},{DEFRAG_MASK},label\n", names.join(","));
    let mut size: f64 = 0.25;
    let mut frag: f64 = 0.08;
    let mut defrag_left = 0usize;
    let mut next_defrag = 700 + (rng.uniform(0.0, 300.0) as usize);
    let base_rate = rng.uniform(150.0, 250.0);
    for i in 0..opts.rows {
        let t = i as f64 * step;
        let incident = schedule
            .iter()
            .find(|s| (s.0..s.1).contains(&i))
            .map(|s| s.2);
        let ended = schedule.iter().any(|s| s.1 == i);
        // Load: a slow cycle plus noise.
        let cycle = (2.0 * std::f64::consts::PI * i as f64 / 900.0).sin();
        let mut grpc = base_rate * (1.0 + 0.25 * cycle) * (1.0 + 0.05 * rng.normal());
        let load = grpc / base_rate;
        let mut fsync = 0.004 * load.powf(0.5) * (0.22 * rng.normal()).exp();
        let mut commit = 0.012 * load.powf(0.5) * (0.22 * rng.normal()).exp();
        let mut growth = (3e-6 * load + 1.5e-6 * rng.normal()).max(-2e-6);
        let mut leader = if rng.chance(0.0007) { 1.0 } else { 0.0 };
        let mut failed = 0.0;
        let mut slow = if rng.chance(0.002) {
            rng.uniform(0.05, 0.3)
        } else {
            0.0
        };
        let mut frag_drift = 2e-5 + 1e-5 * rng.normal();
        // The share of requests that write: steady whatever the load.
        let mut writes = (0.35 + 0.03 * rng.normal()).clamp(0.0, 1.0);

        match incident {
            Some(Incident::SpaceStorm) => {
                growth = rng.uniform(4e-4, 9e-4);
                grpc *= rng.uniform(1.6, 2.2);
                writes = rng.uniform(0.55, 0.7);
                commit *= rng.uniform(2.0, 4.0);
                fsync *= rng.uniform(1.3, 2.0);
                if size >= 0.97 {
                    failed = rng.uniform(5.0, 25.0);
                    growth = 0.0;
                }
            }
            Some(Incident::SlowDisk) => {
                fsync *= rng.uniform(15.0, 60.0);
                commit *= rng.uniform(8.0, 30.0);
                slow = rng.uniform(1.0, 8.0);
                if rng.chance(0.05) {
                    leader = 1.0;
                }
                grpc *= 0.7;
            }
            Some(Incident::LeaderChurn) => {
                if rng.chance(0.3) {
                    leader = rng.uniform(1.0, 3.0).round();
                }
                failed = rng.uniform(0.5, 4.0);
                grpc *= rng.uniform(0.4, 0.8);
                commit *= rng.uniform(1.5, 3.0);
            }
            Some(Incident::Fragmentation) => {
                frag_drift = rng.uniform(4e-3, 9e-3);
                growth = rng.uniform(5e-5, 1.5e-4);
                // A churn: a few keys rewritten far faster than the rest is read.
                writes = rng.uniform(0.7, 0.9);
            }
            None => {}
        }
        if ended {
            // The remediation that ends an incident leaves a compacted, defragmented db.
            size = (size * 0.6).max(0.2);
            frag = 0.05;
        }
        // Scheduled maintenance defrag: a few steps of a blocked member, then a smaller db.
        let mut defragging = false;
        if incident.is_none() && i >= next_defrag {
            defrag_left = 3;
            next_defrag = i + 1200 + rng.uniform(0.0, 600.0) as usize;
        }
        if defrag_left > 0 {
            defragging = true;
            defrag_left -= 1;
            fsync *= rng.uniform(5.0, 20.0);
            commit *= rng.uniform(5.0, 20.0);
            grpc *= 0.5;
            if defrag_left == 0 {
                size *= 1.0 - frag;
                frag = 0.03;
            }
        }
        size = (size + growth * step).clamp(0.05, 1.0);
        frag = (frag + frag_drift).clamp(0.01, 0.9);
        let label = u8::from(incident.is_some());
        grpc *= opts.load_scale;
        fsync *= opts.load_scale.powf(0.25);
        commit *= opts.load_scale.powf(0.25);
        // Bytes per request against etcd's largest recommended quota (8 GiB).
        let per_request = growth.max(0.0) * 8.0 * f64::from(1u32 << 30) / grpc.max(30.0);
        let values = [
            size,
            frag,
            growth,
            leader,
            failed,
            fsync,
            commit,
            grpc,
            slow,
            writes,
            per_request,
        ];
        let _ = write!(out, "{}", 1_700_000_000.0 + t);
        for v in values {
            let _ = write!(out, ",{v:.6e}");
        }
        let _ = writeln!(out, ",{},{label}", u8::from(defragging));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::dataset::Dataset;

    #[test]
    fn generates_a_parseable_labelled_dataset_with_masked_defrags() {
        let opts = SynthOptions {
            rows: 4000,
            step_seconds: 2.0,
            seed: 1,
            incidents: 8,
            load_scale: 1.0,
        };
        let csv = generate(&opts);
        assert_eq!(csv, generate(&opts), "same seed, same data");
        let data = Dataset::parse(&csv).unwrap();
        assert_eq!(data.len(), 4000);
        assert_eq!(data.feature_names.len(), default_features(2.0).len());
        let labels = data.labels.as_ref().unwrap();
        let incident_rows = labels.iter().filter(|&&l| l == 1).count();
        assert!((200..1000).contains(&incident_rows), "{incident_rows}");
        assert!(data.mask.as_ref().unwrap().iter().any(|&m| m));
        assert_eq!(data.step_seconds().unwrap(), 2.0);
    }
}
