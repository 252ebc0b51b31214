//! How a binary starts and ends, the same way in each: a configuration it refuses, logging
//! it cannot set up or an address it cannot listen on end it with the usage exit code
//! (2, as clap uses) and one line `<binary>: <reason>` on stderr; a service that fails
//! ends it with 1 and its reason; a clean drain with 0.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::telemetry::{self, LogFormat, TelemetryGuard};

/// Exit code for a configuration the binary refuses to run with (as clap uses).
pub const USAGE: u8 = 2;

/// Says why on stderr and returns the usage exit code.
pub fn refuse(binary: &str, reason: impl Display) -> ExitCode {
    eprintln!("{binary}: {reason}");
    ExitCode::from(USAGE)
}

/// Says why on stderr (with its causes, for an `anyhow` error) and returns failure.
pub fn fail(binary: &str, reason: impl Display) -> ExitCode {
    eprintln!("{binary}: {reason:#}");
    ExitCode::FAILURE
}

/// Sets up logging (and span export) for `binary`; keep the guard for the process' life.
/// A setting it cannot use refuses to start.
pub fn telemetry(
    binary: &'static str,
    default_level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, ExitCode> {
    telemetry::init(format, default_level, binary, otlp_endpoint)
        .map_err(|reason| refuse(binary, reason))
}

/// Listens on `listen`, then runs the service on the listener (`run` is where it logs that
/// it started) until it returns: 0 when it drained cleanly, 1 when it failed, 2 when the
/// address cannot be had.
pub async fn serve<F, Fut, E>(binary: &str, listen: SocketAddr, run: F) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => return refuse(binary, format!("cannot listen on {listen}: {err}")),
    };
    match run(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(binary, err),
    }
}

/// The flags of `command` and its subcommands that the environment variable
/// `<prefix><FLAG>` (`--max-push-age`: `<prefix>MAX_PUSH_AGE`) does not also set: every
/// flag of every etcd-dr binary has one (a Kubernetes manifest sets env, not args). Each
/// binary's tests want this empty.
pub fn flags_without_env(command: &clap::Command, prefix: &str) -> Vec<String> {
    let mut missing: Vec<String> = command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| {
            let flag = arg.get_long().unwrap_or(arg.get_id().as_str());
            let wanted = format!("{prefix}{}", flag.replace('-', "_").to_uppercase());
            let matches = arg.get_env().is_some_and(|env| env == wanted.as_str());
            (!matches).then(|| format!("{} --{flag}", command.get_name()))
        })
        .collect();
    for sub in command.get_subcommands() {
        missing.extend(flags_without_env(sub, prefix));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_without_its_variable_is_named() {
        let command = clap::Command::new("dr-test")
            .arg(
                clap::Arg::new("ages")
                    .long("max-age")
                    .env("DR_TEST_MAX_AGE"),
            )
            .arg(clap::Arg::new("bare").long("bare"))
            .subcommand(
                clap::Command::new("sub").arg(clap::Arg::new("x").long("x-y").env("DR_TEST_WRONG")),
            );
        assert_eq!(
            flags_without_env(&command, "DR_TEST_"),
            ["dr-test --bare", "sub --x-y"]
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_refused_and_the_service_never_runs() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut ran = false;
        let code = serve("dr-test", addr, |_| {
            ran = true;
            async { Ok::<(), String>(()) }
        })
        .await;
        assert_eq!(code, ExitCode::from(USAGE));
        assert!(!ran);
    }

    #[tokio::test]
    async fn the_services_outcome_is_the_exit_code() {
        let free = "127.0.0.1:0".parse().unwrap();
        let ok = serve("dr-test", free, |_| async { Ok::<(), String>(()) }).await;
        assert_eq!(ok, ExitCode::SUCCESS);
        let failed = serve("dr-test", free, |_| async {
            Err(anyhow::anyhow!("etcd gone").context("serving"))
        })
        .await;
        assert_eq!(failed, ExitCode::FAILURE);
    }
}
