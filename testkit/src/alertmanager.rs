//! Alertmanager on loopback (Debian `prometheus-alertmanager`), clustering off.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::loopback::{LoopbackServer, ServerKind};
use crate::process::{STARTUP_TIMEOUT, Workdir};

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

/// Alertmanager's part in [`LoopbackServer`].
pub struct AlertmanagerKind;

impl ServerKind for AlertmanagerKind {
    const NAME: &'static str = "alertmanager";
    const BINARY_ENV: &'static str = "DR_ALERTMANAGER_BIN";
    const BINARIES: &'static [&'static str] = &["prometheus-alertmanager", "alertmanager"];
    const PACKAGE: &'static str = "the Debian package prometheus-alertmanager";
}

/// A running Alertmanager, stopped on drop.
pub type Alertmanager = LoopbackServer<AlertmanagerKind>;

impl Alertmanager {
    /// Starts one with `config_yaml` and waits for `/-/ready`.
    pub fn start(config_yaml: &str) -> Result<Self> {
        Self::start_with(AlertmanagerOptions {
            config_yaml: config_yaml.to_owned(),
            ..AlertmanagerOptions::default()
        })
    }

    pub fn start_with(opts: AlertmanagerOptions) -> Result<Self> {
        let config_yaml = opts.config_yaml;
        Self::start_in(opts.workdir, opts.startup_timeout, |workdir| {
            let config = workdir.path().join("alertmanager.yml");
            fs::write(&config, &config_yaml)
                .with_context(|| format!("writing {}", config.display()))?;
            let storage = workdir.subdir("alertmanager-data")?;
            let args = vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", storage.display()),
                // Empty disables the gossip cluster, which would otherwise bind
                // 0.0.0.0:9094 and wait for peers.
                "--cluster.listen-address=".to_owned(),
            ];
            Ok((args, AlertmanagerKind))
        })
    }
}
