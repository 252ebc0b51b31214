//! Wiring only: flags, logging, then the service (or one snapshot with --snapshot-once).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dr_remediator::actions::snapshot;
use dr_remediator::config::{Args, Config};
use dr_remediator::service;

/// Exit code for a configuration the remediator refuses to run with (as clap uses).
const USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("dr-remediator: {message}");
            return ExitCode::from(USAGE);
        }
    };
    let _telemetry = match dr_common::telemetry::init(
        config.log_format,
        "info",
        "dr-remediator",
        config.otlp_endpoint.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("dr-remediator: {message}");
            return ExitCode::from(USAGE);
        }
    };
    if config.snapshot_once {
        return snapshot_once(&config).await;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("dr-remediator: cannot listen on {}: {err}", config.listen);
            return ExitCode::from(USAGE);
        }
    };
    tracing::info!(listen = %config.listen, endpoints = ?config.etcd_endpoints, dry_run = config.dry_run, "remediator started");
    match service::run(config, listener, dr_common::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dr-remediator: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One verified snapshot, printed as JSON.
async fn snapshot_once(config: &Config) -> ExitCode {
    let taken = snapshot::take(
        &config.etcd_access(),
        &config.snapshot_dir,
        config.snapshot_retain,
        config.snapshot_timeout,
    )
    .await;
    match taken {
        Ok(info) => {
            println!("{}", serde_json::json!(info));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dr-remediator: snapshot failed: {err}");
            ExitCode::FAILURE
        }
    }
}
