//! A slow disk for chosen processes: `strace` attached to each one delays every `fsync`
//! and `fdatasync` by a fixed time before the call runs, as a failing or saturated disk
//! does. Unlike a writer competing for the disk, the effect does not depend on how fast
//! the machine's disk is or how busy it already is, it touches only those processes, and
//! it needs no block device of its own. Stopping the tracer (SIGTERM) detaches it and
//! ends the incident at once.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::process::{ChildGuard, find_binary};

/// The syscalls a slow disk makes slow: the WAL's and bbolt's syncs.
const SYNC_CALLS: &str = "fsync,fdatasync";

/// How long a tracer gets to attach (or fail to) before it is checked.
const ATTACH_GRACE: Duration = Duration::from_millis(500);

/// Tracers that delay the syncs of some processes; detached when stopped or dropped.
#[derive(Debug)]
pub struct SlowDisk {
    tracers: Vec<ChildGuard>,
    delay: Duration,
}

impl SlowDisk {
    /// Delays every sync of each process in `pids` (all its threads) by `delay`; each
    /// tracer logs to `log_dir/slow-disk-<pid>.log`. Fails, detaching those already
    /// attached, if any tracer cannot attach (no `strace`, or ptrace not permitted).
    pub fn attach(pids: &[u32], delay: Duration, log_dir: &Path) -> Result<Self> {
        if pids.is_empty() {
            bail!("a slow disk needs at least one process to slow down");
        }
        let strace = find_binary("DR_STRACE", &["strace"], "Debian's strace")?;
        let inject = format!(
            "inject={SYNC_CALLS}:delay_enter={}",
            delay.as_micros().max(1)
        );
        let mut slow = Self {
            tracers: Vec::with_capacity(pids.len()),
            delay,
        };
        for pid in pids {
            let mut cmd = Command::new(&strace);
            // -f with -p attaches every thread; nothing is printed (-qq, -o /dev/null).
            cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("trace={SYNC_CALLS}"))
                .arg("-e")
                .arg(&inject)
                .arg("-p")
                .arg(pid.to_string());
            let log = log_dir.join(format!("slow-disk-{pid}.log"));
            slow.tracers
                .push(ChildGuard::spawn("slow-disk tracer", cmd, &log, false)?);
        }
        sleep(ATTACH_GRACE);
        if let Some(dead) = slow.tracers.iter().find(|t| !t.is_running()) {
            let err = dead.failure("attaching to the process to slow down");
            slow.stop()?;
            return Err(err);
        }
        Ok(slow)
    }

    /// The added time per sync.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Detaches every tracer; the processes run on at full speed. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        for tracer in &mut self.tracers {
            tracer.stop()?;
        }
        Ok(())
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
