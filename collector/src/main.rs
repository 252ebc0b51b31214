//! Wiring only: flags, logging, then either one collection (`--once`) or the service.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dr_collector::collect::Collector;
use dr_collector::config::{Args, Config};
use dr_collector::metrics::CollectorMetrics;
use dr_collector::service;
use prometheus_client::registry::Registry;

/// Exit code for a configuration the collector refuses to run with (as clap uses).
const USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("dr-collector: {message}");
            return ExitCode::from(USAGE);
        }
    };
    let _telemetry = match dr_common::telemetry::init(
        config.log_format,
        "info",
        "dr-collector",
        config.otlp_endpoint.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("dr-collector: {message}");
            return ExitCode::from(USAGE);
        }
    };
    if config.once {
        return once(&config).await;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("dr-collector: cannot listen on {}: {err}", config.listen);
            return ExitCode::from(USAGE);
        }
    };
    tracing::info!(listen = %config.listen, targets = config.targets.len(), "collector started");
    match service::run(config, listener, dr_common::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dr-collector: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One collection per target; a one-line reason per failure.
async fn once(config: &Config) -> ExitCode {
    let collector =
        match Collector::new(config, CollectorMetrics::register(&mut Registry::default())) {
            Ok(collector) => collector,
            Err(message) => {
                eprintln!("dr-collector: {message}");
                return ExitCode::from(USAGE);
            }
        };
    let mut failed = false;
    for target in &config.targets {
        match collector.collect_once(target).await {
            Ok(pushed) => println!(
                "pushed {} families ({} samples) for {}",
                pushed.families, pushed.samples, target.instance
            ),
            Err(err) => {
                eprintln!("dr-collector: {err}");
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
