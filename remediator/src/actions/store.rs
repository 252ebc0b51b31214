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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use reqwest::Url;
use ring::digest::{Context, SHA256};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::actions::snapshot::{self, Partial, TrailerCheck};
use crate::error::{ActionError, FileError};
use crate::metrics::ResultLabel;

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
    /// A problem with this snapshot's content (the previous one may still be good), as
    /// opposed to the store itself failing (which the previous one would meet too).
    fn is_this_snapshot(&self) -> bool {
        match self {
            StoreError::BadChecksum { .. }
            | StoreError::ChecksumMismatch { .. }
            | StoreError::NotASnapshot { .. } => true,
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

/// The store's metrics, registered with the service's (see [`SnapshotStore::register`]).
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// Upload attempts by result (`ok`, `failed`).
    pub uploads: Family<ResultLabel, Counter>,
    /// When the newest snapshot in the store was uploaded (unix seconds); 0 until known.
    pub last_upload: Gauge<f64, AtomicU64>,
}

impl StoreMetrics {
    fn count(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.uploads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Upload attempts so far with `result` (`ok` or `failed`).
    pub fn attempts(&self, result: &str) -> u64 {
        self.uploads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .get()
    }
}

/// One snapshot uploaded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Uploaded {
    /// The data object's key in the store.
    pub location: String,
    /// SHA-256 of the whole object, as its checksum object holds it.
    pub sha256: String,
    pub bytes: u64,
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
    pub name: String,
    pub bytes: u64,
}

/// A snapshot downloaded and verified (its SHA-256 and its etcd trailer).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fetched {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub path: PathBuf,
}

/// The object store snapshots are copied to.
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// As given, for messages (a URL of a bucket carries no secret).
    url: String,
    /// The newest this many stay in the store.
    pub retain: usize,
    pub retry: UploadRetry,
    pub metrics: StoreMetrics,
    // One upload (with its catch-up and retention) at a time: a scheduled snapshot's and a
    // remediation's must not prune or re-send under each other.
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("url", &self.url)
            .field("retain", &self.retain)
            .field("retry", &self.retry)
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
            retain,
            retry: UploadRetry::default(),
            metrics: StoreMetrics::default(),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers the upload metrics and, inside a runtime, sets the last-upload time from
    /// the store's newest snapshot, so a restart does not read as an RPO breach.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "etcd_dr_snapshot_uploads",
            "Snapshot upload attempts to --snapshot-store, by result (ok, failed)",
            self.metrics.uploads.clone(),
        );
        registry.register(
            "etcd_dr_snapshot_last_upload_timestamp_seconds",
            "When the newest snapshot in --snapshot-store was uploaded (unix seconds; 0 until known)",
            self.metrics.last_upload.clone(),
        );
        for result in ["ok", "failed"] {
            let _ = self.metrics.uploads.get_or_create(&ResultLabel {
                result: result.to_owned(),
            });
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            runtime.spawn(async move {
                if let Err(err) = store.refresh_last_upload().await {
                    tracing::warn!(store = %store.url, error = %err, "cannot read the store's newest snapshot");
                }
            });
        }
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
            if seconds > self.metrics.last_upload.get() {
                self.metrics.last_upload.set(seconds);
            }
        }
        Ok(())
    }

    /// Uploads the verified snapshot at `path` (retried, counted), then any older local
    /// snapshot the store lacks (an earlier upload that failed for good), then deletes
    /// the store's snapshots beyond `retain`. Only the first decides the result.
    pub async fn upload(&self, path: &Path) -> Result<Uploaded, StoreError> {
        let _busy = self.busy.lock().await;
        let mut wait = self.retry.first_wait;
        let mut attempt = 1;
        let uploaded = loop {
            let what = format!("uploading {} to {}", path.display(), self.url);
            let tried = match tokio::time::timeout(self.retry.attempt_timeout, self.put(path)).await
            {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(what, self.retry.attempt_timeout)),
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
        if let Some(dir) = path.parent() {
            self.catch_up(dir, path).await;
        }
        if let Err(err) = self.prune().await {
            tracing::warn!(store = %self.url, error = %err, "store retention failed; will try after the next upload");
        }
        Ok(uploaded)
    }

    fn mark_uploaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.metrics.last_upload.set(now);
    }

    /// Sends the local snapshots the store lacks (newest first: the RPO gains most), once
    /// each; a failure is counted and left for the next upload.
    async fn catch_up(&self, dir: &Path, just_sent: &Path) {
        let (Ok(local), Ok(stored)) = (snapshot::list(dir), self.list().await) else {
            return;
        };
        let retained: Vec<_> = local.into_iter().take(self.retain).collect();
        for path in retained {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if path == just_sent || stored.iter().any(|s| s.name == name) {
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

    /// One attempt: the data object streamed as a multipart upload, hashed on the way,
    /// then its checksum object.
    async fn put(&self, path: &Path) -> Result<Uploaded, StoreError> {
        let started = Instant::now();
        let name = file_name(path)?;
        let location = self.prefix.child(name.as_str());
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(FileError::on("opening", path))?;
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(request("starting the upload of", &location))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut context = Context::new(&SHA256);
        let mut buffer = vec![0u8; READ_CHUNK];
        let mut bytes = 0u64;
        let streamed: Result<(), StoreError> = async {
            loop {
                let read = file
                    .read(&mut buffer)
                    .await
                    .map_err(FileError::on("reading", path))?;
                if read == 0 {
                    return Ok(());
                }
                // Waits for parts in flight before buffering more: memory stays bounded.
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(request("uploading", &location))?;
                context.update(&buffer[..read]);
                writer.write(&buffer[..read]);
                bytes += read as u64;
            }
        }
        .await;
        if let Err(err) = streamed {
            // Parts already sent would otherwise linger, unseen but billed.
            let _ = writer.abort().await;
            return Err(err);
        }
        writer
            .finish()
            .await
            .map_err(request("completing the upload of", &location))?;
        let sha256 = hex(context.finish().as_ref());
        // Only now: a data object without its checksum is never taken for a snapshot.
        let checksum = checksum_location(&location);
        self.store
            .put(&checksum, PutPayload::from(format!("{sha256}  {name}\n")))
            .await
            .map_err(request("writing", &checksum))?;
        Ok(Uploaded {
            location: location.to_string(),
            sha256,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            attempts: 1,
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
                let name = meta.location.filename()?;
                let complete = snapshot::is_snapshot_name(name)
                    && names.contains(&format!("{name}{CHECKSUM_SUFFIX}").as_str());
                complete.then(|| Stored {
                    name: name.to_owned(),
                    bytes: meta.size,
                })
            })
            .collect();
        found.sort_by(|a, b| b.name.cmp(&a.name));
        Ok(found)
    }

    /// Deletes the snapshots beyond the newest `retain`, checksum first (so one half
    /// deleted is no longer a snapshot), and data objects left without a checksum older
    /// than the newest snapshot (an upload cut short between the two objects).
    pub async fn prune(&self) -> Result<(), StoreError> {
        let stored = self.list().await?;
        let newest = stored.first().map(|s| s.name.clone());
        for old in stored.iter().skip(self.retain) {
            let location = self.prefix.child(old.name.as_str());
            self.delete(&checksum_location(&location)).await?;
            self.delete(&location).await?;
            tracing::info!(location = %location, "removed old snapshot from the store (retention)");
        }
        let Some(newest) = newest else {
            return Ok(());
        };
        for meta in self.list_objects().await? {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let orphan = snapshot::is_snapshot_name(name)
                && name < newest.as_str()
                && !stored.iter().any(|s| s.name == name);
            if orphan {
                self.delete(&meta.location).await?;
                tracing::info!(location = %meta.location, "removed a data object without its checksum");
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
            match self.download(&stored.name, dir).await {
                Ok(fetched) => {
                    if !refused.is_empty() {
                        tracing::warn!(name = %fetched.name, refused = ?refused, "newer snapshots refused; using an older one");
                    }
                    return Ok(fetched);
                }
                Err(err) if err.is_this_snapshot() => {
                    tracing::warn!(name = %stored.name, error = %err, "snapshot in the store refused");
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

    /// Downloads `name` to `dir/<name>.part`, streamed and hashed, and renames it into
    /// place only when both checks pass.
    async fn download(&self, name: &str, dir: &Path) -> Result<Fetched, StoreError> {
        let location = self.prefix.child(name);
        let checksum = checksum_location(&location);
        let text = self
            .store
            .get(&checksum)
            .await
            .map_err(request("reading", &checksum))?
            .bytes()
            .await
            .map_err(request("reading", &checksum))?;
        let stored = parse_checksum(&text).ok_or_else(|| StoreError::BadChecksum {
            location: checksum.to_string(),
        })?;
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
        let mut trailer = TrailerCheck::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(request("downloading", &location))?;
            context.update(&chunk);
            trailer.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(FileError::on("writing", &part_path))?;
        }
        file.flush()
            .await
            .map_err(FileError::on("writing", &part_path))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(FileError::on("fsync", &part_path))?;
        let actual = hex(context.finish().as_ref());
        if actual != stored {
            return Err(StoreError::ChecksumMismatch {
                name: name.to_owned(),
                stored,
                actual,
            });
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
            sha256: actual,
            bytes,
            path: final_path,
        })
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

fn checksum_location(data: &ObjectPath) -> ObjectPath {
    ObjectPath::from(format!("{data}{CHECKSUM_SUFFIX}"))
}

fn is_checksum_name(name: &str) -> bool {
    name.strip_suffix(CHECKSUM_SUFFIX)
        .is_some_and(snapshot::is_snapshot_name)
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
    fn only_snapshot_checksums_count() {
        assert!(is_checksum_name("snapshot-0000000000000001-rev5.db.sha256"));
        assert!(!is_checksum_name("snapshot-0000000000000001-rev5.db"));
        assert!(!is_checksum_name("audit.jsonl.sha256"));
    }
}
