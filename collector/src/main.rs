//! Wiring only: flags, logging, then either one collection (`--once`) or the service.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dr_collector::collect::Collector;
use dr_collector::config::{Args, Config};
use dr_collector::metrics::CollectorMetrics;
use dr_collector::serve;
use dr_common::process;
use prometheus_client::registry::Registry;

const NAME: &str = "dr-collector";

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(message) => return process::refuse(NAME, message),
    };
    let _telemetry = match process::telemetry(
        NAME,
        "info",
        config.log_format,
        config.otlp_endpoint.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    if config.once {
        return once(&config).await;
    }
    process::serve(NAME, config.listen, |listener| {
        tracing::info!(listen = %config.listen, targets = config.targets.len(), "collector started");
        serve::run(config, listener, dr_common::shutdown::signal())
    })
    .await
}

/// One collection per target; a one-line reason per failure.
async fn once(config: &Config) -> ExitCode {
    let collector =
        match Collector::new(config, CollectorMetrics::register(&mut Registry::default())) {
            Ok(collector) => collector,
            Err(message) => return process::refuse(NAME, message),
        };
    let mut failed = false;
    for target in &config.targets {
        match collector.collect_once(target).await {
            Ok(pushed) => println!(
                "pushed {} families ({} samples) for {}",
                pushed.families, pushed.samples, target.instance
            ),
            Err(err) => {
                eprintln!("{NAME}: {err}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
