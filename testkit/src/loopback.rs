//! The one way the harness starts the Prometheus project's servers (Pushgateway,
//! Prometheus, Alertmanager): find the binary, take a working directory, let the server
//! write its files and name its flags, listen on a free loopback port, wait for
//! `/-/ready`. [`LoopbackServer`] then answers for the URL, the PID and the guard that
//! stops the process by PID, the same for each; what differs is its [`ServerKind`].

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::ports::free_port;
use crate::process::{ChildGuard, Workdir, find_binary};

/// What tells one server from another when it is started.
pub trait ServerKind {
    /// The process's name in errors, its log file (`NAME.log`) and its temporary
    /// directory (`dr-NAME-`).
    const NAME: &'static str;
    /// The environment variable that names the binary, overriding the search.
    const BINARY_ENV: &'static str;
    /// Names of the binary looked for on `PATH`, in order.
    const BINARIES: &'static [&'static str];
    /// Where the binary comes from, for the error when it is missing.
    const PACKAGE: &'static str;
}

/// A running server of kind `K` on `127.0.0.1`, stopped on drop.
pub struct LoopbackServer<K: ServerKind> {
    // Fields drop in order: the process stops before its directory is removed.
    guard: ChildGuard,
    port: u16,
    kind: K,
    workdir: Workdir,
}

impl<K: ServerKind> LoopbackServer<K> {
    /// Starts the server in `workdir` (a fresh temporary directory if `None`).
    /// `configure` writes what the server reads into the directory and returns its
    /// flags besides the listen address, and the kind with what it keeps of them; then
    /// this waits up to `startup_timeout` for `/-/ready`.
    pub(crate) fn start_in(
        workdir: Option<Workdir>,
        startup_timeout: Duration,
        configure: impl FnOnce(&Workdir) -> Result<(Vec<String>, K)>,
    ) -> Result<Self> {
        let bin = find_binary(K::BINARY_ENV, K::BINARIES, K::PACKAGE)?;
        let workdir = match workdir {
            Some(w) => w,
            None => Workdir::temp(&format!("dr-{}-", K::NAME))?,
        };
        let (args, kind) = configure(&workdir)?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .current_dir(workdir.path());
        let guard = ChildGuard::spawn(
            K::NAME,
            cmd,
            &workdir.path().join(format!("{}.log", K::NAME)),
            workdir.is_detached(),
        )?;
        let server = Self {
            guard,
            port,
            kind,
            workdir,
        };
        server
            .guard
            .wait_http_ok(&format!("{}/-/ready", server.url()), startup_timeout)?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`, for Prometheus' targets and `alerting` section.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn guard(&self) -> &ChildGuard {
        &self.guard
    }

    /// What this server keeps of what it was started with.
    pub(crate) fn kind(&self) -> &K {
        &self.kind
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
