//! What can go wrong outside the etcd exchange itself ([`crate::etcd::EtcdError`]): a repair
//! step ([`ActionError`]), a restore command ([`CommandError`]), the audit log
//! ([`AuditError`]), and the file operations under both ([`FileError`]). The text is what
//! the audit log records, so it reads as it always has; it names the cause, so no error
//! also returns it as `source()` (a report of the chain would print it twice).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::etcd::EtcdError;

/// A file operation that failed: "creating /snapshots/x.db.part: No space left on device".
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {error}", .path.display())]
pub struct FileError {
    /// What was being done: `creating`, `writing`, `fsync`, ...
    pub what: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl FileError {
    /// For `map_err`: `what` on `path` failed.
    pub fn on(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |error| FileError { what, path, error }
    }
}

/// Why a repair step (snapshot, compact, defrag, disarm, restore) failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("renaming {} to {}: {error}", .from.display(), .to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        error: std::io::Error,
    },
    /// Too short, or not whole 512-byte sectors plus a trailer.
    #[error(
        "{}: {size} bytes is not a database plus a SHA-256 trailer (truncated or not a snapshot)",
        .path.display()
    )]
    NotASnapshot { path: PathBuf, size: u64 },
    #[error(
        "{}: SHA-256 mismatch (content {content}, trailer {trailer}): the snapshot is corrupt",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        content: String,
        trailer: String,
    },
    #[error("snapshot did not finish within {0:?}")]
    SnapshotTimeout(Duration),
    #[error("{endpoint} not answering after defrag: {error}")]
    NotBackAfterDefrag { endpoint: String, error: EtcdError },
    #[error("verifying task failed: {0}")]
    Task(tokio::task::JoinError),
    /// A step that must not run on the cluster as it is now (e.g. a defrag while a member
    /// is unhealthy); the text says why.
    #[error("{0}")]
    NotSafe(String),
    /// A restore command failed; the members stopped for it were started again (each
    /// one's outcome in `started_again`) on their untouched data.
    #[error("{}", restore_failed(.step, .member, .error, .started_again))]
    Restore {
        step: &'static str,
        member: String,
        error: CommandError,
        started_again: Vec<String>,
    },
}

fn restore_failed(step: &str, member: &str, err: &CommandError, started: &[String]) -> String {
    let failed = format!("restore {step} of {member}: {err}");
    if started.is_empty() {
        failed
    } else {
        format!("{failed}; data untouched: {}", started.join(", "))
    }
}

/// Why one restore command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot run sh: {0}")]
    Spawn(std::io::Error),
    /// Its exit status and its stderr.
    #[error("{status}: {stderr}")]
    Exit {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Why the audit log could not be read or written. A step whose event cannot be written
/// does not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("encoding audit event: {0}")]
    Encode(serde_json::Error),
    #[error("bad audit line: {0}")]
    BadLine(serde_json::Error),
}
