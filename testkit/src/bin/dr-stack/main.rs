//! `dr-stack`: the real stack for shell scripts. `up` starts servers, writes
//! `DIR/stack.env`, `DIR/pids` and `DIR/stack.json`, and exits leaving them running;
//! `down` stops exactly the recorded processes after checking each is still ours.
#![forbid(unsafe_code)]

mod pids;
mod up;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use dr_testkit::etcd::{member_healthy, wait_answering};
use dr_testkit::process::{ChildGuard, STARTUP_TIMEOUT, STOP_TIMEOUT, pid_alive, stop_foreign_pid};

use crate::pids::{PidEntry, is_ours, read_pids, write_pids};
use crate::up::{UpArgs, up};

#[derive(Parser)]
#[command(
    version,
    about = "Start and stop the real etcd-dr stack on loopback ports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the stack in DIR and exit, leaving it running.
    Up(UpArgs),
    /// Stop every process recorded in DIR/pids (each checked to be ours first). Idempotent.
    Down {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
    },
    /// Print DIR/stack.env.
    Env {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
    },
    /// Stop etcd member N (0-based, or its name: etcd-N), keeping its data dir.
    StopMember {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        n: String,
    },
    /// Restart etcd member N (0-based, or its name) with its data dir
    /// (`--initial-cluster-state existing`).
    StartMember {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        n: String,
    },
    /// Wait until every running etcd member reports healthy.
    WaitHealthy {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// What `up` started; read back by the other commands.
#[derive(Serialize, Deserialize)]
struct State {
    dir: PathBuf,
    etcd_members: Vec<MemberState>,
}

#[derive(Serialize, Deserialize)]
struct MemberState {
    name: String,
    client_url: String,
    health_url: String,
    log_path: PathBuf,
    bin: PathBuf,
    /// The restart command line (`--initial-cluster-state existing`).
    restart_args: Vec<String>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dr-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up(args) => up(args),
        Cmd::Down { dir } => down(&canonical(&dir)?),
        Cmd::Env { dir } => {
            let p = dir.join("stack.env");
            let s = fs::read_to_string(&p)
                .with_context(|| format!("reading {} (is the stack up?)", p.display()))?;
            print!("{s}");
            Ok(())
        }
        Cmd::StopMember { dir, n } => stop_member(&canonical(&dir)?, &n),
        Cmd::StartMember { dir, n } => start_member(&canonical(&dir)?, &n),
        Cmd::WaitHealthy { dir, timeout } => {
            wait_healthy(&canonical(&dir)?, Duration::from_secs(timeout))
        }
    }
}

fn canonical(dir: &Path) -> Result<PathBuf> {
    dir.canonicalize()
        .with_context(|| format!("{} does not exist (is the stack up?)", dir.display()))
}

fn read_state(dir: &Path) -> Result<State> {
    let p = dir.join("stack.json");
    let text = fs::read_to_string(&p)
        .with_context(|| format!("reading {} (is the stack up?)", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn down(dir: &Path) -> Result<()> {
    let entries = read_pids(dir)?;
    let mut failures = Vec::new();
    // Reverse start order: Prometheus first, etcd last.
    for e in entries.iter().rev() {
        if !is_ours(e, dir) {
            if pid_alive(e.pid) {
                eprintln!(
                    "dr-stack: pid {} ({}) is no longer the process we started; left alone",
                    e.pid, e.role
                );
            }
            continue;
        }
        match stop_foreign_pid(e.pid, STOP_TIMEOUT) {
            Ok(()) => eprintln!("dr-stack: stopped {} (pid {})", e.role, e.pid),
            Err(err) => failures.push(format!("{} (pid {}): {err:#}", e.role, e.pid)),
        }
    }
    if !failures.is_empty() {
        bail!("could not stop: {}", failures.join("; "));
    }
    write_pids(dir, &[])?;
    Ok(())
}

/// Member `n` by index or by name: restore templates know members by name.
fn member_state<'a>(state: &'a State, n: &str) -> Result<&'a MemberState> {
    let found = match n.parse::<usize>() {
        Ok(i) => state.etcd_members.get(i),
        Err(_) => state.etcd_members.iter().find(|m| m.name == n),
    };
    found.with_context(|| {
        let names: Vec<&str> = state.etcd_members.iter().map(|m| m.name.as_str()).collect();
        format!("no etcd member {n} (the stack has {})", names.join(", "))
    })
}

fn stop_member(dir: &Path, n: &str) -> Result<()> {
    let state = read_state(dir)?;
    let name = &member_state(&state, n)?.name;
    let mut entries = read_pids(dir)?;
    if let Some(e) = entries.iter().find(|e| &e.role == name)
        && is_ours(e, dir)
    {
        stop_foreign_pid(e.pid, STOP_TIMEOUT)?;
        eprintln!("dr-stack: stopped {name} (pid {})", e.pid);
    }
    entries.retain(|e| &e.role != name);
    write_pids(dir, &entries)
}

fn start_member(dir: &Path, n: &str) -> Result<()> {
    let state = read_state(dir)?;
    let m = member_state(&state, n)?;
    let mut entries = read_pids(dir)?;
    if entries.iter().any(|e| e.role == m.name && is_ours(e, dir)) {
        bail!("{} is already running", m.name);
    }
    let mut cmd = Command::new(&m.bin);
    cmd.args(&m.restart_args).current_dir(dir.join("etcd"));
    let guard = ChildGuard::spawn(&m.name, cmd, &m.log_path, true)?;
    wait_answering(&guard, &m.health_url, STARTUP_TIMEOUT)?;
    let pid = guard.disarm();
    entries.retain(|e| e.role != m.name);
    entries.push(PidEntry::started(m.name.clone(), pid));
    write_pids(dir, &entries)?;
    eprintln!("dr-stack: started {} (pid {pid})", m.name);
    Ok(())
}

fn wait_healthy(dir: &Path, timeout: Duration) -> Result<()> {
    let state = read_state(dir)?;
    let entries = read_pids(dir)?;
    let deadline = Instant::now() + timeout;
    for m in &state.etcd_members {
        if !entries.iter().any(|e| e.role == m.name && is_ours(e, dir)) {
            continue;
        }
        loop {
            match member_healthy(&m.health_url) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} not healthy within {timeout:?}: {e:#}\n--- last lines of {} ---\n{}",
                        m.name,
                        m.log_path.display(),
                        dr_testkit::process::log_tail(&m.log_path, 25)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
}
