//! Prometheus Pushgateway on loopback (Debian `prometheus-pushgateway`).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::ports::free_port;
use crate::process::{ChildGuard, STARTUP_TIMEOUT, Workdir, find_binary};

/// How to start a [`Pushgateway`].
#[derive(Debug)]
pub struct PushgatewayOptions {
    /// Defaults to a fresh temporary directory.
    pub workdir: Option<Workdir>,
    pub startup_timeout: Duration,
}

impl Default for PushgatewayOptions {
    fn default() -> Self {
        Self {
            workdir: None,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }
}

/// A running Pushgateway, stopped on drop.
pub struct Pushgateway {
    guard: ChildGuard,
    port: u16,
    workdir: Workdir,
}

impl Pushgateway {
    /// Starts one in a temporary directory and waits for `/-/ready`.
    pub fn start() -> Result<Self> {
        Self::start_with(PushgatewayOptions::default())
    }

    pub fn start_with(opts: PushgatewayOptions) -> Result<Self> {
        let bin = find_binary(
            "DR_PUSHGATEWAY_BIN",
            &["prometheus-pushgateway", "pushgateway"],
            "the Debian package prometheus-pushgateway",
        )?;
        let workdir = match opts.workdir {
            Some(w) => w,
            None => Workdir::temp("dr-pushgateway-")?,
        };
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Persisting into the workdir also puts the directory on the command line,
            // which is how `dr-stack down` recognises the process as its own.
            .arg(format!(
                "--persistence.file={}",
                workdir.path().join("pushgateway.store").display()
            ))
            .current_dir(workdir.path());
        let guard = ChildGuard::spawn(
            "pushgateway",
            cmd,
            &workdir.path().join("pushgateway.log"),
            workdir.is_detached(),
        )?;
        let pg = Self {
            guard,
            port,
            workdir,
        };
        pg.guard
            .wait_http_ok(&format!("{}/-/ready", pg.url()), opts.startup_timeout)?;
        Ok(pg)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`, for Prometheus targets.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn guard(&self) -> &ChildGuard {
        &self.guard
    }

    /// Leaves the process running and the directory in place; returns its PID.
    pub fn disarm(self) -> u32 {
        let Self {
            guard, mut workdir, ..
        } = self;
        workdir.keep();
        guard.disarm()
    }
}
