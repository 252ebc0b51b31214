//! Wiring only: flags, logging, then the service (or one snapshot with --snapshot-once, one
//! download from the store with --snapshot-fetch-latest, or --bump-revision-past).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dr_common::process;
use dr_remediator::actions::bump;
use dr_remediator::config::{Args, Config};
use dr_remediator::serve;

const NAME: &str = "dr-remediator";

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
    if config.snapshot_once {
        return snapshot_once(&config).await;
    }
    if let Some(dir) = &config.snapshot_fetch_latest {
        return fetch_latest(&config, dir).await;
    }
    if let Some((past, max_writes)) = config.bump_revision_past {
        return match bump::bump_past(&config.etcd_access(), past, max_writes).await {
            Ok(bumped) => {
                println!("{}", serde_json::json!(bumped));
                ExitCode::SUCCESS
            }
            Err(err) => process::fail(NAME, format!("revision bump failed: {err}")),
        };
    }
    process::serve(NAME, config.listen, |listener| {
        tracing::info!(listen = %config.listen, endpoints = ?config.etcd_endpoints, dry_run = config.dry_run, "remediator started");
        serve::run(config, listener, dr_common::shutdown::signal())
    })
    .await
}

/// One verified snapshot, printed as JSON.
async fn snapshot_once(config: &Config) -> ExitCode {
    match config.snapshots.take(&config.etcd_access()).await {
        Ok(info) => {
            println!("{}", serde_json::json!(info));
            ExitCode::SUCCESS
        }
        Err(err) => process::fail(NAME, format!("snapshot failed: {err}")),
    }
}

/// The newest good snapshot of --snapshot-store, or of --snapshot-store-secondary when the
/// first has none (or cannot be reached), printed as JSON.
async fn fetch_latest(config: &Config, dir: &std::path::Path) -> ExitCode {
    let mut failures = Vec::new();
    for store in config.snapshots.stores() {
        match store.fetch_latest(dir).await {
            Ok(fetched) => {
                println!("{}", serde_json::json!(fetched));
                return ExitCode::SUCCESS;
            }
            Err(err) => failures.push(format!("{}: {err}", store.label())),
        }
    }
    process::fail(NAME, format!("fetch failed: {}", failures.join("; ")))
}
