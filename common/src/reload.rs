//! Files read again when they change (a rotated token, a renewed certificate), so a
//! service never needs a restart for them.
//!
//! The check happens where the value is used, at most once per `min_interval`: a `stat`
//! of each file (following symlinks, so the `..data` swap Kubernetes does for a Secret
//! volume is seen), and only when a file's (dev, inode, mtime, length) moved, a read and a
//! comparison of the contents. Checking at use rather than from a polling task means no
//! task to start, stop or drain, no work while nothing uses the value, and a change is
//! applied by the very use that needs it. A file that is unreadable, half-written or
//! refused by `load` keeps the last good value; the failure is logged and counted once per
//! distinct state, and retried when the files move again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Turns the files' contents (in the order of their paths) into the value, or says why not.
type Load<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync>;

/// Labels of a service's reload counter: which file set, and `ok` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub file: String,
    pub result: String,
}

/// One service's reload counter, shared by its [`Reloading`] values.
pub type ReloadCounter = Family<ReloadLabels, Counter>;

/// A value built from files, rebuilt when they change.
pub struct Reloading<T> {
    what: String,
    paths: Vec<PathBuf>,
    load: Load<T>,
    min_interval: Duration,
    counter: OnceLock<(ReloadCounter, String)>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    /// The stamps and contents `current` was built from.
    stamps: Vec<Stamp>,
    contents: Vec<Vec<u8>>,
    checked: Instant,
    /// The last failure, so a state that stays broken is reported once.
    failure: Option<Failure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The files could not be listed or read.
    Io(String),
    /// They were read at these stamps and refused.
    Refused(Vec<Stamp>),
}

impl<T> std::fmt::Debug for Reloading<T> {
    // Never the value: it may be a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

impl<T> Reloading<T> {
    /// Reads the files and builds the first value; an error here is the service's
    /// start-up refusal. `what` names the files in logs and in the counter's `file` label.
    pub fn new(
        what: impl Into<String>,
        paths: Vec<PathBuf>,
        min_interval: Duration,
        load: impl Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = stamp_all(&paths)?;
        let contents = read_all(&paths)?;
        let current = Arc::new(load(&contents)?);
        Ok(Reloading {
            what: what.into(),
            paths,
            load: Box::new(load),
            min_interval,
            counter: OnceLock::new(),
            state: Mutex::new(State {
                current,
                stamps,
                contents,
                checked: Instant::now(),
                failure: None,
            }),
        })
    }

    /// Counts reloads into `counter` (both results shown from 0). Once; later calls are
    /// ignored.
    pub fn count_into(&self, counter: &ReloadCounter) {
        for result in ["ok", "failed"] {
            let _ = counter.get_or_create(&self.labels(result));
        }
        let _ = self.counter.set((counter.clone(), self.what.clone()));
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The value, rebuilt first if the files changed since the last check (checked at most
    /// once per `min_interval`). The files are small (a token, PEM certificates): reading
    /// them under the lock, on the caller's thread, costs less than handing it off.
    pub fn current(&self) -> Arc<T> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.checked.elapsed() < self.min_interval {
            return state.current.clone();
        }
        state.checked = Instant::now();
        self.check(&mut state);
        state.current.clone()
    }

    fn check(&self, state: &mut State<T>) {
        // Stamps before contents: a change between the two shows as a new stamp next time.
        let stamps = match stamp_all(&self.paths) {
            Ok(stamps) => stamps,
            Err(err) => return self.failed(state, Failure::Io(err.clone()), &err),
        };
        if stamps == state.stamps || state.failure == Some(Failure::Refused(stamps.clone())) {
            return;
        }
        let contents = match read_all(&self.paths) {
            Ok(contents) => contents,
            Err(err) => return self.failed(state, Failure::Io(err.clone()), &err),
        };
        if contents == state.contents {
            // Touched or re-linked, same material: nothing to rebuild.
            state.stamps = stamps;
            state.failure = None;
            return;
        }
        match (self.load)(&contents) {
            Ok(value) => {
                state.current = Arc::new(value);
                state.stamps = stamps;
                state.contents = contents;
                state.failure = None;
                tracing::info!(file = %self.what, "reloaded");
                self.count("ok");
            }
            Err(err) => self.failed(state, Failure::Refused(stamps), &err),
        }
    }

    fn failed(&self, state: &mut State<T>, failure: Failure, reason: &str) {
        if state.failure.as_ref() == Some(&failure) {
            return;
        }
        state.failure = Some(failure);
        tracing::warn!(file = %self.what, reason, "changed files not usable; keeping the last good ones");
        self.count("failed");
    }

    fn count(&self, result: &str) {
        if let Some((counter, _)) = self.counter.get() {
            counter.get_or_create(&self.labels(result)).inc();
        }
    }

    fn labels(&self, result: &str) -> ReloadLabels {
        ReloadLabels {
            file: self.what.clone(),
            result: result.to_owned(),
        }
    }
}

#[cfg(unix)]
fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        len: meta.len(),
    })
}

fn stamp_all(paths: &[PathBuf]) -> Result<Vec<Stamp>, String> {
    paths
        .iter()
        .map(|path| stamp(path).map_err(|err| format!("{}: {err}", path.display())))
        .collect()
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|err| format!("{}: cannot read: {err}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(contents: &[Vec<u8>]) -> Result<String, String> {
        let text = String::from_utf8_lossy(&contents[0]).trim().to_owned();
        if text.is_empty() {
            return Err("empty".into());
        }
        Ok(text)
    }

    fn counted(r: &Reloading<String>) -> ReloadCounter {
        let counter = ReloadCounter::default();
        r.count_into(&counter);
        counter
    }

    fn get(counter: &ReloadCounter, result: &str) -> u64 {
        counter
            .get_or_create(&ReloadLabels {
                file: "token".into(),
                result: result.into(),
            })
            .get()
    }

    #[test]
    fn a_change_is_seen_at_the_next_use_and_a_bad_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let r = Reloading::new("token", vec![path.clone()], Duration::ZERO, token).unwrap();
        let counter = counted(&r);
        assert_eq!(*r.current(), "one");

        std::fs::write(&path, "two").unwrap();
        assert_eq!(*r.current(), "two");
        assert_eq!(get(&counter, "ok"), 1);

        // Empty (mid-write) or gone: the last good value stays, counted once per state.
        std::fs::write(&path, "").unwrap();
        assert_eq!(*r.current(), "two");
        assert_eq!(*r.current(), "two");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*r.current(), "two");
        assert_eq!(*r.current(), "two");
        assert_eq!(get(&counter, "failed"), 2);

        std::fs::write(&path, "three").unwrap();
        assert_eq!(*r.current(), "three");
        assert_eq!(get(&counter, "ok"), 2);
    }

    #[test]
    fn a_symlink_swap_as_kubernetes_does_it_is_seen() {
        // <dir>/token -> ..data/token, ..data -> ..v1 then ..v2.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (version, text) in [("..v1", "old"), ("..v2", "new")] {
            std::fs::create_dir(d.join(version)).unwrap();
            std::fs::write(d.join(version).join("token"), text).unwrap();
        }
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", d.join("token")).unwrap();
        let r = Reloading::new("token", vec![d.join("token")], Duration::ZERO, token).unwrap();
        assert_eq!(*r.current(), "old");
        std::os::unix::fs::symlink("..v2", d.join("..data.tmp")).unwrap();
        std::fs::rename(d.join("..data.tmp"), d.join("..data")).unwrap();
        assert_eq!(*r.current(), "new");
    }

    #[test]
    fn within_the_interval_the_files_are_not_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one").unwrap();
        let r = Reloading::new(
            "token",
            vec![path.clone()],
            Duration::from_secs(3600),
            token,
        )
        .unwrap();
        std::fs::write(&path, "two").unwrap();
        assert_eq!(*r.current(), "one");
    }

    #[test]
    fn the_first_read_must_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let err = Reloading::new("token", vec![path.clone()], Duration::ZERO, token).unwrap_err();
        assert!(err.contains("token"), "{err}");
        std::fs::write(&path, " \n").unwrap();
        let err = Reloading::new("token", vec![path], Duration::ZERO, token).unwrap_err();
        assert_eq!(err, "empty");
    }
}
