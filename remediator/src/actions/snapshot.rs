//! Snapshot: streamed from etcd to `<name>.part`, fsynced, verified against its SHA-256
//! trailer, then renamed into place; the newest N are kept.
//!
//! etcd ends the stream with the SHA-256 of the database bytes before it; etcdctl's
//! `snapshot status` and `restore` check it by hashing all but the last 32 bytes. A bolt
//! database is a whole number of 512-byte sectors, so a file whose size modulo 512 is not
//! 32 has no trailer, and is truncated or not a snapshot.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::OptionFuture;
use ring::digest::{Context, SHA256, SHA256_OUTPUT_LEN};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::actions::retention::{self, Retention};
use crate::actions::store::{self, SnapshotStore, UploadOutcome};
use crate::error::{ActionError, FileError};
use crate::etcd::{EtcdAccess, EtcdError, local_revision};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".db";
/// A download in progress is `<name>.part` (so `.db.part`) until verified and renamed.
const PARTIAL_SUFFIX: &str = ".db.part";

/// A snapshot on disk whose trailer verified.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// The cluster revision just before the download started (the snapshot holds at least it).
    pub revision: i64,
    pub sha256: String,
    pub duration_seconds: f64,
    /// The keys at `revision`, as the member counted them when the snapshot was taken
    /// (kept beside it as `<name>.status`); `None` when it could not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// Its copy in `--snapshot-store`, when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadOutcome>,
    /// Its copy in `--snapshot-store-secondary`, when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_upload: Option<UploadOutcome>,
}

/// What the member said when the snapshot was taken: the revision the stream started at
/// and how many keys there were at it. A restore of the snapshot must show the same keys
/// at that revision (the proof checks it). Kept beside the snapshot as `<name>.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedStatus {
    pub revision: i64,
    pub keys: i64,
}

/// The file that holds a snapshot's [`RecordedStatus`].
pub fn status_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(crate::actions::store::STATUS_SUFFIX);
    PathBuf::from(name)
}

/// Where snapshots go, how many stay and how long one may take: built once from the flags,
/// the same for the scheduled, the remediation's and the one-off snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    pub dir: PathBuf,
    /// Which snapshots stay in the dir (a remediation's stay as long as the audit log
    /// names them).
    pub retention: Retention,
    /// Deadline for one download.
    pub timeout: Duration,
    /// Where every verified snapshot is copied (`--snapshot-store`).
    pub store: Option<Arc<SnapshotStore>>,
    /// A second store that receives every snapshot too (`--snapshot-store-secondary`),
    /// with its own retention and proof; its failures never fail the first's.
    pub secondary: Option<Arc<SnapshotStore>>,
    /// Upload before `take` returns (`--snapshot-once`, which exits after); otherwise the
    /// caller uploads in the background ([`crate::remediation::Remediator::upload_later`]),
    /// so a slow store never holds up a remediation.
    pub upload_inline: bool,
}

impl SnapshotPolicy {
    /// Streams a snapshot into the dir, verifies it and keeps the newest `retain`; with
    /// `upload_inline`, also copies it to the store (a failed upload is reported in
    /// `upload`, the local snapshot stands).
    pub async fn take(&self, access: &EtcdAccess) -> Result<SnapshotInfo, ActionError> {
        let (dir, timeout) = (self.dir.as_path(), self.timeout);
        let started = std::time::Instant::now();
        let mut client = access.live_client(timeout).await?;
        let revision = local_revision(&mut client, access.timeout).await?;
        // The keys at that revision, on the same member the snapshot comes from: what a
        // restore of it must show at that revision, whatever is written meanwhile.
        let keys = match count_keys(&mut client, revision, access.timeout).await {
            Ok(keys) => Some(keys),
            Err(err) => {
                tracing::warn!(revision, error = %err, "cannot count the keys at the snapshot's revision; the proof will compare the revision only");
                None
            }
        };
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let name = format!("{PREFIX}{millis:016}-rev{revision}{SUFFIX}");
        let final_path = dir.join(&name);
        let part = Partial::new(dir.join(format!("{name}.part")));
        // A one-off snapshot goes to the first store while it streams in (the two take
        // about the time of the slower); the service's are uploaded after, in the background.
        let (feed, fed_upload) = match self.store.as_ref().filter(|_| self.upload_inline) {
            Some(store) => {
                let (feed, fed) = store::feed();
                (Some(feed), Some(store.upload_fed(&final_path, fed)))
            }
            None => (None, None),
        };
        let place = async {
            // Owned here: a failure below drops it, which tells the upload no snapshot came.
            let mut feed = feed;
            let part_path = part.path.as_path();
            let download = async {
                let mut stream = client
                    .snapshot()
                    .await
                    .map_err(|err| EtcdError::request("starting the snapshot stream", err))?;
                let file = tokio::fs::File::create(part_path)
                    .await
                    .map_err(FileError::on("creating", part_path))?;
                let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
                // Hashed while it streams, so the file is not read a second time.
                let mut check = TrailerCheck::new();
                while let Some(message) = stream
                    .message()
                    .await
                    .map_err(|err| EtcdError::request("snapshot stream broke", err))?
                {
                    check.update(message.blob());
                    file.write_all(message.blob())
                        .await
                        .map_err(FileError::on("writing", part_path))?;
                    if let Some(feed) = feed.as_mut() {
                        feed.send(message.blob()).await;
                    }
                }
                file.flush()
                    .await
                    .map_err(FileError::on("writing", part_path))?;
                file.get_ref()
                    .sync_all()
                    .await
                    .map_err(FileError::on("fsync", part_path))?;
                check.finish(part_path)
            };
            // Not an etcd deadline alone: the file is written and hashed in the same time.
            let verified = match tokio::time::timeout(timeout, download).await {
                Ok(result) => result,
                Err(_) => Err(ActionError::SnapshotTimeout(timeout)),
            };
            let (size_bytes, sha256) = verified?;
            if let Some(keys) = keys {
                let status =
                    serde_json::to_vec(&RecordedStatus { revision, keys }).map_err(|err| {
                        FileError {
                            what: "encoding the status of",
                            path: final_path.clone(),
                            error: std::io::Error::other(err),
                        }
                    })?;
                let path = status_path(&final_path);
                std::fs::write(&path, status).map_err(FileError::on("writing", &path))?;
            }
            part.rename_to(&final_path)?;
            sync_dir(dir)?;
            if let Some(feed) = feed.take() {
                feed.in_place();
            }
            Ok::<_, ActionError>((size_bytes, sha256))
        };
        let (placed, fed_upload) = tokio::join!(place, OptionFuture::from(fed_upload));
        let (size_bytes, sha256) = placed?;
        prune(dir, &self.retention, SystemTime::now())?;
        let upload = match fed_upload {
            Some(Ok(uploaded)) => Some(UploadOutcome::Uploaded(uploaded)),
            Some(Err(err)) => Some(UploadOutcome::Failed(err.to_string())),
            None => self.upload_to(self.store.as_ref(), &final_path).await,
        };
        let secondary_upload = self.upload_to(self.secondary.as_ref(), &final_path).await;
        Ok(SnapshotInfo {
            path: final_path,
            size_bytes,
            revision,
            sha256,
            duration_seconds: started.elapsed().as_secs_f64(),
            keys,
            upload,
            secondary_upload,
        })
    }

    /// With `upload_inline`, the upload to `store` done; otherwise it is left pending.
    async fn upload_to(
        &self,
        store: Option<&Arc<SnapshotStore>>,
        path: &Path,
    ) -> Option<UploadOutcome> {
        let store = store?;
        Some(if self.upload_inline {
            match store.upload(path).await {
                Ok(uploaded) => UploadOutcome::Uploaded(uploaded),
                Err(err) => UploadOutcome::Failed(err.to_string()),
            }
        } else {
            UploadOutcome::Pending(format!("to {}", store.url()))
        })
    }

    /// The stores every snapshot goes to, the first one first.
    pub fn stores(&self) -> Vec<Arc<SnapshotStore>> {
        self.store.iter().chain(&self.secondary).cloned().collect()
    }
}

/// The keys the member holds at `revision` (a serializable count, on the member asked).
async fn count_keys(
    client: &mut etcd_client::Client,
    revision: i64,
    timeout: Duration,
) -> Result<i64, EtcdError> {
    let options = etcd_client::GetOptions::new()
        .with_all_keys()
        .with_count_only()
        .with_serializable()
        .with_revision(revision);
    let response = crate::etcd::bounded(
        "counting the keys",
        timeout,
        client.get(Vec::<u8>::new(), Some(options)),
    )
    .await?;
    Ok(response.count())
}

/// A download in progress. A partial or corrupt file is never used, so it is removed
/// unless renamed into place: after a failure, a timeout, or a shutdown that drops the
/// download half-way, nothing is left for someone to try.
pub(crate) struct Partial {
    path: PathBuf,
    renamed: bool,
}

impl Partial {
    pub(crate) fn new(path: PathBuf) -> Self {
        Partial {
            path,
            renamed: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn rename_to(mut self, to: &Path) -> Result<(), ActionError> {
        std::fs::rename(&self.path, to).map_err(|error| ActionError::Rename {
            from: self.path.clone(),
            to: to.to_path_buf(),
            error,
        })?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The trailer check over a stream: everything but the last 32 bytes is hashed, the last
/// 32 are held back to compare at the end.
pub(crate) struct TrailerCheck {
    context: Context,
    held: Vec<u8>,
    size: u64,
}

impl TrailerCheck {
    pub(crate) fn new() -> Self {
        TrailerCheck {
            context: Context::new(&SHA256),
            held: Vec::with_capacity(2 * SHA256_OUTPUT_LEN),
            size: 0,
        }
    }

    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        if chunk.len() >= SHA256_OUTPUT_LEN {
            let split = chunk.len() - SHA256_OUTPUT_LEN;
            self.context.update(&self.held);
            self.context.update(&chunk[..split]);
            self.held.clear();
            self.held.extend_from_slice(&chunk[split..]);
        } else {
            self.held.extend_from_slice(chunk);
            let extra = self.held.len().saturating_sub(SHA256_OUTPUT_LEN);
            self.context.update(&self.held[..extra]);
            self.held.drain(..extra);
        }
    }

    pub(crate) fn finish(self, path: &Path) -> Result<(u64, String), ActionError> {
        check_shape(path, self.size)?;
        let digest = self.context.finish();
        compare(path, digest.as_ref(), &self.held)?;
        Ok((self.size, hex(&self.held)))
    }
}

fn check_shape(path: &Path, size: u64) -> Result<(), ActionError> {
    let trailer_len = SHA256_OUTPUT_LEN as u64;
    if size < trailer_len + 512 || size % 512 != trailer_len {
        return Err(ActionError::NotASnapshot {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(())
}

fn compare(path: &Path, digest: &[u8], trailer: &[u8]) -> Result<(), ActionError> {
    if digest != trailer {
        return Err(ActionError::Corrupt {
            path: path.to_path_buf(),
            content: hex(digest),
            trailer: hex(trailer),
        });
    }
    Ok(())
}

/// Checks a snapshot file's SHA-256 trailer; returns (size, hex digest) when it matches.
pub fn verify_file(path: &Path) -> Result<(u64, String), ActionError> {
    let mut file = std::fs::File::open(path).map_err(FileError::on("opening", path))?;
    let size = file
        .metadata()
        .map_err(FileError::on("reading", path))?
        .len();
    check_shape(path, size)?;
    let mut remaining = size - SHA256_OUTPUT_LEN as u64;
    let mut context = Context::new(&SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    while remaining > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let chunk = &mut buffer[..want];
        file.read_exact(chunk)
            .map_err(FileError::on("reading", path))?;
        context.update(chunk);
        remaining -= want as u64;
    }
    let mut trailer = [0u8; SHA256_OUTPUT_LEN];
    file.read_exact(&mut trailer)
        .map_err(FileError::on("reading", path))?;
    compare(path, context.finish().as_ref(), &trailer)?;
    Ok((size, hex(&trailer)))
}

/// Verified snapshots in `dir`, newest first (names sort by time).
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut found = named(dir, SUFFIX)?;
    found.reverse();
    Ok(found)
}

/// Partial snapshots a killed process left half-way (its [`Partial`] never dropped),
/// oldest first.
pub fn partials(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    named(dir, PARTIAL_SUFFIX)
}

/// A finished snapshot's file name (`snapshot-<millis>-rev<revision>.db`).
pub fn is_snapshot_name(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

/// The snapshot files in `dir` whose names end in `suffix`, oldest first.
fn named(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, FileError> {
    let entries = std::fs::read_dir(dir).map_err(FileError::on("listing", dir))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Removes the snapshots `retention` does not keep at `now` (a remediation's stay while
/// the audit log in `dir` names them), each with its status file.
fn prune(dir: &Path, retention: &Retention, now: SystemTime) -> Result<(), FileError> {
    let found = list(dir)?;
    let names: Vec<String> = found
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let protected = retention::protected_by_audit(dir);
    for (old, keep) in found.iter().zip(retention.keep(&names, now, &protected)) {
        if keep {
            continue;
        }
        std::fs::remove_file(old).map_err(FileError::on("removing", old))?;
        let status = status_path(old);
        match std::fs::remove_file(&status) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(FileError {
                    what: "removing",
                    path: status,
                    error,
                });
            }
        }
        tracing::info!(path = %old.display(), "removed old snapshot (retention)");
    }
    Ok(())
}

/// Makes a rename durable.
fn sync_dir(dir: &Path) -> Result<(), FileError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::on("fsync", dir))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `data` plus its SHA-256 trailer, the shape etcd streams (tests and tools).
    fn write_with_trailer(path: &Path, data: &[u8]) -> std::io::Result<()> {
        let digest = ring::digest::digest(&SHA256, data);
        use std::io::Write;
        let mut file = std::fs::File::create(path)?;
        file.write_all(data)?;
        file.write_all(digest.as_ref())?;
        file.sync_all()
    }

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("snapshot-1.db");
        let data: Vec<u8> = (0..4096u32 * 3).map(|i| (i % 251) as u8).collect();
        write_with_trailer(&path, &data).unwrap();
        path
    }

    #[test]
    fn a_good_trailer_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let (size, digest) = verify_file(&path).unwrap();
        assert_eq!(size, 4096 * 3 + 32);
        assert_eq!(digest.len(), 64);
    }

    #[test]
    fn a_truncated_snapshot_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = verify_file(&path).unwrap_err();
        assert!(matches!(err, ActionError::NotASnapshot { .. }), "{err:?}");
        assert!(err.to_string().contains("truncated"));
        // Cut at a sector boundary plus 32: the shape is right, the hash is not.
        std::fs::write(&path, &bytes[..4096 * 2 + 32]).unwrap();
        let err = verify_file(&path).unwrap_err();
        assert!(matches!(err, ActionError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("mismatch"));
    }

    #[test]
    fn the_streaming_check_agrees_with_the_file_check_for_any_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for chunk in [1, 7, 31, 32, 33, 4096, 1 << 20] {
            let mut check = TrailerCheck::new();
            bytes.chunks(chunk).for_each(|c| check.update(c));
            assert_eq!(check.finish(&path).unwrap(), verify_file(&path).unwrap());
        }
        let mut flipped = bytes.clone();
        flipped[100] ^= 0x80;
        let mut check = TrailerCheck::new();
        flipped.chunks(1000).for_each(|c| check.update(c));
        assert!(
            check
                .finish(&path)
                .unwrap_err()
                .to_string()
                .contains("mismatch")
        );
        let mut check = TrailerCheck::new();
        check.update(&bytes[..bytes.len() - 1]);
        assert!(
            check
                .finish(&path)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }

    #[test]
    fn a_flipped_byte_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1234] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            verify_file(&path)
                .unwrap_err()
                .to_string()
                .contains("mismatch")
        );
    }

    #[test]
    fn a_partial_file_is_removed_unless_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let abandoned = dir.path().join("a.db.part");
        std::fs::write(&abandoned, b"half").unwrap();
        drop(Partial::new(abandoned.clone()));
        assert!(!abandoned.exists(), "an abandoned download was left behind");
        let done = dir.path().join("b.db.part");
        std::fs::write(&done, b"whole").unwrap();
        let kept = dir.path().join("b.db");
        Partial::new(done.clone()).rename_to(&kept).unwrap();
        assert!(!done.exists());
        assert_eq!(std::fs::read(&kept).unwrap(), b"whole");
    }

    #[test]
    fn retention_by_age_removes_each_snapshot_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000 * 86_400);
        let hour = 3_600_000u64;
        let at = |hours_ago: u64| {
            let millis = 1_000 * 86_400_000 - hours_ago * hour;
            dir.path().join(format!("snapshot-{millis:016}-rev1.db"))
        };
        for hours_ago in [0, 5, 30, 50] {
            std::fs::write(at(hours_ago), b"x").unwrap();
            std::fs::write(status_path(&at(hours_ago)), b"{}").unwrap();
        }
        let retention = Retention {
            count: 1,
            within: Duration::from_secs(24 * 3600),
            daily: 0,
            weekly: 0,
        };
        prune(dir.path(), &retention, now).unwrap();
        assert_eq!(list(dir.path()).unwrap(), [at(0), at(5)]);
        assert!(status_path(&at(5)).exists());
        assert!(
            !status_path(&at(30)).exists(),
            "the status goes with its snapshot"
        );
        assert!(!status_path(&at(50)).exists());
    }

    #[test]
    fn retention_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4 {
            std::fs::write(dir.path().join(format!("snapshot-{i:016}-rev1.db")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("audit.jsonl"), b"").unwrap();
        prune(dir.path(), &Retention::count(2), SystemTime::now()).unwrap();
        let left: Vec<String> = list(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [
                "snapshot-0000000000000003-rev1.db",
                "snapshot-0000000000000002-rev1.db"
            ]
        );
        assert!(dir.path().join("audit.jsonl").exists());
    }
}
