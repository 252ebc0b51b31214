//! The ordered plan of one remediation, built from what the cluster looks like before it
//! starts. Pure, so the order (snapshot first, defrag followers first and leader last) is
//! tested without etcd, and `--dry-run` prints exactly what would run.

use std::time::Duration;

use serde::Serialize;

use crate::cluster::ClusterView;

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
}

pub fn build(view: &ClusterView, health_wait: Duration, restore: bool) -> Vec<Step> {
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
    if view.nospace {
        steps.push(Step::DisarmNospace);
    }
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
                    version: "3.6.0".into(),
                }),
                error: None,
            })
            .collect();
        ClusterView {
            members,
            nospace,
            corrupt: false,
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
            let steps = build(&view(leader, false), Duration::from_secs(30), false);
            let order = defrag_order(&steps);
            assert_eq!(order.len(), 3);
            assert!(order[2].1, "leader last: {order:?}");
            assert!(order[..2].iter().all(|(_, l)| !l));
            assert!(order[0].0 < order[1].0);
        }
    }

    #[test]
    fn snapshot_then_compact_first_verify_after_the_wait() {
        let steps = build(&view(1, true), Duration::from_secs(30), true);
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
    fn no_disarm_without_the_alarm_and_no_restore_without_the_mode() {
        let steps = build(&view(1, false), Duration::from_secs(1), false);
        assert!(!steps.contains(&Step::DisarmNospace));
        assert!(!steps.contains(&Step::RestoreIfUnavailable));
        assert_eq!(steps.last(), Some(&Step::Verify));
    }
}
