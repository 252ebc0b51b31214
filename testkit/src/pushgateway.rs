//! Prometheus Pushgateway on loopback (Debian `prometheus-pushgateway`).

use std::time::Duration;

use anyhow::Result;

use crate::loopback::{LoopbackServer, ServerKind};
use crate::process::{STARTUP_TIMEOUT, Workdir};

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

/// The Pushgateway's part in [`LoopbackServer`].
pub struct PushgatewayKind;

impl ServerKind for PushgatewayKind {
    const NAME: &'static str = "pushgateway";
    const BINARY_ENV: &'static str = "DR_PUSHGATEWAY_BIN";
    const BINARIES: &'static [&'static str] = &["prometheus-pushgateway", "pushgateway"];
    const PACKAGE: &'static str = "the Debian package prometheus-pushgateway";
}

/// A running Pushgateway, stopped on drop.
pub type Pushgateway = LoopbackServer<PushgatewayKind>;

impl Pushgateway {
    /// Starts one in a temporary directory and waits for `/-/ready`.
    pub fn start() -> Result<Self> {
        Self::start_with(PushgatewayOptions::default())
    }

    pub fn start_with(opts: PushgatewayOptions) -> Result<Self> {
        Self::start_in(opts.workdir, opts.startup_timeout, |workdir| {
            // Persisting into the workdir also puts the directory on the command line,
            // which is how `dr-stack down` recognises the process as its own.
            let store = workdir.path().join("pushgateway.store");
            Ok((
                vec![format!("--persistence.file={}", store.display())],
                PushgatewayKind,
            ))
        })
    }
}
