//! dr-detector: train, evaluate and serve the etcd anomaly model. See `--help`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    dr_detector::cli::run(dr_detector::cli::Cli::parse())
}
