//! dr-detector: its issue fills this in; until then it only answers --help and --version.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "etcd-dr detector (not built yet)")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("dr-detector: not built yet; see the project's issues");
    std::process::exit(2);
}
