//! A network namespace of a test's own (root only): created with a unique name, its
//! loopback brought up, deleted on drop. Processes started through
//! [`NetNs::command`] see only that namespace's loopback, so delay and loss added there
//! (with `tc` or `iptables`, from inside) touch nothing else on the machine.
//!
//! [`current`] names the namespace this process runs in: the commands that impair a
//! loopback must only ever run where it says the test's own namespace.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::process::run_within;

/// How long one `ip`, `tc` or `iptables` call may take.
const IP_LIMIT: Duration = Duration::from_secs(20);

/// A namespace this process created; deleted (`ip netns del`) on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>` and sets its `lo` up. The error says why creation
    /// failed (not root, no `ip` binary, namespaces not allowed here).
    pub fn create(prefix: &str) -> Result<Self> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "{prefix}-{}-{}-{:x}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed),
            nanos & 0xfff
        );
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`: add the program's arguments and run it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl NetNs {
    /// PIDs of the processes that run in this namespace (`ip netns pids`): only ever
    /// ours, started into it through [`command`](Self::command), and their children.
    pub fn pids(&self) -> Vec<u32> {
        run_within(
            Command::new("ip").args(["netns", "pids", &self.name]),
            IP_LIMIT,
        )
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Whatever a killed child left running in here (its own children could not be
        // stopped by it) goes with the namespace, by PID.
        for pid in self.pids() {
            eprintln!(
                "dr-testkit: killing pid {pid}, left in network namespace {}",
                self.name
            );
            let _ = run("kill", &["-KILL", &pid.to_string()]);
        }
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "dr-testkit: deleting network namespace {}: {err:#}",
                self.name
            );
        }
    }
}

/// The name of the namespace this process runs in (`ip netns identify`), if it has one.
pub fn current() -> Option<String> {
    let out = run_within(
        Command::new("ip").args(["netns", "identify", &std::process::id().to_string()]),
        IP_LIMIT,
    )
    .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// Runs `program args` to its end; an error with its stderr unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = run_within(Command::new(program).args(args), IP_LIMIT)
        .with_context(|| format!("running {program} (iproute2/iptables)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}
