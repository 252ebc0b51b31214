//! The append-only audit log: one JSON line per event in `<snapshot dir>/audit.jsonl`,
//! fsynced before the step it announces runs, and kept in memory for `GET /actions`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{AuditError, FileError};

pub const FILE_NAME: &str = "audit.jsonl";

/// How many events `GET /actions` can show; the file keeps everything.
const MEMORY_LIMIT: usize = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Ok,
    Failed,
    Skipped,
    Info,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: String,
    pub action_id: String,
    /// `remediation`, `scheduled_snapshot` or `webhook`.
    pub kind: String,
    pub step: String,
    pub phase: Phase,
    pub detail: serde_json::Value,
    pub dry_run: bool,
}

pub struct Audit {
    path: PathBuf,
    // One lock for file and memory keeps their order the same.
    inner: Mutex<(File, VecDeque<Event>)>,
}

impl Audit {
    /// Opens (creating) the log in `dir` and loads its recent events.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join(FILE_NAME);
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(|line| serde_json::from_str::<Event>(line).ok())
                .collect::<Vec<_>>(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                let what = "reading";
                return Err(FileError { what, path, error }.into());
            }
        };
        let skip = existing.len().saturating_sub(MEMORY_LIMIT);
        let events = existing.into_iter().skip(skip).collect();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(FileError::on("opening", &path))?;
        // A process killed mid-write leaves a line without its end; the next event must not
        // be glued to it (that line is then unreadable and skipped, not the new one).
        if torn_last_line(&path) {
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(FileError::on("writing", &path))?;
        }
        Ok(Audit {
            path,
            inner: Mutex::new((file, events)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and fsyncs one event. An error means the step must not run: an action that
    /// cannot be recorded is not taken.
    pub fn record(
        &self,
        action_id: &str,
        kind: &str,
        step: &str,
        phase: Phase,
        detail: serde_json::Value,
        dry_run: bool,
    ) -> Result<(), AuditError> {
        let event = Event {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            action_id: action_id.to_owned(),
            kind: kind.to_owned(),
            step: step.to_owned(),
            phase,
            detail,
            dry_run,
        };
        let mut line = serde_json::to_string(&event).map_err(AuditError::Encode)?;
        line.push('\n');
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner
            .0
            .write_all(line.as_bytes())
            .and_then(|()| inner.0.sync_data())
            .map_err(FileError::on("writing", &self.path))?;
        tracing::info!(action_id, kind, step, phase = ?phase, detail = %event.detail, "audit");
        inner.1.push_back(event);
        if inner.1.len() > MEMORY_LIMIT {
            inner.1.pop_front();
        }
        Ok(())
    }

    /// Events grouped by action, newest action first, each action's events in order.
    pub fn actions(&self, limit: usize) -> Vec<serde_json::Value> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // One pass: the actions in the order they began, each with its events in order
        // (most actions are one-event skips, so thousands of them is the usual case).
        let mut order: Vec<&str> = Vec::new();
        let mut by_action: HashMap<&str, Vec<&Event>> = HashMap::new();
        for event in &inner.1 {
            let events = by_action.entry(&event.action_id).or_default();
            if events.is_empty() {
                order.push(&event.action_id);
            }
            events.push(event);
        }
        order
            .iter()
            .rev()
            .take(limit)
            .map(|id| {
                let events = by_action.remove(id).unwrap_or_default();
                let first = events.first();
                let last = events.last();
                let diagnosis = events
                    .iter()
                    .find(|e| e.step == "diagnosis")
                    .and_then(|e| e.detail.get("diagnosis"))
                    .cloned();
                serde_json::json!({
                    "action_id": id,
                    "kind": first.map(|e| e.kind.as_str()),
                    "started": first.map(|e| e.ts.as_str()),
                    "last_step": last.map(|e| e.step.as_str()),
                    "last_phase": last.map(|e| e.phase),
                    "dry_run": first.is_some_and(|e| e.dry_run),
                    "diagnosis": diagnosis,
                    "events": events,
                })
            })
            .collect()
    }
}

fn torn_last_line(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1))
        .and_then(|_| file.read_exact(&mut last))
        .is_ok_and(|()| last[0] != b'\n')
}

/// The kinds of action that have an end, and the event that is it.
fn ends(event: &Event) -> bool {
    let ended = match event.kind.as_str() {
        "remediation" => event.step == "finished",
        "scheduled_snapshot" => matches!(event.phase, Phase::Ok | Phase::Failed),
        "retry" => event.step == "retry",
        _ => true,
    };
    ended || event.step == INTERRUPTED
}

/// The step recorded, at start-up, for an action a killed process left unfinished.
pub const INTERRUPTED: &str = "interrupted";

/// An action the log shows begun and never ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unfinished {
    pub action_id: String,
    pub kind: String,
    pub started: String,
    /// The last thing it recorded: how far it got.
    pub last_step: String,
    pub last_phase: Phase,
    pub last_ts: String,
}

impl Audit {
    /// Every action of this log that began and never ended, oldest first. Read from the
    /// file, not the in-memory tail: an old run must not be missed for being old. Called at
    /// start-up, before this process begins anything.
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, AuditError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(FileError::on("reading", &self.path))?;
        let mut order: Vec<String> = Vec::new();
        let mut open: HashMap<String, Unfinished> = HashMap::new();
        for event in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        {
            if ends(&event) {
                open.remove(&event.action_id);
                continue;
            }
            if !matches!(
                event.kind.as_str(),
                "remediation" | "scheduled_snapshot" | "retry"
            ) {
                continue;
            }
            let entry = open.entry(event.action_id.clone()).or_insert_with(|| {
                order.push(event.action_id.clone());
                Unfinished {
                    action_id: event.action_id.clone(),
                    kind: event.kind.clone(),
                    started: event.ts.clone(),
                    last_step: String::new(),
                    last_phase: event.phase,
                    last_ts: String::new(),
                }
            });
            entry.last_step.clone_from(&event.step);
            entry.last_phase = event.phase;
            entry.last_ts.clone_from(&event.ts);
        }
        Ok(order
            .into_iter()
            .filter_map(|id| open.remove(&id))
            .collect())
    }
}

/// Reads every event of an audit log file (tests and tools). A last line without its
/// newline is one still being appended (or cut short by a crash): it is not an event
/// yet, so it is left out; any complete line that does not parse is an error.
pub fn read_all(path: &Path) -> Result<Vec<Event>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(FileError::on("reading", path))?;
    text.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .map(|line| serde_json::from_str(line).map_err(AuditError::BadLine))
        .collect()
}

/// A new action's id, the key of its events: time, a per-process random tag (replicas in
/// containers all run as PID 1) and a process-wide sequence, so ids are unique across
/// replicas and across apps in one process.
pub fn new_action_id() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    static TAG: OnceLock<u64> = OnceLock::new();
    let tag = TAG.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's randomness once per process.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish() & 0xffff_ffff
    });
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{millis:x}-{tag:08x}-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appends_survive_reopening_and_actions_come_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        audit
            .record(
                "a1",
                "remediation",
                "snapshot",
                Phase::Start,
                json!({}),
                false,
            )
            .unwrap();
        audit
            .record(
                "a1",
                "remediation",
                "snapshot",
                Phase::Ok,
                json!({"size": 1}),
                false,
            )
            .unwrap();
        audit
            .record(
                "a2",
                "webhook",
                "decide",
                Phase::Skipped,
                json!("cooldown"),
                false,
            )
            .unwrap();
        drop(audit);
        let audit = Audit::open(dir.path()).unwrap();
        audit
            .record("a3", "remediation", "plan", Phase::Info, json!([]), true)
            .unwrap();
        let actions = audit.actions(10);
        let ids: Vec<&str> = actions
            .iter()
            .map(|a| a["action_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a3", "a2", "a1"]);
        assert_eq!(actions[2]["events"].as_array().unwrap().len(), 2);
        assert_eq!(actions[0]["dry_run"], true);
        assert_eq!(read_all(audit.path()).unwrap().len(), 4);
    }

    #[test]
    fn a_line_still_being_written_is_not_read_but_a_bad_whole_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        audit
            .record("a1", "remediation", "plan", Phase::Info, json!([]), false)
            .unwrap();
        let path = audit.path().to_path_buf();
        let whole = std::fs::read_to_string(&path).unwrap();
        // Half of the same event again, as a reader racing the append sees it.
        std::fs::write(&path, format!("{whole}{}", &whole[..whole.len() / 2])).unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("{whole}{{\"broken\"\n")).unwrap();
        assert!(matches!(read_all(&path), Err(AuditError::BadLine(_))));
    }
}
