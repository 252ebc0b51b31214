//! The command line: the global flags, the subcommands (each one's flags and body are in
//! [`crate::commands`]) and the dispatch. Every flag also reads `DR_DETECTOR_<FLAG>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dr_common::process;
use dr_common::telemetry::LogFormat;

use crate::commands::{self, NAME};

#[derive(Debug, Parser)]
#[command(
    name = "dr-detector",
    version,
    about = "Scores etcd's health with an LSTM autoencoder over windows of Prometheus metrics"
)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "DR_DETECTOR_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "DR_DETECTOR_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on a labelled CSV (`timestamp,<feature...>,label`) and write MODEL_DIR.
    Train(commands::train::TrainArgs),
    /// Print JSON with AUC, precision, recall and F1 of a model on a labelled CSV.
    Eval(commands::eval::EvalArgs),
    /// Print JSON with the scores of a few windows of a CSV (for cross-checks).
    Score(commands::score::ScoreArgs),
    /// Serve /score from live Prometheus data, and the scores on /metrics.
    Serve(commands::serve::ServeArgs),
    /// Write the model's feature queries over a time range as a training CSV.
    Export(commands::export::ExportArgs),
}

/// Runs one command; its exit code as every etcd-dr binary gives it (`dr_common::process`):
/// 2 for logging it cannot set up or an address it cannot listen on, 1 for a failure.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return process::fail(NAME, format!("starting the async runtime: {err}")),
    };
    runtime.block_on(async {
        let _telemetry =
            match process::telemetry(NAME, "info", cli.log_format, cli.otlp_endpoint.as_deref()) {
                Ok(guard) => guard,
                Err(code) => return code,
            };
        let outcome = match cli.command {
            Command::Train(args) => commands::train::run(args),
            Command::Eval(args) => commands::eval::run(args),
            Command::Score(args) => commands::score::run(args),
            Command::Serve(args) => return commands::serve::run(args).await,
            Command::Export(args) => commands::export::run(args).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => process::fail(NAME, err),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let missing = dr_common::process::flags_without_env(&Cli::command(), "DR_DETECTOR_");
        assert!(missing.is_empty(), "{missing:?}");
    }
}
