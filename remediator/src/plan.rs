//! The ordered plan of one remediation, built from the diagnosis and what the cluster looks
//! like before it starts. Pure, so the order (snapshot first, defrag followers first and
//! leader last) and which diagnoses never get a defrag are tested without etcd, and
//! `--dry-run` and `POST /plan` show exactly what would run.
//!
//! - space, fragmentation: snapshot, compact, defrag (leader last), disarm NOSPACE, wait,
//!   verify, restore if unavailable;
//! - leader instability, slow disk, unknown, a member down with quorum: snapshot, escalate
//!   (a defrag blocks each member in turn: it would make these worse);
//! - a member down without quorum: snapshot (from any member that answers), wait, verify,
//!   restore if still unavailable, escalate.

use std::time::Duration;

use serde::Serialize;

use crate::cluster::ClusterView;
use crate::diagnosis::{Diagnosis, Finding};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A verified snapshot first: nothing else runs without one.
    Snapshot,
    Compact,
    Defrag {
        member: String,
        endpoint: String,
        leader: bool,
    },
    /// Only if NOSPACE is raised and every member is under 90% of its quota by then.
    DisarmNospace,
    WaitHealth {
        seconds: f64,
    },
    /// Health, a leader, no alarm, and a sentinel key written and read back.
    Verify,
    /// Runs only if the cluster is still unavailable after `Verify`.
    RestoreIfUnavailable,
    /// A person is needed: counted in `etcd_dr_escalations_total{diagnosis}` and recorded
    /// with the reason.
    Escalate {
        diagnosis: Diagnosis,
        reason: String,
    },
}

/// The plan that fits `finding`.
pub fn build(
    finding: &Finding,
    view: &ClusterView,
    health_wait: Duration,
    restore: bool,
) -> Vec<Step> {
    let escalate = Step::Escalate {
        diagnosis: finding.diagnosis,
        reason: escalation_reason(finding, restore),
    };
    match finding.diagnosis {
        Diagnosis::Space | Diagnosis::Fragmentation => repair(view, health_wait, restore),
        Diagnosis::MemberUnavailable if finding.quorum == Some(false) => {
            let mut steps = vec![
                Step::Snapshot,
                Step::WaitHealth {
                    seconds: health_wait.as_secs_f64(),
                },
                Step::Verify,
            ];
            if restore {
                steps.push(Step::RestoreIfUnavailable);
            }
            steps.push(escalate);
            steps
        }
        Diagnosis::MemberUnavailable
        | Diagnosis::LeaderInstability
        | Diagnosis::SlowDisk
        | Diagnosis::Unknown => vec![Step::Snapshot, escalate],
    }
}

/// Why a person is needed, as the escalation says it.
fn escalation_reason(finding: &Finding, restore: bool) -> String {
    let why = match finding.diagnosis {
        Diagnosis::LeaderInstability => {
            "leader elections keep happening (network, CPU starvation or a slow disk); a \
             defrag would stall the leader further, so only a snapshot was taken"
        }
        Diagnosis::SlowDisk => {
            "etcd's disk is too slow for it; a defrag would add I/O to that disk, so only a \
             snapshot was taken"
        }
        Diagnosis::MemberUnavailable if finding.quorum == Some(false) => {
            if restore {
                "quorum is lost; the restore ran if it stayed lost past the wait: check the \
                 members and what the restore did"
            } else {
                "quorum is lost and restores are off (--restore-mode none): restore by hand"
            }
        }
        Diagnosis::MemberUnavailable => {
            "a member is down but quorum holds: bring it back (restart or replace it); the \
             others are not defragmented meanwhile"
        }
        Diagnosis::Unknown => {
            "the remediator cannot tell what is wrong; it took a snapshot and touched nothing"
        }
        Diagnosis::Space | Diagnosis::Fragmentation => "the repair did not bring etcd back",
    };
    let first = finding
        .evidence
        .first()
        .map(|e| format!(" (evidence: {})", e.detail))
        .unwrap_or_default();
    format!("a person is needed: {}: {why}{first}", finding.diagnosis)
}

/// Today's repair of a full or fragmented database.
fn repair(view: &ClusterView, health_wait: Duration, restore: bool) -> Vec<Step> {
    let mut steps = vec![Step::Snapshot, Step::Compact];
    // Stable order: followers by name, then the leader, so a defrag never stalls writes
    // while other members still wait for theirs.
    let mut members: Vec<_> = view.members.iter().collect();
    members.sort_by_key(|m| (m.is_leader(), m.name.clone()));
    steps.extend(members.into_iter().map(|m| Step::Defrag {
        member: m.name.clone(),
        endpoint: m.endpoint.clone(),
        leader: m.is_leader(),
    }));
    // Planned whether or not the alarm is raised now: a storm still writing when the
    // alert fires (the model's fast alert comes before NOSPACE) raises it after this view
    // and before the defrags end. The step reads the alarms itself and does nothing
    // without one.
    steps.push(Step::DisarmNospace);
    steps.push(Step::WaitHealth {
        seconds: health_wait.as_secs_f64(),
    });
    steps.push(Step::Verify);
    if restore {
        steps.push(Step::RestoreIfUnavailable);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MemberStatus, MemberView};
    use crate::diagnosis::Evidence;

    fn finding(diagnosis: Diagnosis, quorum: Option<bool>) -> Finding {
        Finding {
            diagnosis,
            evidence: vec![Evidence {
                source: "etcd",
                detail: "test".into(),
            }],
            quorum,
        }
    }

    fn space() -> Finding {
        finding(Diagnosis::Space, None)
    }

    fn has_defrag(steps: &[Step]) -> bool {
        steps
            .iter()
            .any(|s| matches!(s, Step::Defrag { .. } | Step::Compact | Step::DisarmNospace))
    }

    #[test]
    fn no_defrag_for_leader_disk_member_or_unknown_diagnoses() {
        for diagnosis in [
            Diagnosis::LeaderInstability,
            Diagnosis::SlowDisk,
            Diagnosis::MemberUnavailable,
            Diagnosis::Unknown,
        ] {
            for quorum in [None, Some(true), Some(false)] {
                for nospace in [false, true] {
                    for restore in [false, true] {
                        let steps = build(
                            &finding(diagnosis, quorum),
                            &view(1, nospace),
                            Duration::from_secs(1),
                            restore,
                        );
                        assert!(!has_defrag(&steps), "{diagnosis}: {steps:?}");
                        assert_eq!(steps[0], Step::Snapshot);
                        assert!(
                            matches!(steps.last(), Some(Step::Escalate { diagnosis: d, reason }) if *d == diagnosis && reason.starts_with("a person is needed")),
                            "{steps:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lost_quorum_waits_verifies_and_restores_only_with_the_mode() {
        let lost = finding(Diagnosis::MemberUnavailable, Some(false));
        let steps = build(&lost, &view(1, false), Duration::from_secs(30), true);
        assert_eq!(
            steps[..4],
            [
                Step::Snapshot,
                Step::WaitHealth { seconds: 30.0 },
                Step::Verify,
                Step::RestoreIfUnavailable
            ]
        );
        let steps = build(&lost, &view(1, false), Duration::from_secs(30), false);
        assert!(!steps.contains(&Step::RestoreIfUnavailable));
        // With quorum: no wait, no restore.
        let kept = finding(Diagnosis::MemberUnavailable, Some(true));
        let steps = build(&kept, &view(1, false), Duration::from_secs(30), true);
        assert_eq!(steps.len(), 2, "{steps:?}");
    }

    fn view(leader: u64, nospace: bool) -> ClusterView {
        let members = [(3, "c"), (1, "a"), (2, "b")]
            .into_iter()
            .map(|(id, name)| MemberView {
                id,
                name: name.into(),
                endpoint: format!("http://127.0.0.1:{id}"),
                peer_url: String::new(),
                status: Some(MemberStatus {
                    leader,
                    db_size: 1,
                    db_size_in_use: 1,
                    quota_bytes: 10,
                    revision: 1,
                    raft_term: 2,
                    version: "3.6.0".into(),
                    errors: Vec::new(),
                }),
                error: None,
            })
            .collect();
        ClusterView {
            members,
            nospace,
            corrupt: false,
            alarms_error: None,
        }
    }

    fn defrag_order(steps: &[Step]) -> Vec<(&str, bool)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Defrag { member, leader, .. } => Some((member.as_str(), *leader)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn leader_is_defragmented_last_followers_in_name_order() {
        for leader in 1..=3 {
            let steps = build(
                &space(),
                &view(leader, false),
                Duration::from_secs(30),
                false,
            );
            let order = defrag_order(&steps);
            assert_eq!(order.len(), 3);
            assert!(order[2].1, "leader last: {order:?}");
            assert!(order[..2].iter().all(|(_, l)| !l));
            assert!(order[0].0 < order[1].0);
        }
    }

    #[test]
    fn snapshot_then_compact_first_verify_after_the_wait() {
        let steps = build(&space(), &view(1, true), Duration::from_secs(30), true);
        assert_eq!(steps[0], Step::Snapshot);
        assert_eq!(steps[1], Step::Compact);
        let tail = &steps[steps.len() - 4..];
        assert_eq!(
            tail,
            [
                Step::DisarmNospace,
                Step::WaitHealth { seconds: 30.0 },
                Step::Verify,
                Step::RestoreIfUnavailable
            ]
        );
    }

    #[test]
    fn a_disarm_even_before_the_alarm_and_no_restore_without_the_mode() {
        // No NOSPACE in the view: the disarm is still planned (the alarm may come while
        // the storm ends), and it checks for the alarm when it runs.
        let steps = build(&space(), &view(1, false), Duration::from_secs(1), false);
        assert!(steps.contains(&Step::DisarmNospace));
        assert!(!steps.contains(&Step::RestoreIfUnavailable));
        assert_eq!(steps.last(), Some(&Step::Verify));
    }
}
