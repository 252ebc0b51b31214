//! Alertmanager on loopback (Debian `prometheus-alertmanager`), clustering off.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ports::free_port;
use crate::process::{ChildGuard, STARTUP_TIMEOUT, Workdir, find_binary};

/// A minimal config that accepts alerts and sends them nowhere; short group timers.
pub const NULL_CONFIG: &str = "\
route:
  receiver: 'null'
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: 'null'
";

/// How to start an [`Alertmanager`].
#[derive(Debug)]
pub struct AlertmanagerOptions {
    /// The `alertmanager.yml` contents. Use short `group_wait`/`group_interval` in tests.
    pub config_yaml: String,
    pub workdir: Option<Workdir>,
    pub startup_timeout: Duration,
}

impl Default for AlertmanagerOptions {
    fn default() -> Self {
        Self {
            config_yaml: NULL_CONFIG.to_owned(),
            workdir: None,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }
}

/// A running Alertmanager, stopped on drop.
pub struct Alertmanager {
    guard: ChildGuard,
    port: u16,
    workdir: Workdir,
}

impl Alertmanager {
    /// Starts one with `config_yaml` and waits for `/-/ready`.
    pub fn start(config_yaml: &str) -> Result<Self> {
        Self::start_with(AlertmanagerOptions {
            config_yaml: config_yaml.to_owned(),
            ..AlertmanagerOptions::default()
        })
    }

    pub fn start_with(opts: AlertmanagerOptions) -> Result<Self> {
        let bin = find_binary(
            "DR_ALERTMANAGER_BIN",
            &["prometheus-alertmanager", "alertmanager"],
            "the Debian package prometheus-alertmanager",
        )?;
        let workdir = match opts.workdir {
            Some(w) => w,
            None => Workdir::temp("dr-alertmanager-")?,
        };
        let config = workdir.path().join("alertmanager.yml");
        fs::write(&config, &opts.config_yaml)
            .with_context(|| format!("writing {}", config.display()))?;
        let storage = workdir.subdir("alertmanager-data")?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty disables the gossip cluster, which would otherwise bind 0.0.0.0:9094
            // and wait for peers.
            .arg("--cluster.listen-address=")
            .current_dir(workdir.path());
        let guard = ChildGuard::spawn(
            "alertmanager",
            cmd,
            &workdir.path().join("alertmanager.log"),
            workdir.is_detached(),
        )?;
        let am = Self {
            guard,
            port,
            workdir,
        };
        am.guard
            .wait_http_ok(&format!("{}/-/ready", am.url()), opts.startup_timeout)?;
        Ok(am)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`, for Prometheus' `alerting` section.
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
