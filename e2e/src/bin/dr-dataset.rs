//! `dr-dataset`: records a labelled dataset from a real etcd. See `dr_e2e::dataset`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = dr_e2e::dataset::Args::parse();
    match dr_e2e::dataset::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dr-dataset: {err:#}");
            ExitCode::FAILURE
        }
    }
}
