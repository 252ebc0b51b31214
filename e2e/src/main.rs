//! `dr-drill`: flags, the scenarios, the report, the exit code. `e2e/drill.sh` builds the
//! binaries and calls this.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dr_e2e::cli::Cli::parse();
    match dr_e2e::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("dr-drill: {err:#}");
            ExitCode::from(2)
        }
    }
}
