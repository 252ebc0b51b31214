//! Writes the synthetic etcd dataset the default model is trained on:
//! `cargo run -p dr-detector --example synth_dataset -- OUT.csv [ROWS] [STEP_SECONDS] [SEED]`.

use anyhow::Context;
use dr_detector::training::synth::{SynthOptions, generate};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .context("usage: synth_dataset OUT.csv [ROWS] [STEP_SECONDS] [SEED]")?;
    let rows: usize = args
        .next()
        .map_or(Ok(20_000), |a| a.parse())
        .context("ROWS")?;
    let step_seconds: f64 = args
        .next()
        .map_or(Ok(2.0), |a| a.parse())
        .context("STEP_SECONDS")?;
    let seed: u64 = args.next().map_or(Ok(1), |a| a.parse()).context("SEED")?;
    let csv = generate(&SynthOptions {
        rows,
        step_seconds,
        seed,
        // About one incident per 500 steps: enough of each kind to validate on.
        incidents: rows / 500,
        load_scale: 1.0,
    });
    std::fs::write(&out, csv).with_context(|| format!("writing {out}"))?;
    Ok(())
}
