//! Child processes that are stopped by PID, exactly the ones we started.
//!
//! [`ChildGuard`] owns a [`Child`] and stops it on drop (also while a test panics): SIGTERM,
//! then SIGKILL after a deadline, then reap. Signals go to the PID of a child we have not
//! reaped yet, so the PID cannot have been recycled for someone else's process.
//! Nothing here ever kills by name.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// How long a process gets after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline for a server to become ready: generous, because a cold 2-core machine
/// running tests in parallel is slow to start Go binaries.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many log lines error messages quote.
const LOG_TAIL_LINES: usize = 25;

/// Where a stack's files live, and whether its processes should outlive us.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    // Dropping this removes the directory; `None` for fixed or kept directories.
    temp: Option<TempDir>,
    detach: bool,
}

impl Workdir {
    /// A fresh temporary directory, removed on drop unless `DR_KEEP_STACK=1`.
    pub fn temp(prefix: &str) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary directory")?;
        let mut dir = Self {
            path: temp.path().to_path_buf(),
            temp: Some(temp),
            detach: false,
        };
        if keep_requested() {
            dir.keep();
            eprintln!(
                "dr-testkit: keeping {} (DR_KEEP_STACK=1)",
                dir.path.display()
            );
        }
        Ok(dir)
    }

    /// A given directory (created if missing), never removed by us.
    pub fn fixed(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        Ok(Self {
            path,
            temp: None,
            detach: false,
        })
    }

    /// Processes started here get their own process group, so a Ctrl-C in the shell that
    /// ran `dr-stack up` does not reach them; `dr-stack down` stops them.
    pub fn detached(mut self) -> Self {
        self.detach = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_detached(&self) -> bool {
        self.detach
    }

    /// A subdirectory, created if missing.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Do not remove the directory on drop.
    pub fn keep(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = t.keep();
        }
    }
}

fn keep_requested() -> bool {
    std::env::var("DR_KEEP_STACK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Finds a server binary: `$env_var` if set, else the first of `names` on `PATH`.
pub fn find_binary(env_var: &str, names: &[&str], install_hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} is not a file", p.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("none of {names:?} found on PATH; install {install_hint} or set {env_var} to the binary")
}

/// A started process, stopped by PID when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    pid: u32,
    child: Option<Child>,
    log_path: PathBuf,
    stop_timeout: Duration,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log_path` and stdin closed.
    /// `detach` puts it in its own process group (see [`Workdir::detached`]).
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path, detach: bool) -> Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if detach {
            cmd.process_group(0);
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
            stop_timeout: STOP_TIMEOUT,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sets how long [`stop`](Self::stop) waits after SIGTERM before SIGKILL.
    pub fn set_stop_timeout(&mut self, timeout: Duration) {
        self.stop_timeout = timeout;
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// True while the process runs (an exited but unreaped child counts as stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some() && pid_alive(self.pid)
    }

    /// SIGTERM, wait up to the stop timeout, SIGKILL, reap. Idempotent.
    pub fn stop(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        // Only while the child is unreaped is its PID guaranteed to still be ours.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            sleep(Duration::from_millis(20));
        }
        eprintln!(
            "dr-testkit: {} (pid {}) ignored SIGTERM for {:?}; sending SIGKILL",
            self.name, self.pid, self.stop_timeout
        );
        let _ = child.kill();
        let status = child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        Ok(Some(status))
    }

    /// SIGKILL at once and reap: a crash, not a shutdown (etcd's graceful stop of a
    /// leader can take seconds, answering all the while). Idempotent.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        // Still unreaped, so the PID is still ours.
        let _ = child.kill();
        let status = child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        Ok(Some(status))
    }

    /// Leaves the process running and forgets it; returns its PID. For `dr-stack up`.
    pub fn disarm(mut self) -> u32 {
        // Dropping a `Child` neither kills nor waits for it.
        self.child = None;
        self.pid
    }

    /// An error for "`what` did not happen": names the process and quotes its log.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        let state = if self.is_running() {
            "still running".to_owned()
        } else {
            "exited".to_owned()
        };
        anyhow::anyhow!(
            "{} (pid {}, {state}): {what}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.name,
            self.pid,
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// Polls `check` every 100 ms until it returns `Ok(true)`. Fails at once if the
    /// process exits, and at the deadline with the last check error and the log tail.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match check() {
                Ok(true) => return Ok(()),
                Ok(false) => "not ready".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if !self.is_running() {
                return Err(self.failure(&format!("exited before {what} (last check: {last})")));
            }
            if start.elapsed() >= timeout {
                return Err(self.failure(&format!(
                    "{what} did not happen within {timeout:?} (last check: {last})"
                )));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `url` answers `GET` with status 200.
    pub fn wait_http_ok(&self, url: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("GET {url} -> 200"), timeout, || {
            let (status, body) = crate::http::http_get(url)?;
            if status == 200 {
                Ok(true)
            } else {
                bail!("status {status}: {}", body.trim())
            }
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "dr-testkit: stopping {} (pid {}): {e:#}",
                self.name, self.pid
            );
        }
    }
}

/// Runs `cmd` to its end with stdin closed and stdout and stderr captured, as
/// [`Command::output`] does, but waits at most `limit` (see [`output_within`]).
pub fn run_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    output_within(child, limit).with_context(|| format!("running {program}"))
}

/// Waits for `child` at most `limit` and collects what it wrote to its piped stdout and
/// stderr, as [`Child::wait_with_output`] does. Past the limit it is killed (by PID: it
/// is our unreaped child) and reaped, and the error quotes its stderr.
pub fn output_within(mut child: Child, limit: Duration) -> Result<Output> {
    // Read both pipes while waiting, so a child that writes a lot never blocks on them.
    let stdout = read_pipe(child.stdout.take());
    let stderr = read_pipe(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        let waited = child.try_wait();
        if let Ok(Some(status)) = waited {
            break Some(status);
        }
        if waited.is_err() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout(), stderr());
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "pid {} still running after {limit:?}, killed; stderr: {}",
            child.id(),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Reads `pipe` to its end on a thread; the returned function hands over what was read.
/// A pipe that a grandchild keeps open is given up on a second after that is asked.
fn read_pipe<R: Read + Send + 'static>(pipe: Option<R>) -> impl FnOnce() -> Vec<u8> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    move || rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
}

/// The last `lines` lines of a file (reads at most the last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True if `pid` exists and is not a zombie (an exited process nobody reaped yet).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_stat_field(&stat, 3).is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The process start time (clock ticks since boot, `/proc/PID/stat` field 22), which
/// together with the PID identifies one process across PID reuse.
pub fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    proc_stat_field(&stat, 22)?.parse().ok()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn pid_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// 1-based field of `/proc/PID/stat`; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn proc_stat_field(stat: &str, field: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(field.checked_sub(3)?)
}

/// Stops a process that is not our child (started by an earlier `dr-stack up`):
/// SIGTERM, wait, SIGKILL. The caller must have verified the PID is the right process.
pub fn stop_foreign_pid(pid: u32, timeout: Duration) -> Result<()> {
    if !pid_alive(pid) {
        return Ok(());
    }
    send_signal(pid, "TERM")?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return Ok(());
        }
        sleep(Duration::from_millis(20));
    }
    send_signal(pid, "KILL")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return Ok(());
        }
        sleep(Duration::from_millis(20));
    }
    bail!("pid {pid} survived SIGKILL")
}

fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .context("running kill")?;
    // The process may have exited between the check and the signal; that is fine.
    if !out.status.success() && pid_alive(pid) {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_stops_child_on_drop() {
        let dir = Workdir::temp("dr-testkit-proc").unwrap();
        let log = dir.path().join("sleep.log");
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let guard = ChildGuard::spawn("sleep", cmd, &log, false).unwrap();
        let pid = guard.pid();
        assert!(pid_alive(pid));
        assert!(pid_start_time(pid).is_some());
        drop(guard);
        assert!(!pid_alive(pid));
    }

    #[test]
    fn wait_until_reports_an_early_exit_with_the_log() {
        let dir = Workdir::temp("dr-testkit-proc").unwrap();
        let log = dir.path().join("fail.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom-marker >&2; exit 3"]);
        let guard = ChildGuard::spawn("failer", cmd, &log, false).unwrap();
        let err = guard
            .wait_until("ready", Duration::from_secs(5), || Ok(false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failer"), "{err}");
        assert!(err.contains("boom-marker"), "{err}");
    }

    #[test]
    fn output_within_collects_or_kills_at_the_limit() {
        let out = run_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");

        let started = Instant::now();
        let err = run_within(
            Command::new("sh").args(["-c", "echo late-marker >&2; exec sleep 600"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = format!("{err:#}");
        assert!(err.contains("still running"), "{err}");
        assert!(err.contains("late-marker"), "{err}");
    }

    #[test]
    fn stat_fields_survive_odd_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0";
        assert_eq!(proc_stat_field(stat, 3), Some("S"));
        assert_eq!(proc_stat_field(stat, 22), Some("12345"));
    }
}
