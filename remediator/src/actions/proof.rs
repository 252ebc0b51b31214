//! Proof that a store's snapshots restore: the newest one that verifies is downloaded
//! (SHA-256 checked; a corrupt one is refused and the one before it used), restored with
//! `etcdctl`/`etcdutl snapshot restore` into a scratch data dir, started as a throwaway
//! single-member etcd on free loopback ports, and asked for its revision and keys:
//!
//! - its revision must be the snapshot's own (`snapshot status`);
//! - with the status recorded when the snapshot was taken (`<name>.status`), the keys at
//!   that revision must be the ones the member counted then.
//!
//! The throwaway etcd is stopped by its PID (and killed if the proof is dropped half-way)
//! and the scratch dir removed, whatever the outcome.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::actions::retention::taken_millis;
use crate::actions::snapshot::RecordedStatus;
use crate::actions::store::{SnapshotStore, StoreError};
use crate::audit::{self, Audit, Phase};
use crate::error::{CommandError, FileError};

/// The audit kind of a proof; its step is `proof`, one pair of entries per store.
pub const KIND: &str = "snapshot_proof";

/// Runs proofs of every store, one round at a time, scheduled or on demand, each store's
/// recorded in the audit log (start, then ok with the report or failed with the reason).
pub struct Prover {
    pub stores: Vec<Arc<SnapshotStore>>,
    pub settings: ProofSettings,
    audit: Arc<Audit>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Prover {
    pub fn new(
        stores: Vec<Arc<SnapshotStore>>,
        settings: ProofSettings,
        audit: Arc<Audit>,
    ) -> Self {
        clean_scratch(&settings.scratch);
        Prover {
            stores,
            settings,
            audit,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Starts a round in the background and returns its action id, unless one is running
    /// (`None`).
    pub fn start(self: &Arc<Self>) -> Option<String> {
        let guard = self.running.clone().try_lock_owned().ok()?;
        let id = audit::new_action_id();
        let (prover, run_id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            prover.round(&run_id).await;
            drop(guard);
        });
        Some(id)
    }

    /// One round now, unless one is running (then `None`): every store proven in turn.
    pub async fn round_now(&self) -> Option<Vec<Result<ProofReport, ProofError>>> {
        let _guard = self.running.try_lock().ok()?;
        Some(self.round(&audit::new_action_id()).await)
    }

    async fn round(&self, id: &str) -> Vec<Result<ProofReport, ProofError>> {
        let mut results = Vec::new();
        for store in &self.stores {
            let who = json!({ "store": store.label(), "url": store.url() });
            if self
                .audit
                .record(id, KIND, "proof", Phase::Start, who, false)
                .is_err()
            {
                continue;
            }
            let result = prove(store, &self.settings, id).await;
            let (phase, detail) = match &result {
                Ok(report) => {
                    tracing::info!(store = %store.label(), name = %report.name, seconds = report.seconds, "snapshot proven restorable");
                    (Phase::Ok, json!(report))
                }
                Err(err) => {
                    tracing::warn!(store = %store.label(), error = %err, "snapshot proof failed");
                    (
                        Phase::Failed,
                        json!({ "store": store.label(), "error": err.to_string() }),
                    )
                }
            };
            let _ = self.audit.record(id, KIND, "proof", phase, detail, false);
            results.push(result);
        }
        results
    }
}

/// How proofs run (`--proof-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProofSettings {
    /// Time between scheduled proofs; `None`: only on demand (`POST /proof`).
    pub interval: Option<Duration>,
    /// The etcd server started from the restored data (`--proof-etcd-bin`).
    pub etcd_bin: PathBuf,
    /// `etcdctl` (3.4) or `etcdutl` (3.5+), for `snapshot status` and `snapshot restore`
    /// (`--proof-restore-bin`).
    pub restore_bin: PathBuf,
    /// Where the download and the restored data dir go, one subdir per proof, removed
    /// after (`--proof-dir`).
    pub scratch: PathBuf,
    /// Deadline for one proof, download to teardown (`--proof-timeout`).
    pub timeout: Duration,
}

/// Why a proof failed. The text is what the audit log records.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// No snapshot could be downloaded and verified (the store failed, or every one was
    /// refused).
    #[error("download: {0}")]
    Fetch(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{what}: {error}")]
    Tool {
        what: &'static str,
        error: CommandError,
    },
    #[error("snapshot status: {0}")]
    BadStatus(String),
    /// The throwaway etcd did not start or answer.
    #[error("throwaway etcd: {0}")]
    Start(String),
    /// The restored etcd does not hold what the snapshot says.
    #[error("{what}: the snapshot says {expected}, the restored etcd has {actual}")]
    Mismatch {
        what: &'static str,
        expected: i64,
        actual: i64,
    },
    #[error("the proof did not finish within {0:?}")]
    Timeout(Duration),
}

/// What one proof found, for the audit log and `POST /proof`'s caller.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProofReport {
    pub store: String,
    /// The snapshot proven (the newest that verified).
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    /// Newer snapshots refused on the way (corrupt in the store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// The snapshot's revision, as `snapshot status` reads it.
    pub revision: i64,
    /// The status recorded when it was taken, if it was.
    pub recorded: Option<RecordedStatus>,
    /// The restored etcd's revision and keys (at the recorded revision when there is one,
    /// at its own otherwise).
    pub restored_revision: i64,
    pub restored_keys: i64,
    /// When the snapshot was taken (unix seconds, from its name).
    pub taken_seconds: Option<f64>,
    pub download_seconds: f64,
    pub restore_seconds: f64,
    pub seconds: f64,
}

/// `snapshot status -w json`, as etcdctl 3.4 and etcdutl print it.
#[derive(Deserialize)]
struct DbStatus {
    revision: i64,
}

/// Proves `store`'s newest good snapshot restorable, within `settings.timeout`; counts
/// the result in the store's metrics.
pub async fn prove(
    store: &SnapshotStore,
    settings: &ProofSettings,
    id: &str,
) -> Result<ProofReport, ProofError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(settings.timeout, run(store, settings, id)).await {
        Ok(result) => result,
        Err(_) => Err(ProofError::Timeout(settings.timeout)),
    };
    let seconds = started.elapsed().as_secs_f64();
    let result = result.map(|report| ProofReport { seconds, ..report });
    store.metrics.count_proof(
        result
            .as_ref()
            .ok()
            .map(|r| r.taken_seconds.unwrap_or_default()),
        seconds,
    );
    result
}

async fn run(
    store: &SnapshotStore,
    settings: &ProofSettings,
    id: &str,
) -> Result<ProofReport, ProofError> {
    let scratch = Scratch::create(
        &settings
            .scratch
            .join(format!("proof-{id}-{}", store.label())),
    )?;
    let started = Instant::now();
    let fetched = store.fetch_latest(&scratch.path.join("download")).await?;
    let recorded = store.read_status(&fetched.name).await?;
    let download_seconds = started.elapsed().as_secs_f64();

    let restore_started = Instant::now();
    let status = tool(
        settings,
        "snapshot status",
        &[
            "snapshot".as_ref(),
            "status".as_ref(),
            fetched.path.as_os_str(),
            "-w".as_ref(),
            "json".as_ref(),
        ],
    )
    .await?;
    let status: DbStatus = serde_json::from_slice(&status)
        .map_err(|err| ProofError::BadStatus(format!("not the JSON expected: {err}")))?;
    // A db without a key says 0; etcd counts from 1.
    let revision = status.revision.max(1);
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let client_url = format!("http://127.0.0.1:{client_port}");
    let initial_cluster = format!("proof={peer_url}");
    let token = format!("etcd-dr-proof-{id}");
    let data_dir = scratch.path.join("data");
    tool(
        settings,
        "snapshot restore",
        &[
            "snapshot".as_ref(),
            "restore".as_ref(),
            fetched.path.as_os_str(),
            "--name".as_ref(),
            "proof".as_ref(),
            "--initial-cluster".as_ref(),
            initial_cluster.as_ref(),
            "--initial-cluster-token".as_ref(),
            token.as_ref(),
            "--initial-advertise-peer-urls".as_ref(),
            peer_url.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ],
    )
    .await?;
    // The download is no longer needed: the restored copy is.
    let _ = std::fs::remove_file(&fetched.path);
    let restore_seconds = restore_started.elapsed().as_secs_f64();

    let log_path = scratch.path.join("etcd.log");
    let log = std::fs::File::create(&log_path).map_err(FileError::on("creating", &log_path))?;
    let log_err = log
        .try_clone()
        .map_err(FileError::on("opening", &log_path))?;
    let mut etcd = Throwaway {
        child: tokio::process::Command::new(&settings.etcd_bin)
            .args(["--name", "proof", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                // The restored db may be near the cluster's quota; reads need no room.
                "--quota-backend-bytes",
                "8589934592",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| ProofError::Start(format!("{}: {err}", settings.etcd_bin.display())))?,
        log: log_path,
    };
    let compared = etcd.compare(&client_url, revision, recorded).await;
    etcd.stop().await;
    let (restored_revision, restored_keys) = compared?;
    Ok(ProofReport {
        store: store.label().to_owned(),
        name: fetched.name.clone(),
        sha256: fetched.sha256,
        bytes: fetched.bytes,
        refused: fetched.refused,
        revision,
        recorded,
        restored_revision,
        restored_keys,
        taken_seconds: taken_millis(&fetched.name).map(|ms| ms as f64 / 1000.0),
        download_seconds,
        restore_seconds,
        seconds: 0.0,
    })
}

/// The throwaway etcd, killed by its PID when stopped or dropped.
struct Throwaway {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Throwaway {
    /// Waits until it answers, then compares its revision with the snapshot's and, with a
    /// recorded status, its keys at that revision with the recorded ones.
    async fn compare(
        &mut self,
        url: &str,
        revision: i64,
        recorded: Option<RecordedStatus>,
    ) -> Result<(i64, i64), ProofError> {
        const CALL: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut client = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProofError::Start(format!(
                    "exited ({status}) before answering: {}",
                    self.log_tail()
                )));
            }
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(CALL)
                .with_timeout(CALL);
            if let Ok(mut client) = etcd_client::Client::connect([url], Some(options)).await
                && client.status().await.is_ok()
            {
                break client;
            }
            if Instant::now() >= deadline {
                return Err(ProofError::Start(format!(
                    "not answering at {url}: {}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let count = |at: Option<i64>| {
            let mut options = etcd_client::GetOptions::new()
                .with_all_keys()
                .with_count_only()
                .with_serializable();
            if let Some(at) = at {
                options = options.with_revision(at);
            }
            options
        };
        let ask =
            |what: &'static str, e: etcd_client::Error| ProofError::Start(format!("{what}: {e}"));
        let now = client
            .get(Vec::<u8>::new(), Some(count(None)))
            .await
            .map_err(|e| ask("counting the keys", e))?;
        let restored_revision = now.header().map(|h| h.revision()).unwrap_or_default();
        if restored_revision != revision {
            return Err(ProofError::Mismatch {
                what: "revision",
                expected: revision,
                actual: restored_revision,
            });
        }
        let Some(recorded) = recorded else {
            return Ok((restored_revision, now.count()));
        };
        let then = client
            .get(Vec::<u8>::new(), Some(count(Some(recorded.revision))))
            .await
            .map_err(|e| ask("counting the keys at the recorded revision", e))?;
        if then.count() != recorded.keys {
            return Err(ProofError::Mismatch {
                what: "keys at the recorded revision",
                expected: recorded.keys,
                actual: then.count(),
            });
        }
        Ok((restored_revision, then.count()))
    }

    /// Kills it by its PID and reaps it.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            tracing::debug!(pid, "stopping the throwaway etcd");
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

/// Runs the restore tool with `args`; its stdout on success.
async fn tool(
    settings: &ProofSettings,
    what: &'static str,
    args: &[&std::ffi::OsStr],
) -> Result<Vec<u8>, ProofError> {
    let fail = |error| ProofError::Tool { what, error };
    let output = tokio::process::Command::new(&settings.restore_bin)
        .args(args)
        // etcdctl 3.4 wants it; etcdutl ignores it.
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| fail(CommandError::Spawn(err)))?;
    if !output.status.success() {
        return Err(fail(CommandError::Exit {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }));
    }
    Ok(output.stdout)
}

/// A free loopback port (bound then released: the throwaway etcd binds it next).
fn free_port() -> Result<u16, ProofError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|err| ProofError::Start(format!("no free loopback port: {err}")))
}

/// One proof's scratch dir, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(path: &Path) -> Result<Self, FileError> {
        // What a killed predecessor left under the same name goes first.
        let _ = std::fs::remove_dir_all(path);
        std::fs::create_dir_all(path).map_err(FileError::on("creating", path))?;
        Ok(Scratch {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot remove the proof's scratch dir");
        }
    }
}

/// Removes what proofs of a killed predecessor left in `scratch` (at start-up).
pub fn clean_scratch(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("proof-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
