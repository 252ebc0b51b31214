//! `DIR/pids`: what `up` started, one `PID ROLE START_TIME` line each, and whether a
//! recorded PID is still that process.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use dr_testkit::process::{pid_alive, pid_cmdline, pid_start_time};

/// One line of `DIR/pids`: `PID ROLE START_TIME`.
#[derive(Debug, Clone, PartialEq)]
pub struct PidEntry {
    pub pid: u32,
    pub role: String,
    pub start_time: u64,
}

impl PidEntry {
    /// The entry for a process we just started.
    pub fn started(role: String, pid: u32) -> Self {
        Self {
            pid,
            role,
            start_time: pid_start_time(pid).unwrap_or(0),
        }
    }
}

pub fn read_pids(dir: &Path) -> Result<Vec<PidEntry>> {
    let p = dir.join("pids");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [pid, role, start] => Ok(PidEntry {
                    pid: pid.parse()?,
                    role: (*role).to_owned(),
                    start_time: start.parse()?,
                }),
                _ => bail!("bad line in {}: {l:?}", p.display()),
            }
        })
        .collect()
}

pub fn write_pids(dir: &Path, entries: &[PidEntry]) -> Result<()> {
    let mut text =
        String::from("# PID ROLE START_TIME (from /proc/PID/stat); written by dr-stack\n");
    for e in entries {
        text.push_str(&format!("{} {} {}\n", e.pid, e.role, e.start_time));
    }
    let p = dir.join("pids");
    let tmp = dir.join("pids.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// The PID is alive, started when we recorded, and its command line names DIR: the
/// same process, not a recycled PID.
pub fn is_ours(e: &PidEntry, dir: &Path) -> bool {
    pid_alive(e.pid)
        && pid_start_time(e.pid) == Some(e.start_time)
        && pid_cmdline(e.pid).is_some_and(|c| c.contains(&*dir.to_string_lossy()))
}
