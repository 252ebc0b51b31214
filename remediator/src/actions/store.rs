//! Snapshots off the cluster: every verified snapshot is copied to an object store
//! (`--snapshot-store s3://bucket/prefix`, `gs://`, `az://`, or `file:///dir`) through the
//! `object_store` crate, and the newest one can be fetched back and verified.
//!
//! What lies in the store, per snapshot: `<prefix>/<name>` (the snapshot file, uploaded
//! as a multipart stream so memory does not grow with the db) and then
//! `<prefix>/<name>.sha256` (`<hex>  <name>`, as `sha256sum` writes it, of the whole
//! object). The checksum object is written only after the data object is complete, so a
//! snapshot without one (an upload cut short, a killed process) is never used, and
//! retention deletes the checksum first for the same reason. An S3 multipart upload that
//! was never completed is invisible; a bucket lifecycle rule
//! (AbortIncompleteMultipartUpload) reclaims its parts.
//!
//! Credentials come from the store's usual environment (`AWS_*` with `AWS_ENDPOINT_URL`
//! and `AWS_ALLOW_HTTP` for a server that is not AWS, `GOOGLE_*`, `AZURE_*`), files or
//! workload identity, as `object_store`'s `from_env` builders read them; nothing here
//! reads, stores or logs them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ObjectStore, PutPayload, RetryConfig, WriteMultipart, aws::AmazonS3Builder,
    azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder, local::LocalFileSystem,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use reqwest::Url;
use ring::digest::{Context, SHA256};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::actions::compression::{Compression, Encoder};
use crate::actions::retention::{self, Retention};
use crate::actions::snapshot::{self, Partial, TrailerCheck};
use crate::error::{ActionError, FileError};

/// The checksum object's suffix, beside the data object.
pub const CHECKSUM_SUFFIX: &str = ".sha256";
/// Multipart part size: above S3's 5 MiB minimum; at most `PARTS_IN_FLIGHT` + 1 of these
/// are in memory, whatever the db's size.
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;
const READ_CHUNK: usize = 1 << 20;

/// Why the store could not be opened, written or read. The text names the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--snapshot-store {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--snapshot-store {url}: {error}")]
    Open {
        url: String,
        error: object_store::Error,
    },
    /// A request to the store failed (unreachable, refused, not found).
    #[error("{what} {location}: {error}")]
    Request {
        what: &'static str,
        location: String,
        error: object_store::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0} did not finish within {1:?}")]
    Timeout(String, Duration),
    /// A fed upload whose snapshot failed: nothing was completed in the store.
    #[error("{}: the snapshot was not taken; nothing uploaded", .0.display())]
    NotTaken(PathBuf),
    /// The checksum object is not `<64 hex digits>  <name>`.
    #[error("{location}: not a SHA-256 checksum")]
    BadChecksum { location: String },
    /// The downloaded bytes are not the ones uploaded.
    #[error(
        "{name}: SHA-256 mismatch (stored {stored}, downloaded {actual}): corrupt in the store"
    )]
    ChecksumMismatch {
        name: String,
        stored: String,
        actual: String,
    },
    /// The bytes match their checksum but are no good etcd snapshot (its own trailer).
    #[error("{name}: {error}")]
    NotASnapshot { name: String, error: ActionError },
    /// The object matches its checksum but is no whole zstd frame.
    #[error("{name}: not a whole zstd frame: {error}")]
    NotDecompressed { name: String, error: std::io::Error },
    #[error("compressing {name}: {error}")]
    Compress { name: String, error: std::io::Error },
    #[error("no usable snapshot in {url}{}", refused_list(.refused))]
    NoneUsable { url: String, refused: Vec<String> },
}

fn refused_list(refused: &[String]) -> String {
    if refused.is_empty() {
        String::new()
    } else {
        format!(" (refused: {})", refused.join("; "))
    }
}

impl StoreError {
    /// The `reason` label a refused download is counted under.
    fn refused_reason(&self) -> Option<&'static str> {
        match self {
            StoreError::BadChecksum { .. } | StoreError::ChecksumMismatch { .. } => {
                Some("checksum")
            }
            StoreError::NotASnapshot { .. } | StoreError::NotDecompressed { .. } => {
                Some("not_a_snapshot")
            }
            _ => None,
        }
    }

    /// A problem with this snapshot's content (the previous one may still be good), as
    /// opposed to the store itself failing (which the previous one would meet too).
    fn is_this_snapshot(&self) -> bool {
        match self {
            StoreError::BadChecksum { .. }
            | StoreError::ChecksumMismatch { .. }
            | StoreError::NotASnapshot { .. }
            | StoreError::NotDecompressed { .. } => true,
            // Deleted between the listing and the download (retention elsewhere).
            StoreError::Request { error, .. } => {
                matches!(error, object_store::Error::NotFound { .. })
            }
            _ => false,
        }
    }
}

/// Maps a failed store request on `location` to [`StoreError::Request`], saying `what`.
fn request(
    what: &'static str,
    location: &ObjectPath,
) -> impl FnOnce(object_store::Error) -> StoreError {
    let location = location.to_string();
    move |error| StoreError::Request {
        what,
        location,
        error,
    }
}

/// How a failed upload is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadRetry {
    /// Attempts per upload, the first included.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each, up to `max_wait`.
    pub first_wait: Duration,
    pub max_wait: Duration,
    /// Deadline for one attempt (the whole object and its checksum).
    pub attempt_timeout: Duration,
}

impl Default for UploadRetry {
    fn default() -> Self {
        UploadRetry {
            attempts: 5,
            first_wait: Duration::from_secs(5),
            max_wait: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreResultLabel {
    pub store: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreReasonLabel {
    pub store: String,
    pub reason: String,
}

/// The store's metrics, labelled `store` (`primary` for `--snapshot-store`, `secondary`
/// for `--snapshot-store-secondary`). The families are shared by every store of a process
/// ([`StoreMetrics::for_store`]), and registered once ([`register`]).
#[derive(Clone)]
pub struct StoreMetrics {
    store: String,
    /// Upload attempts by result (`ok`, `failed`).
    uploads: Family<StoreResultLabel, Counter>,
    /// When the newest snapshot in the store was uploaded (unix seconds); 0 until known.
    last_upload: Family<StoreLabel, Gauge<f64, AtomicU64>>,
    /// Downloads refused by their checksum or etcd's trailer, by reason.
    refused: Family<StoreReasonLabel, Counter>,
    /// Proofs of restorability by result (`ok`, `failed`).
    proofs: Family<StoreResultLabel, Counter>,
    /// When the newest snapshot proven restorable was taken (unix seconds); 0 until one is.
    last_proven: Family<StoreLabel, Gauge<f64, AtomicU64>>,
    /// How long the last proof took, download to teardown.
    proof_seconds: Family<StoreLabel, Gauge<f64, AtomicU64>>,
    /// 1 when the last proof passed, 0 when it failed; absent until the first.
    last_proof_success: Family<StoreLabel, Gauge>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let metrics = StoreMetrics {
            store: PRIMARY.to_owned(),
            uploads: Family::default(),
            last_upload: Family::default(),
            refused: Family::default(),
            proofs: Family::default(),
            last_proven: Family::default(),
            proof_seconds: Family::default(),
            last_proof_success: Family::default(),
        };
        metrics.zero();
        metrics
    }
}

/// The `store` label of `--snapshot-store` and `--snapshot-store-secondary`.
pub const PRIMARY: &str = "primary";
pub const SECONDARY: &str = "secondary";
/// Why a download was refused: its SHA-256 (or the checksum object) or etcd's trailer.
pub const REFUSED_REASONS: [&str; 2] = ["checksum", "not_a_snapshot"];

impl StoreMetrics {
    /// The same families, for the store labelled `store`.
    pub fn for_store(&self, store: &str) -> Self {
        let metrics = StoreMetrics {
            store: store.to_owned(),
            ..self.clone()
        };
        metrics.zero();
        metrics
    }

    /// Every series at 0 from the start, so a first failure reads as an increase.
    fn zero(&self) {
        for result in ["ok", "failed"] {
            let _ = self.uploads.get_or_create(&self.result(result));
            let _ = self.proofs.get_or_create(&self.result(result));
        }
        for reason in REFUSED_REASONS {
            let _ = self.refused.get_or_create(&self.reason(reason));
        }
        let _ = self.last_upload.get_or_create(&self.label());
        let _ = self.last_proven.get_or_create(&self.label());
    }

    fn label(&self) -> StoreLabel {
        StoreLabel {
            store: self.store.clone(),
        }
    }

    fn result(&self, result: &str) -> StoreResultLabel {
        StoreResultLabel {
            store: self.store.clone(),
            result: result.to_owned(),
        }
    }

    fn reason(&self, reason: &str) -> StoreReasonLabel {
        StoreReasonLabel {
            store: self.store.clone(),
            reason: reason.to_owned(),
        }
    }

    /// The `store` label.
    pub fn store(&self) -> &str {
        &self.store
    }

    fn count(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.uploads.get_or_create(&self.result(result)).inc();
    }

    /// Upload attempts so far with `result` (`ok` or `failed`).
    pub fn attempts(&self, result: &str) -> u64 {
        self.uploads.get_or_create(&self.result(result)).get()
    }

    /// When the newest snapshot in the store was uploaded (unix seconds), 0 until known.
    pub fn last_upload(&self) -> f64 {
        self.last_upload.get_or_create(&self.label()).get()
    }

    fn set_last_upload(&self, seconds: f64) {
        self.last_upload.get_or_create(&self.label()).set(seconds);
    }

    fn count_refused(&self, reason: &str) {
        self.refused.get_or_create(&self.reason(reason)).inc();
    }

    /// Downloads refused so far for `reason` (`checksum`, `not_a_snapshot`).
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get_or_create(&self.reason(reason)).get()
    }

    /// One proof done: `proven_taken` is when the snapshot it proved was taken (unix
    /// seconds), `None` when it failed.
    pub fn count_proof(&self, proven_taken: Option<f64>, seconds: f64) {
        let result = if proven_taken.is_some() {
            "ok"
        } else {
            "failed"
        };
        self.proofs.get_or_create(&self.result(result)).inc();
        self.proof_seconds.get_or_create(&self.label()).set(seconds);
        self.last_proof_success
            .get_or_create(&self.label())
            .set(i64::from(proven_taken.is_some()));
        if let Some(taken) = proven_taken {
            let gauge = self.last_proven.get_or_create(&self.label());
            // Only ever forward: a proof that fell back to an older snapshot (the newest
            // refused) does not make the newest proven one look older than it is.
            if taken > gauge.get() {
                gauge.set(taken);
            }
        }
    }

    /// Proofs so far with `result` (`ok` or `failed`).
    pub fn proofs(&self, result: &str) -> u64 {
        self.proofs.get_or_create(&self.result(result)).get()
    }

    /// When the newest snapshot proven restorable was taken (unix seconds), 0 until one is.
    pub fn last_proven(&self) -> f64 {
        self.last_proven.get_or_create(&self.label()).get()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "etcd_dr_snapshot_uploads",
            "Snapshot upload attempts to a store, by store (primary, secondary) and result (ok, failed)",
            self.uploads.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_last_upload_timestamp_seconds",
            "When the newest snapshot in the store was uploaded, by store (0 until known)",
            self.last_upload.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_downloads_refused",
            "Downloads from a store refused (SHA-256 mismatch or no valid etcd trailer), by store and reason; the previous snapshot is used",
            self.refused.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_proof",
            "Proofs that a store's newest snapshot restores (restored into a throwaway etcd, revision and keys compared), by store and result",
            self.proofs.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_last_proven_timestamp_seconds",
            "When the newest snapshot proven restorable was taken, by store (0 until one is)",
            self.last_proven.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_last_proof_success",
            "1 when the last proof of the store passed, 0 when it failed, by store (absent until the first)",
            self.last_proof_success.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_proof_duration_seconds",
            "How long the last proof took (download, verify, restore, start, compare, stop), by store",
            self.proof_seconds.clone(),
        );
    }
}

/// Registers the stores' metrics (one set of families for all) and, inside a runtime,
/// sets each one's last-upload time from its newest snapshot, so a restart does not read
/// as an RPO breach.
pub fn register(registry: &mut Registry, stores: &[Arc<SnapshotStore>]) {
    let Some(first) = stores.first() else {
        return;
    };
    first.metrics.register(registry);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for store in stores {
        let store = store.clone();
        runtime.spawn(async move {
            if let Err(err) = store.refresh_last_upload().await {
                tracing::warn!(store = %store.url, error = %err, "cannot read the store's newest snapshot");
            }
        });
    }
}

/// One snapshot uploaded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Uploaded {
    /// The data object's key in the store.
    pub location: String,
    /// SHA-256 of the whole object (compressed, if it is), as its checksum object holds it.
    pub sha256: String,
    /// The snapshot's size.
    pub bytes: u64,
    /// The object's size: `bytes` unless compressed.
    pub stored_bytes: u64,
    pub seconds: f64,
    /// Attempts it took (1: the first went through).
    pub attempts: u32,
}

/// What became of a snapshot's upload, in its audit entry and in `--snapshot-once`'s JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Under way in the background; its result is recorded later under the same action
    /// id, as kind `snapshot_upload`.
    Pending(String),
    Uploaded(Uploaded),
    /// Every attempt failed; the local copy is kept and goes up with the next upload.
    Failed(String),
}

/// A snapshot in the store that has its checksum object.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The snapshot's name (as on local disk).
    pub name: String,
    /// The data object's name: `name`, or `name.zst` when compressed.
    pub object: String,
    /// The object's size.
    pub bytes: u64,
}

/// A snapshot downloaded and verified (its SHA-256 and its etcd trailer).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fetched {
    pub name: String,
    /// Of the downloaded file (the snapshot itself, decompressed if it was stored so):
    /// what `sha256sum` says of the copies a person makes of it.
    pub sha256: String,
    /// The object it came from: `name`, or `name.zst` when stored compressed.
    pub object: String,
    pub bytes: u64,
    pub path: PathBuf,
    /// Why newer snapshots were refused before this one (corrupt in the store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// The object store snapshots are copied to.
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// As given, for messages (a URL of a bucket carries no secret).
    url: String,
    /// Which snapshots stay in the store (the count given to [`SnapshotStore::open`] until
    /// set otherwise).
    pub retention: Retention,
    pub retry: UploadRetry,
    pub metrics: StoreMetrics,
    /// How snapshots are written from now on; each stored one is read as its name says.
    pub compression: Compression,
    // One upload (with its catch-up and retention) at a time: a scheduled snapshot's and a
    // remediation's must not prune or re-send under each other.
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("url", &self.url)
            .field("retention", &self.retention)
            .field("retry", &self.retry)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl SnapshotStore {
    /// Opens the store named by `url`; `options` are the store's own configuration keys
    /// (e.g. `aws_endpoint`), applied over what the environment says. Nothing is sent yet.
    pub fn open(
        url: &str,
        retain: usize,
        options: &[(&str, &str)],
    ) -> Result<SnapshotStore, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|err| bad(&err.to_string()))?;
        let open_err = |error| StoreError::Open {
            url: url.to_owned(),
            error,
        };
        // Bounded inside one attempt too, so an unreachable store fails the attempt in
        // seconds and the waits between attempts are ours.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("want file:///absolute/path"))?;
                std::fs::create_dir_all(&dir).map_err(FileError::on("creating", &dir))?;
                let local = LocalFileSystem::new_with_prefix(&dir).map_err(open_err)?;
                (Arc::new(local), String::new())
            }
            scheme @ ("s3" | "gs" | "az") => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(bad("want SCHEME://bucket[/prefix]"));
                }
                let mut bucket_url = parsed.clone();
                bucket_url.set_path("");
                let bucket_url = bucket_url.as_str();
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => {
                        let mut builder = AmazonS3Builder::from_env().with_url(bucket_url);
                        for (key, value) in options {
                            let key = key.parse().map_err(open_err)?;
                            builder = builder.with_config(key, *value);
                        }
                        Arc::new(builder.with_retry(retry).build().map_err(open_err)?)
                    }
                    "gs" => {
                        let mut builder =
                            GoogleCloudStorageBuilder::from_env().with_url(bucket_url);
                        for (key, value) in options {
                            let key = key.parse().map_err(open_err)?;
                            builder = builder.with_config(key, *value);
                        }
                        Arc::new(builder.with_retry(retry).build().map_err(open_err)?)
                    }
                    _ => {
                        let mut builder = MicrosoftAzureBuilder::from_env().with_url(bucket_url);
                        for (key, value) in options {
                            let key = key.parse().map_err(open_err)?;
                            builder = builder.with_config(key, *value);
                        }
                        Arc::new(builder.with_retry(retry).build().map_err(open_err)?)
                    }
                };
                (store, parsed.path().trim_matches('/').to_owned())
            }
            other => {
                return Err(bad(&format!(
                    "scheme {other}: want s3://, gs://, az:// or file://"
                )));
            }
        };
        let prefix = ObjectPath::parse(&prefix).map_err(|err| bad(&err.to_string()))?;
        Ok(SnapshotStore {
            store,
            prefix,
            url: url.to_owned(),
            retention: Retention::count(retain),
            retry: UploadRetry::default(),
            metrics: StoreMetrics::default(),
            compression: Compression::None,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `primary` or `secondary`, as its metrics are labelled.
    pub fn label(&self) -> &str {
        self.metrics.store()
    }

    /// Sets the last-upload gauge from the store's newest complete snapshot.
    pub async fn refresh_last_upload(&self) -> Result<(), StoreError> {
        let newest = self
            .list_objects()
            .await?
            .into_iter()
            .filter(|meta| meta.location.filename().is_some_and(is_checksum_name))
            .map(|meta| meta.last_modified)
            .max();
        if let Some(when) = newest {
            // Only ever forward: an upload that finished meanwhile is newer.
            let seconds = when.timestamp_millis() as f64 / 1000.0;
            if seconds > self.metrics.last_upload() {
                self.metrics.set_last_upload(seconds);
            }
        }
        Ok(())
    }

    /// Uploads the verified snapshot at `path` (retried, counted), then any older local
    /// snapshot the store lacks (an earlier upload that failed for good), then deletes
    /// the store's snapshots beyond `retain`. Only the first decides the result.
    pub async fn upload(&self, path: &Path) -> Result<Uploaded, StoreError> {
        let _busy = self.busy.lock().await;
        self.upload_locked(path, None).await
    }

    /// Uploads the snapshot that `take` is streaming to `path`, from the chunks [`Feed`]
    /// hands over while they arrive: the store receives it during the download, not after
    /// it. Once the snapshot is verified and in place the upload completes; if the feed was
    /// given up (the store fell behind) or that attempt failed, the upload is done again
    /// from the file, retried as [`SnapshotStore::upload`] does. A snapshot that was not
    /// taken leaves nothing in the store.
    pub async fn upload_fed(&self, path: &Path, fed: Fed) -> Result<Uploaded, StoreError> {
        let _busy = self.busy.lock().await;
        let name = file_name(path)?;
        let Fed { chunks, mut done } = fed;
        let what = || {
            format!(
                "uploading {} to {} as it was taken",
                path.display(),
                self.url
            )
        };
        let limit = self.retry.attempt_timeout;
        let streaming = self.stream(&name, chunks);
        tokio::pin!(streaming);
        let (streamed, in_place) = tokio::select! {
            streamed = &mut streaming => (Some(streamed), (&mut done).await),
            in_place = &mut done => match in_place {
                // Every chunk was handed over: the stream ends with them.
                Ok(true) => match tokio::time::timeout(limit, streaming).await {
                    Ok(streamed) => (Some(streamed), Ok(true)),
                    Err(_) => (Some(Err(StoreError::Timeout(what(), limit))), Ok(true)),
                },
                // Given up on, or no snapshot: the parts sent are left unfinished (an
                // incomplete multipart upload is never listed), as aborting them would
                // wait on the same store that fell behind.
                other => (None, other),
            },
        };
        let first = match (streamed, in_place) {
            (streamed, Err(_)) => {
                if let Some(Ok(upload)) = streamed {
                    upload.abort().await;
                }
                return Err(StoreError::NotTaken(path.to_path_buf()));
            }
            (Some(Ok(upload)), Ok(true)) => Some(
                match tokio::time::timeout(limit, upload.complete(path)).await {
                    Ok(result) => result,
                    Err(_) => Err(StoreError::Timeout(what(), limit)),
                },
            ),
            (Some(Err(err)), Ok(_)) => Some(Err(err)),
            (Some(Ok(upload)), Ok(false)) => {
                upload.abort().await;
                None
            }
            (None, Ok(_)) => None,
        };
        self.upload_locked(path, first).await
    }

    /// [`SnapshotStore::upload`] with its lock held; `first`, when given, is the first
    /// attempt's result, already made.
    async fn upload_locked(
        &self,
        path: &Path,
        mut first: Option<Result<Uploaded, StoreError>>,
    ) -> Result<Uploaded, StoreError> {
        let mut wait = self.retry.first_wait;
        let mut attempt = 1;
        let uploaded = loop {
            let what = format!("uploading {} to {}", path.display(), self.url);
            let tried = match first.take() {
                Some(result) => result,
                None => {
                    match tokio::time::timeout(self.retry.attempt_timeout, self.put(path)).await {
                        Ok(result) => result,
                        Err(_) => Err(StoreError::Timeout(what, self.retry.attempt_timeout)),
                    }
                }
            };
            self.metrics.count(tried.is_ok());
            match tried {
                Ok(mut uploaded) => {
                    uploaded.attempts = attempt;
                    break uploaded;
                }
                Err(err) if attempt >= self.retry.attempts => {
                    tracing::warn!(path = %path.display(), store = %self.url, attempts = attempt, error = %err, "snapshot upload failed; the local copy is kept");
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), store = %self.url, attempt, retry_in = ?wait, error = %err, "snapshot upload failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.retry.max_wait);
                    attempt += 1;
                }
            }
        };
        self.mark_uploaded();
        tracing::info!(location = %uploaded.location, bytes = uploaded.bytes, sha256 = %uploaded.sha256, "snapshot uploaded");
        let protected = path
            .parent()
            .map(retention::protected_by_audit)
            .unwrap_or_default();
        if let Some(dir) = path.parent() {
            self.catch_up(dir, path, &protected).await;
        }
        if let Err(err) = self.prune(SystemTime::now(), &protected).await {
            tracing::warn!(store = %self.url, error = %err, "store retention failed; will try after the next upload");
        }
        Ok(uploaded)
    }

    fn mark_uploaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.metrics.set_last_upload(now);
    }

    /// Sends the local snapshots the store lacks and its retention keeps (newest first:
    /// the RPO gains most), once each; a failure is counted and left for the next upload.
    async fn catch_up(&self, dir: &Path, just_sent: &Path, protected: &HashSet<String>) {
        let (Ok(local), Ok(stored)) = (snapshot::list(dir), self.list().await) else {
            return;
        };
        let mut names: Vec<String> = local
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .chain(stored.iter().map(|s| s.name.clone()))
            .collect();
        names.sort_by(|a, b| b.cmp(a));
        names.dedup();
        // Not what the store's retention would delete again at once.
        let kept: HashSet<&str> = names
            .iter()
            .zip(self.retention.keep(&names, SystemTime::now(), protected))
            .filter_map(|(name, keep)| keep.then_some(name.as_str()))
            .collect();
        for path in local {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if path == just_sent || !kept.contains(name) || stored.iter().any(|s| s.name == name) {
                continue;
            }
            let sent = self.put(&path).await;
            self.metrics.count(sent.is_ok());
            match sent {
                Ok(uploaded) => {
                    tracing::info!(location = %uploaded.location, "earlier snapshot uploaded (catch-up)");
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "earlier snapshot still not uploaded");
                    return;
                }
            }
        }
    }

    /// One attempt from the file: the data object streamed as a multipart upload, hashed on
    /// the way, then its status and checksum objects.
    async fn put(&self, path: &Path) -> Result<Uploaded, StoreError> {
        let name = file_name(path)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(FileError::on("opening", path))?;
        let mut upload = self.begin(&name).await?;
        let mut buffer = vec![0u8; READ_CHUNK];
        let streamed: Result<(), StoreError> = async {
            loop {
                let read = file
                    .read(&mut buffer)
                    .await
                    .map_err(FileError::on("reading", path))?;
                if read == 0 {
                    return Ok(());
                }
                upload.write(&buffer[..read]).await?;
            }
        }
        .await;
        if let Err(err) = streamed {
            upload.abort().await;
            return Err(err);
        }
        upload.complete(path).await
    }

    /// The data object of the fed upload, from the chunks until the feed ends; not yet
    /// completed. A failure ends it early (and drops the chunks, so the feed stops waiting).
    async fn stream(
        &self,
        name: &str,
        mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<MultipartUpload, StoreError> {
        let mut upload = self.begin(name).await?;
        while let Some(chunk) = chunks.recv().await {
            if let Err(err) = upload.write(&chunk).await {
                upload.abort().await;
                return Err(err);
            }
        }
        Ok(upload)
    }

    async fn begin(&self, name: &str) -> Result<MultipartUpload, StoreError> {
        let object = self.compression.object_name(name);
        let encoder = self
            .compression
            .encoder()
            .map_err(|error| StoreError::Compress {
                name: name.to_owned(),
                error,
            })?;
        let location = self.prefix.child(object.as_str());
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(request("starting the upload of", &location))?;
        Ok(MultipartUpload {
            store: Arc::clone(&self.store),
            writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            encoder,
            name: name.to_owned(),
            object,
            status_location: status_location(&self.prefix.child(name)),
            location,
            context: Context::new(&SHA256),
            bytes: 0,
            stored_bytes: 0,
            started: Instant::now(),
        })
    }

    async fn list_objects(&self) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|error| StoreError::Request {
                what: "listing",
                location: self.url.clone(),
                error,
            })?;
            // Only this prefix's own objects, not those of a prefix below it.
            if meta
                .location
                .filename()
                .is_some_and(|name| self.prefix.child(name) == meta.location)
            {
                found.push(meta);
            }
        }
        Ok(found)
    }

    /// The store's snapshots that have their checksum object, newest first (names sort by
    /// time).
    pub async fn list(&self) -> Result<Vec<Stored>, StoreError> {
        let objects = self.list_objects().await?;
        let names: Vec<&str> = objects
            .iter()
            .filter_map(|meta| meta.location.filename())
            .collect();
        let mut found: Vec<Stored> = objects
            .iter()
            .filter_map(|meta| {
                let object = meta.location.filename()?;
                let (_, name) = Compression::of_object(object);
                let complete = snapshot::is_snapshot_name(name)
                    && names.contains(&format!("{object}{CHECKSUM_SUFFIX}").as_str());
                complete.then(|| Stored {
                    name: name.to_owned(),
                    object: object.to_owned(),
                    bytes: meta.size,
                })
            })
            .collect();
        // Newest first. A snapshot stored both ways (sent again by hand after the setting
        // changed) is listed once per form, the uncompressed first: a download tries both.
        found.sort_by(|a, b| b.name.cmp(&a.name).then_with(|| a.object.cmp(&b.object)));
        Ok(found)
    }

    /// Deletes the snapshots the retention does not keep at `now` (`protected` names
    /// stay), every form of each, checksum first (so one half deleted is no longer a
    /// snapshot), then the data and its status; and data objects left without a checksum
    /// older than the newest snapshot (an upload cut short between the objects), and
    /// statuses of no snapshot.
    pub async fn prune(
        &self,
        now: SystemTime,
        protected: &HashSet<String>,
    ) -> Result<(), StoreError> {
        let stored = self.list().await?;
        let newest = stored.first().map(|s| s.name.clone());
        let mut names: Vec<&str> = stored.iter().map(|s| s.name.as_str()).collect();
        names.dedup();
        let kept: HashSet<&str> = names
            .iter()
            .zip(self.retention.keep(&names, now, protected))
            .filter_map(|(name, keep)| keep.then_some(*name))
            .collect();
        for old in &stored {
            if kept.contains(old.name.as_str()) {
                continue;
            }
            let location = self.prefix.child(old.object.as_str());
            self.delete(&checksum_location(&location)).await?;
            self.delete(&location).await?;
            self.delete(&status_location(&self.prefix.child(old.name.as_str())))
                .await?;
            tracing::info!(store = %self.label(), location = %location, "removed old snapshot from the store (retention)");
        }
        let Some(newest) = newest else {
            return Ok(());
        };
        let objects = self.list_objects().await?;
        let present: HashSet<&str> = objects
            .iter()
            .filter_map(|meta| meta.location.filename())
            .collect();
        for meta in &objects {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            // A data object is an orphan without its own checksum; a status, without any
            // form of its snapshot.
            let (snapshot, owned) = match name.strip_suffix(STATUS_SUFFIX) {
                Some(snapshot) => (snapshot, stored.iter().any(|s| s.name == snapshot)),
                None => (
                    Compression::of_object(name).1,
                    present.contains(format!("{name}{CHECKSUM_SUFFIX}").as_str()),
                ),
            };
            let orphan =
                snapshot::is_snapshot_name(snapshot) && snapshot < newest.as_str() && !owned;
            if orphan {
                self.delete(&meta.location).await?;
                tracing::info!(location = %meta.location, "removed an object without its snapshot's checksum");
            }
        }
        Ok(())
    }

    async fn delete(&self, location: &ObjectPath) -> Result<(), StoreError> {
        match self.store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(StoreError::Request {
                what: "deleting",
                location: location.to_string(),
                error,
            }),
        }
    }

    /// Downloads the newest snapshot with a checksum into `dir` and verifies it (its
    /// SHA-256 and etcd's own trailer). A corrupt one is refused (nothing is left of it)
    /// and the one before it tried; a store that fails is an error, not a reason to hand
    /// back an older snapshot.
    pub async fn fetch_latest(&self, dir: &Path) -> Result<Fetched, StoreError> {
        std::fs::create_dir_all(dir).map_err(FileError::on("creating", dir))?;
        let mut refused = Vec::new();
        for stored in self.list().await? {
            match self.download(&stored, dir).await {
                Ok(fetched) => {
                    if !refused.is_empty() {
                        tracing::warn!(name = %fetched.name, refused = ?refused, "newer snapshots refused; using an older one");
                    }
                    return Ok(Fetched { refused, ..fetched });
                }
                Err(err) if err.is_this_snapshot() => {
                    if let Some(reason) = err.refused_reason() {
                        self.metrics.count_refused(reason);
                    }
                    tracing::warn!(store = %self.label(), name = %stored.name, error = %err, "snapshot in the store refused");
                    refused.push(err.to_string());
                }
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::NoneUsable {
            url: self.url.clone(),
            refused,
        })
    }

    /// The status recorded when `name` was taken, if it was uploaded with one; an object
    /// that is not such a status counts as none (the proof then asks the snapshot itself).
    pub async fn read_status(
        &self,
        name: &str,
    ) -> Result<Option<snapshot::RecordedStatus>, StoreError> {
        let location = status_location(&self.prefix.child(name));
        let bytes = match self.store.get(&location).await {
            Ok(found) => found.bytes().await.map_err(request("reading", &location))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(request("reading", &location)(error)),
        };
        Ok(serde_json::from_slice(&bytes)
            .inspect_err(
                |err| tracing::warn!(%location, error = %err, "not a snapshot status; ignored"),
            )
            .ok())
    }

    /// Downloads `stored` to `dir/<name>.part`, streamed and hashed (and decompressed, if
    /// it was stored so), and renames it into place only when every check passes.
    async fn download(&self, stored: &Stored, dir: &Path) -> Result<Fetched, StoreError> {
        let name = stored.name.as_str();
        let location = self.prefix.child(stored.object.as_str());
        let checksum = checksum_location(&location);
        let text = self
            .store
            .get(&checksum)
            .await
            .map_err(request("reading", &checksum))?
            .bytes()
            .await
            .map_err(request("reading", &checksum))?;
        let expected = parse_checksum(&text).ok_or_else(|| StoreError::BadChecksum {
            location: checksum.to_string(),
        })?;
        let not_decompressed = |error| StoreError::NotDecompressed {
            name: stored.object.clone(),
            error,
        };
        let mut decoder = Compression::of_object(&stored.object)
            .0
            .decoder()
            .map_err(not_decompressed)?;
        let final_path = dir.join(name);
        let part = Partial::new(dir.join(format!("{name}.part")));
        let part_path = part.path().to_path_buf();
        let mut stream = self
            .store
            .get(&location)
            .await
            .map_err(request("downloading", &location))?
            .into_stream();
        let file = tokio::fs::File::create(&part_path)
            .await
            .map_err(FileError::on("creating", &part_path))?;
        let mut file = tokio::io::BufWriter::with_capacity(READ_CHUNK, file);
        let mut context = Context::new(&SHA256);
        let mut file_context = decoder.is_some().then(|| Context::new(&SHA256));
        let mut trailer = TrailerCheck::new();
        // A frame that fails to decode is reported after the checksum: corruption in the
        // store is named as such, not as bad zstd.
        let mut undecodable = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(request("downloading", &location))?;
            context.update(&chunk);
            let Some(decoder) = decoder.as_mut() else {
                trailer.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(FileError::on("writing", &part_path))?;
                continue;
            };
            if undecodable.is_some() {
                continue;
            }
            // Piece by piece, so memory stays bounded however far a chunk expands.
            let mut input = &chunk[..];
            loop {
                match decoder.next_piece(&mut input) {
                    Ok(Some(piece)) => {
                        trailer.update(&piece);
                        if let Some(file_context) = file_context.as_mut() {
                            file_context.update(&piece);
                        }
                        file.write_all(&piece)
                            .await
                            .map_err(FileError::on("writing", &part_path))?;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        undecodable = Some(error);
                        break;
                    }
                }
            }
        }
        file.flush()
            .await
            .map_err(FileError::on("writing", &part_path))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(FileError::on("fsync", &part_path))?;
        let actual = hex(context.finish().as_ref());
        if actual != expected {
            return Err(StoreError::ChecksumMismatch {
                name: stored.object.clone(),
                stored: expected,
                actual,
            });
        }
        if let Some(error) = undecodable {
            return Err(not_decompressed(error));
        }
        if let Some(decoder) = decoder {
            decoder.finish().map_err(not_decompressed)?;
        }
        let (bytes, _) = trailer
            .finish(&part_path)
            .map_err(|error| StoreError::NotASnapshot {
                name: name.to_owned(),
                error,
            })?;
        part.rename_to(&final_path)
            .map_err(|error| StoreError::NotASnapshot {
                name: name.to_owned(),
                error,
            })?;
        Ok(Fetched {
            name: name.to_owned(),
            sha256: file_context.map_or(actual, |context| hex(context.finish().as_ref())),
            object: stored.object.clone(),
            bytes,
            path: final_path,
            refused: Vec::new(),
        })
    }
}

/// A snapshot's data object on its way into the store, hashed as it goes. Nothing is
/// listed as a snapshot until [`MultipartUpload::complete`] has written its checksum.
struct MultipartUpload {
    store: Arc<dyn ObjectStore>,
    writer: WriteMultipart,
    /// Compresses what is written, when the store is set to.
    encoder: Option<Encoder>,
    /// The snapshot's name.
    name: String,
    /// The data object's name (`name`, or `name.zst`), as its checksum line names it.
    object: String,
    location: ObjectPath,
    status_location: ObjectPath,
    /// Of the stored bytes.
    context: Context,
    bytes: u64,
    stored_bytes: u64,
    started: Instant,
}

impl MultipartUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.bytes += chunk.len() as u64;
        let Some(mut encoder) = self.encoder.take() else {
            return self.store_bytes(chunk).await;
        };
        // Off the runtime's threads: a fed upload runs beside the snapshot's download, which
        // must not wait on a slow level (the feed gives the upload up instead).
        let chunk = chunk.to_vec();
        let compressed = tokio::task::spawn_blocking(move || {
            let compressed = encoder.compress(&chunk);
            (encoder, compressed)
        })
        .await;
        let name = self.name.clone();
        let compress_error = |error| StoreError::Compress { name, error };
        let (encoder, compressed) = match compressed {
            Ok(done) => done,
            Err(err) => return Err(compress_error(std::io::Error::other(err))),
        };
        self.encoder = Some(encoder);
        let compressed = compressed.map_err(compress_error)?;
        self.store_bytes(&compressed).await
    }

    async fn store_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Waits for parts in flight before buffering more: memory stays bounded.
        self.writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(request("uploading", &self.location))?;
        self.context.update(bytes);
        self.writer.write(bytes);
        self.stored_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Parts already sent would otherwise linger, unseen but billed.
    async fn abort(self) {
        let _ = self.writer.abort().await;
    }

    /// Completes the data object, then writes the status recorded beside `snapshot` (if
    /// any) and, last, the checksum object.
    async fn complete(mut self, snapshot: &Path) -> Result<Uploaded, StoreError> {
        if let Some(encoder) = self.encoder.take() {
            let ended = match encoder.finish() {
                Ok(last) => self.store_bytes(&last).await,
                Err(error) => Err(StoreError::Compress {
                    name: self.name.clone(),
                    error,
                }),
            };
            if let Err(err) = ended {
                self.abort().await;
                return Err(err);
            }
        }
        let MultipartUpload {
            store,
            writer,
            object,
            location,
            status_location,
            context,
            bytes,
            stored_bytes,
            started,
            ..
        } = self;
        writer
            .finish()
            .await
            .map_err(request("completing the upload of", &location))?;
        let sha256 = hex(context.finish().as_ref());
        // The status recorded when it was taken, if any, goes before the checksum too.
        let status_path = snapshot::status_path(snapshot);
        match tokio::fs::read(&status_path).await {
            Ok(status) => {
                store
                    .put(&status_location, PutPayload::from(status))
                    .await
                    .map_err(request("writing", &status_location))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(FileError {
                    what: "reading",
                    path: status_path,
                    error,
                }
                .into());
            }
        }
        // Only now: a data object without its checksum is never taken for a snapshot.
        let checksum = checksum_location(&location);
        store
            .put(&checksum, PutPayload::from(format!("{sha256}  {object}\n")))
            .await
            .map_err(request("writing", &checksum))?;
        Ok(Uploaded {
            location: location.to_string(),
            sha256,
            bytes,
            stored_bytes,
            seconds: started.elapsed().as_secs_f64(),
            attempts: 1,
        })
    }
}

/// How long the download waits for a fed upload to take a chunk before it gives the feed
/// up: a slow store must not hold up, or time out, the snapshot itself.
const FEED_STALL: Duration = Duration::from_secs(10);
/// Chunks (etcd sends up to 32 KiB each) buffered between the download and the upload.
const FEED_CHUNKS: usize = 64;

/// The download's end of a fed upload ([`SnapshotStore::upload_fed`]).
pub struct Feed {
    /// `None` once given up: the upload then did not see every byte.
    chunks: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    done: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// The upload's end of a [`Feed`].
pub struct Fed {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    done: tokio::sync::oneshot::Receiver<bool>,
}

/// A feed and its receiving end. Dropping the [`Feed`] without
/// [`Feed::in_place`] says the snapshot was not taken.
pub fn feed() -> (Feed, Fed) {
    let (chunks_tx, chunks) = tokio::sync::mpsc::channel(FEED_CHUNKS);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    (
        Feed {
            chunks: Some(chunks_tx),
            done: Some(done_tx),
        },
        Fed { chunks, done },
    )
}

impl Feed {
    /// Hands a chunk to the upload; one it has not taken within [`FEED_STALL`] (or that
    /// failed) ends the feed, and the upload is done from the file afterwards.
    pub async fn send(&mut self, chunk: &[u8]) {
        let Some(chunks) = &self.chunks else {
            return;
        };
        if !matches!(
            tokio::time::timeout(FEED_STALL, chunks.send(chunk.to_vec())).await,
            Ok(Ok(()))
        ) {
            self.chunks = None;
        }
    }

    /// The snapshot is verified and at its final path: the upload may complete.
    pub fn in_place(mut self) {
        // The stream ends first, then the upload learns whether it saw every byte.
        let complete = self.chunks.take().is_some();
        if let Some(done) = self.done.take() {
            let _ = done.send(complete);
        }
    }
}

fn file_name(path: &Path) -> Result<String, StoreError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            FileError {
                what: "naming",
                path: path.to_path_buf(),
                error: std::io::Error::other("no file name"),
            }
            .into()
        })
}

/// The status recorded when the snapshot was taken, beside the data object.
pub const STATUS_SUFFIX: &str = ".status";

fn status_location(data: &ObjectPath) -> ObjectPath {
    ObjectPath::from(format!("{data}{STATUS_SUFFIX}"))
}

fn checksum_location(data: &ObjectPath) -> ObjectPath {
    ObjectPath::from(format!("{data}{CHECKSUM_SUFFIX}"))
}

fn is_checksum_name(name: &str) -> bool {
    name.strip_suffix(CHECKSUM_SUFFIX)
        .is_some_and(|object| snapshot::is_snapshot_name(Compression::of_object(object).1))
}

/// The digest of a `sha256sum` line (or a bare digest), lower-case.
fn parse_checksum(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let digest = text.split_whitespace().next()?.to_ascii_lowercase();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lines_parse_as_sha256sum_writes_them() {
        let digest = "ab".repeat(32);
        assert_eq!(
            parse_checksum(format!("{digest}  snapshot-1.db\n").as_bytes()),
            Some(digest.clone())
        );
        assert_eq!(
            parse_checksum(digest.to_uppercase().as_bytes()),
            Some(digest)
        );
        assert_eq!(parse_checksum(b"abc  snapshot-1.db"), None);
        assert_eq!(parse_checksum(&[0xff, 0xfe]), None);
        assert_eq!(parse_checksum(b""), None);
    }

    #[test]
    fn urls_are_checked_before_anything_is_sent() {
        let refused = |url: &str| SnapshotStore::open(url, 1, &[]).unwrap_err().to_string();
        assert!(
            refused("ftp://host/x").contains("want s3://"),
            "{}",
            refused("ftp://host/x")
        );
        assert!(refused("not a url").contains("--snapshot-store"));
        assert!(refused("s3:///prefix").contains("bucket"));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", dir.path().display());
        let store = SnapshotStore::open(&url, 3, &[]).unwrap();
        assert!(dir.path().join("store").is_dir());
        assert_eq!(store.url(), url);
        let store = SnapshotStore::open("s3://bucket/a/b/", 2, &[]).unwrap();
        assert_eq!(store.prefix.as_ref(), "a/b");
    }

    #[test]
    fn two_stores_share_one_set_of_families_labelled_by_store() {
        let primary = Arc::new(SnapshotStore::open("s3://a/p", 2, &[]).unwrap());
        let mut secondary = SnapshotStore::open("s3://b/p", 2, &[]).unwrap();
        secondary.metrics = primary.metrics.for_store(SECONDARY);
        let secondary = Arc::new(secondary);
        let mut registry = Registry::default();
        register(&mut registry, &[primary.clone(), secondary.clone()]);
        secondary.metrics.count(false);
        secondary.metrics.count_refused("checksum");
        primary.metrics.count_proof(Some(1_700_000_000.0), 2.5);
        secondary.metrics.count_proof(None, 1.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"etcd_dr_snapshot_uploads_total{store="secondary",result="failed"} 1"#,
            r#"etcd_dr_snapshot_uploads_total{store="primary",result="failed"} 0"#,
            r#"etcd_dr_snapshot_downloads_refused_total{store="secondary",reason="checksum"} 1"#,
            r#"etcd_dr_snapshot_proof_total{store="primary",result="ok"} 1"#,
            r#"etcd_dr_snapshot_proof_total{store="secondary",result="failed"} 1"#,
            r#"etcd_dr_snapshot_last_proof_success{store="primary"} 1"#,
            r#"etcd_dr_snapshot_last_proof_success{store="secondary"} 0"#,
            r#"etcd_dr_snapshot_last_proven_timestamp_seconds{store="primary"} 1700000000.0"#,
            r#"etcd_dr_snapshot_last_proven_timestamp_seconds{store="secondary"} 0.0"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE etcd_dr_snapshot_uploads ").count(), 1);
    }

    #[test]
    fn only_snapshot_checksums_count() {
        assert!(is_checksum_name("snapshot-0000000000000001-rev5.db.sha256"));
        assert!(!is_checksum_name("snapshot-0000000000000001-rev5.db"));
        assert!(is_checksum_name(
            "snapshot-0000000000000001-rev5.db.zst.sha256"
        ));
        assert!(!is_checksum_name("audit.jsonl.sha256"));
    }
}
