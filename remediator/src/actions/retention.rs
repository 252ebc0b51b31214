//! Which snapshots stay, locally and in each store: the newest `count`, every one younger
//! than `within`, the newest of each of the last `daily` days and of each of the last
//! `weekly` weeks (UTC, weeks from Monday), and every snapshot a remediation took (as long
//! as the audit log names it, which is as long as the log itself: `audit.jsonl` is never
//! pruned). A snapshot kept by any rule stays.
//!
//! A snapshot's time is the one in its name (`snapshot-<unix millis>-rev<revision>.db`), so
//! the choice depends on nothing but the names and the time it is made at: [`Retention::keep`]
//! takes that time, and tests give it any.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::audit;

const DAY_MILLIS: u64 = 24 * 3600 * 1000;

/// The retention rules (`--snapshot-retain`, `--snapshot-retain-within`,
/// `--snapshot-retain-daily`, `--snapshot-retain-weekly`, or the `--snapshot-store*`
/// ones of a store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The newest this many, whatever their age (at least 1).
    pub count: usize,
    /// Every snapshot younger than this (zero: none by age).
    pub within: Duration,
    /// The newest snapshot of each of the last this many days, today included.
    pub daily: u32,
    /// The newest snapshot of each of the last this many weeks, this one included.
    pub weekly: u32,
}

impl Retention {
    /// The newest `count`, nothing by age.
    pub fn count(count: usize) -> Self {
        Retention {
            count,
            within: Duration::ZERO,
            daily: 0,
            weekly: 0,
        }
    }

    /// For each of `names` (newest first, as listings give them), whether it stays at
    /// `now`; `protected` names (a remediation's snapshots) always stay.
    pub fn keep<S: AsRef<str>>(
        &self,
        names: &[S],
        now: SystemTime,
        protected: &HashSet<String>,
    ) -> Vec<bool> {
        let now = millis(now);
        let today = now / DAY_MILLIS;
        let this_week = week(today);
        let (mut days_seen, mut weeks_seen) = (HashSet::new(), HashSet::new());
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let name = name.as_ref();
                let mut keep = i < self.count || protected.contains(name);
                let Some(taken) = taken_millis(name) else {
                    return keep;
                };
                let within = u64::try_from(self.within.as_millis()).unwrap_or(u64::MAX);
                // A clock that went back makes a snapshot "from the future": kept.
                if within > 0 && now.saturating_sub(taken) < within {
                    keep = true;
                }
                let day = taken / DAY_MILLIS;
                // The first seen of a day (or week) is its newest.
                if today.saturating_sub(day) < u64::from(self.daily) && days_seen.insert(day) {
                    keep = true;
                }
                let week = week(day);
                if this_week.saturating_sub(week) < u64::from(self.weekly)
                    && weeks_seen.insert(week)
                {
                    keep = true;
                }
                keep
            })
            .collect()
    }
}

/// Weeks since the epoch, from Monday (1970-01-01 was a Thursday).
fn week(day: u64) -> u64 {
    (day + 3) / 7
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// When the snapshot was taken, from its name (`snapshot-<millis>-rev<revision>.db`).
pub fn taken_millis(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("snapshot-")?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// The snapshots (file names) that the audit log in `dir` records as taken by a
/// remediation: kept as long as the log names them. A log that cannot be read protects
/// nothing more than the rules do, and says so.
pub fn protected_by_audit(dir: &Path) -> HashSet<String> {
    let path = dir.join(audit::FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return HashSet::new(),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the audit log; retention protects no remediation's snapshot");
            return HashSet::new();
        }
    };
    let mut found = HashSet::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        // Cheap filter before parsing: most lines are other steps.
        if !line.contains("\"step\":\"snapshot\"") || !line.contains("\"kind\":\"remediation\"") {
            continue;
        }
        let Ok(event) = serde_json::from_str::<audit::Event>(&line) else {
            continue;
        };
        if event.kind != crate::remediation::KIND || event.phase != audit::Phase::Ok {
            continue;
        }
        if let Some(name) = event.detail["path"]
            .as_str()
            .and_then(|p| Path::new(p).file_name())
            .and_then(|n| n.to_str())
        {
            found.insert(name.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600 * 1000;

    fn name(millis: u64) -> String {
        format!("snapshot-{millis:016}-rev1.db")
    }

    fn kept(retention: Retention, now: u64, ages_hours: &[u64]) -> Vec<u64> {
        let names: Vec<String> = ages_hours.iter().map(|h| name(now - h * HOUR)).collect();
        let at = UNIX_EPOCH + Duration::from_millis(now);
        retention
            .keep(&names, at, &HashSet::new())
            .into_iter()
            .zip(ages_hours)
            .filter_map(|(keep, h)| keep.then_some(*h))
            .collect()
    }

    #[test]
    fn names_give_the_time() {
        assert_eq!(
            taken_millis("snapshot-0000001700000000123-rev42.db"),
            Some(1_700_000_000_123)
        );
        assert_eq!(taken_millis("audit.jsonl"), None);
    }

    #[test]
    fn count_alone_keeps_the_newest() {
        let now = 1_000 * DAY_MILLIS;
        assert_eq!(kept(Retention::count(2), now, &[0, 1, 2, 3]), [0, 1]);
    }

    #[test]
    fn hourly_for_a_day_daily_for_a_week_weekly_for_a_month() {
        // 12:00 UTC on day 19_000 since the epoch; days and weeks are calendar ones (UTC).
        let now = 19_000 * DAY_MILLIS + 12 * HOUR;
        let retention = Retention {
            count: 1,
            within: Duration::from_secs(24 * 3600),
            daily: 7,
            weekly: 5,
        };
        // A snapshot every hour for 60 days.
        let ages: Vec<u64> = (0..60 * 24).collect();
        let kept = kept(retention, now, &ages);
        // Every one of the last day.
        assert!((0..24).all(|h| kept.contains(&h)), "{kept:?}");
        // Then only the newest of each earlier day within the week (today and the 6 days
        // before it), 23:00 of each; yesterday's (13 h ago) is within the last day.
        let days: Vec<u64> = kept
            .iter()
            .filter(|h| (24..7 * 24).contains(*h))
            .copied()
            .collect();
        assert_eq!(days, [37, 61, 85, 109, 133], "{kept:?}");
        // Beyond the week: one a week, for 5 weeks, the newest of each.
        let older: Vec<u64> = kept.iter().filter(|h| **h >= 7 * 24).copied().collect();
        assert!(!older.is_empty() && older.len() <= 5, "{older:?}");
        assert!(older.iter().all(|h| *h < 5 * 7 * 24 + 24), "{older:?}");
        for pair in older.windows(2) {
            assert_eq!(pair[1] - pair[0], 7 * 24, "one a week: {older:?}");
        }
        // Nothing older than the month is kept.
        assert!(kept.iter().all(|h| *h < 36 * 24), "{kept:?}");
    }

    #[test]
    fn protected_snapshots_stay_whatever_their_age() {
        let now = 1_000 * DAY_MILLIS;
        let names = [
            name(now),
            name(now - 400 * DAY_MILLIS),
            name(now - 500 * DAY_MILLIS),
        ];
        let protected = HashSet::from([names[2].clone()]);
        let at = UNIX_EPOCH + Duration::from_millis(now);
        assert_eq!(
            Retention::count(1).keep(&names, at, &protected),
            [true, false, true]
        );
    }

    #[test]
    fn a_remediations_snapshot_is_protected_by_its_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let audit = audit::Audit::open(dir.path()).unwrap();
        let path = dir.path().join(name(5));
        audit
            .record(
                "a",
                "remediation",
                "snapshot",
                audit::Phase::Start,
                serde_json::Value::Null,
                false,
            )
            .unwrap();
        audit
            .record(
                "a",
                "remediation",
                "snapshot",
                audit::Phase::Ok,
                serde_json::json!({ "path": path }),
                false,
            )
            .unwrap();
        audit
            .record(
                "b",
                "scheduled_snapshot",
                "snapshot",
                audit::Phase::Ok,
                serde_json::json!({ "path": dir.path().join(name(6)) }),
                false,
            )
            .unwrap();
        assert_eq!(protected_by_audit(dir.path()), HashSet::from([name(5)]));
        assert!(protected_by_audit(&dir.path().join("none")).is_empty());
    }
}
