//! Wiring only: flags, logging, one run, the summary on stdout.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use dr_loadgen::config::{Config, parse_args};
use dr_loadgen::stop::StopReason;

/// Exit code for a configuration the loadgen refuses to run with (as clap uses).
const USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args_os()).and_then(Config::from_args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("dr-loadgen: {message}");
            return ExitCode::from(USAGE);
        }
    };
    // Warnings only by default: the progress line and the summary are the output.
    let _telemetry = match dr_common::telemetry::init(config.log_format, "warn", "dr-loadgen", None)
    {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("dr-loadgen: {message}");
            return ExitCode::from(USAGE);
        }
    };
    let json = config.json;
    let summary = match dr_loadgen::run::run(config, dr_common::shutdown::signal()).await {
        Ok(summary) => summary,
        Err(message) => {
            eprintln!("dr-loadgen: {message}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match summary.to_json() {
            Ok(line) => println!("{line}"),
            Err(message) => {
                eprintln!("dr-loadgen: {message}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{summary}");
    }
    // NOSPACE is bigkey's expected end; only a refused configuration is a failure.
    if summary.stop_reason == StopReason::FatalError {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
