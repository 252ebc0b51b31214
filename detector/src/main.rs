//! dr-detector: train, evaluate and serve the etcd anomaly model. See `--help`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dr_detector::cli::Cli::parse();
    match dr_detector::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dr-detector: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
