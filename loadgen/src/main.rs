//! Wiring only: flags, logging, one run, the summary on stdout. Starts and ends through
//! `dr_common::process` like the services: 2 for a refused flag or logging setting, 1 when
//! etcd cannot be reached or the run ends on a fatal error, 0 after a run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use dr_common::process;
use dr_loadgen::config::{Config, parse_args};
use dr_loadgen::stop::StopReason;

const NAME: &str = "dr-loadgen";

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args_os()).and_then(Config::from_args) {
        Ok(config) => config,
        Err(message) => return process::refuse(NAME, message),
    };
    // Warnings only by default: the progress line and the summary are the output.
    let _telemetry = match process::telemetry(NAME, "warn", config.log_format, None) {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    let json = config.json;
    let summary = match dr_loadgen::run::run(config, dr_common::shutdown::signal()).await {
        Ok(summary) => summary,
        Err(message) => return process::fail(NAME, message),
    };
    if json {
        match summary.to_json() {
            Ok(line) => println!("{line}"),
            Err(message) => return process::fail(NAME, message),
        }
    } else {
        print!("{summary}");
    }
    // NOSPACE is bigkey's expected end. A fatal error was logged when it stopped the run
    // and the summary says so; the exit code says it failed.
    if summary.stop_reason == StopReason::FatalError {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
