//! What the remediator knows about the etcd cluster: its members, each member's status
//! (asked of that member itself), the alarms, and whether it is safe to act on.

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, Client};
use serde::Serialize;

use crate::etcd::{EtcdAccess, EtcdError, bounded, bounded_long};

/// One member as the remediator sees it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub endpoint: String,
    pub peer_url: String,
    /// `None` when the member did not answer Status in time.
    pub status: Option<MemberStatus>,
    /// Why Status failed, when it did.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemberStatus {
    pub leader: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub quota_bytes: u64,
    pub revision: i64,
    /// Raft term: it grows by one per election.
    pub raft_term: u64,
    pub version: String,
    /// What the member itself reports as wrong (its alarms, e.g. `alarm:CORRUPT`); read
    /// from Status, which needs no quorum, unlike the alarm list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl MemberView {
    pub fn is_leader(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.leader == self.id)
    }
}

/// Why a cluster that answered is still not one to touch.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NotSafe {
    #[error("CORRUPT alarm raised; a person must look at this cluster")]
    Corrupt,
    /// `name (why)` of each member that did not answer Status.
    #[error("members not answering: {}", .0.join(", "))]
    Silent(Vec<String>),
    #[error("no leader")]
    NoLeader,
    /// The alarm list needs quorum; without it a CORRUPT alarm cannot be ruled out.
    #[error("alarms unknown: {0}")]
    AlarmsUnknown(String),
}

/// The whole picture at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub members: Vec<MemberView>,
    pub nospace: bool,
    pub corrupt: bool,
    /// Why the alarm list could not be read (it goes through raft, so not without quorum);
    /// `nospace` and `corrupt` then come from what the members' Status says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarms_error: Option<String>,
}

impl ClusterView {
    /// Reads the member list, asks each member for its Status (each bounded by the
    /// access timeout) and reads the alarms.
    pub async fn observe(access: &EtcdAccess) -> Result<Self, EtcdError> {
        let mut client = access.client().await?;
        let list = bounded("member list", access.timeout, client.member_list()).await?;
        let mut members = Vec::new();
        for member in list.members() {
            let endpoint = member.client_urls().first().cloned().unwrap_or_default();
            let mut view = MemberView {
                id: member.id(),
                name: member.name().to_owned(),
                endpoint: endpoint.clone(),
                peer_url: member.peer_urls().first().cloned().unwrap_or_default(),
                status: None,
                error: None,
            };
            if endpoint.is_empty() {
                view.error = Some("member has not started (no client URL)".into());
            } else {
                match member_status(access, &endpoint).await {
                    Ok(status) => view.status = Some(status),
                    Err(err) => view.error = Some(err.to_string()),
                }
            }
            members.push(view);
        }
        // A member's own Status lists its alarms; the alarm list is the cluster's word.
        let said = |what: &str| {
            members.iter().any(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.errors.iter().any(|e| e.contains(what)))
            })
        };
        let (nospace, corrupt, alarms_error) = match alarms(&mut client, access.timeout).await {
            Ok((nospace, corrupt)) => (nospace, corrupt || said("CORRUPT"), None),
            Err(err) => (said("NOSPACE"), said("CORRUPT"), Some(err.to_string())),
        };
        Ok(ClusterView {
            members,
            nospace,
            corrupt,
            alarms_error,
        })
    }

    pub fn leader(&self) -> Option<&MemberView> {
        self.members.iter().find(|m| m.is_leader())
    }

    /// `Err(why)` unless every member answered, there is a leader and no CORRUPT
    /// alarm. NOSPACE does not block: it is what a remediation fixes.
    pub fn safe_to_act(&self) -> Result<(), NotSafe> {
        if self.corrupt {
            return Err(NotSafe::Corrupt);
        }
        let silent = self.silent();
        if !silent.is_empty() {
            return Err(NotSafe::Silent(silent));
        }
        if self.leader().is_none() {
            return Err(NotSafe::NoLeader);
        }
        if let Some(why) = &self.alarms_error {
            return Err(NotSafe::AlarmsUnknown(why.clone()));
        }
        Ok(())
    }

    /// `name (why)` of each member that did not answer Status.
    pub fn silent(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.status.is_none())
            .map(|m| format!("{} ({})", m.name, m.error.as_deref().unwrap_or("no answer")))
            .collect()
    }

    /// True when more than half the members answer and agree on a leader among them:
    /// the cluster can still commit, so a restore would only lose data. A leader that
    /// does not answer *here* (a slow or cut link from the remediator to it) still counts
    /// when a majority names it and the alarm list was read: that read is committed
    /// through raft, so quorum was there a moment ago. (A dead leader the others still
    /// name is not enough on its own: its proposals fail, so the alarm list does.)
    pub fn quorum_holds(&self) -> Option<String> {
        let agreeing = |leader: u64| {
            self.members
                .iter()
                .filter(|m| m.status.as_ref().is_some_and(|s| s.leader == leader))
                .count()
        };
        let majority = |count: usize| count * 2 > self.members.len();
        let total = self.members.len();
        if let Some(leader) = self.leader() {
            let count = agreeing(leader.id);
            return majority(count).then(|| {
                format!(
                    "{count} of {total} members answer with leader {}",
                    leader.name
                )
            });
        }
        if self.alarms_error.is_some() {
            return None;
        }
        let (leader, count) = self
            .members
            .iter()
            .filter_map(|m| m.status.as_ref().map(|s| s.leader))
            .filter(|&leader| leader != 0)
            .map(|leader| (leader, agreeing(leader)))
            .max_by_key(|&(_, count)| count)?;
        let name = self
            .members
            .iter()
            .find(|m| m.id == leader)
            .map_or_else(|| format!("{leader:x}"), |m| m.name.clone());
        majority(count).then(|| {
            format!(
                "{count} of {total} members answer with leader {name} (which does not answer \
                 here) and the alarm list commits"
            )
        })
    }

    /// True when every member is under `fraction` of its quota.
    pub fn all_below_quota(&self, fraction: f64) -> bool {
        self.members.iter().all(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| (s.db_size.max(0) as f64) < fraction * s.quota_bytes as f64)
        })
    }
}

/// Status of the member at `endpoint`, asked of that member alone.
pub async fn member_status(access: &EtcdAccess, endpoint: &str) -> Result<MemberStatus, EtcdError> {
    let what = format!("status of {endpoint}");
    let call = async {
        let mut client = access
            .client_for(&[endpoint.to_owned()], access.timeout)
            .await?;
        let status = client
            .status()
            .await
            .map_err(|err| EtcdError::request(what.as_str(), err))?;
        let quota = u64::try_from(status.db_size_quota())
            .ok()
            .filter(|q| *q > 0)
            .unwrap_or(access.default_quota_bytes);
        Ok::<_, EtcdError>(MemberStatus {
            leader: status.leader(),
            db_size: status.db_size(),
            db_size_in_use: status.raft_used_db_size(),
            quota_bytes: quota,
            revision: status.header().map(|h| h.revision()).unwrap_or_default(),
            raft_term: status.raft_term(),
            version: status.version().to_owned(),
            errors: status.errors().to_vec(),
        })
    };
    bounded_long(what.as_str(), access.timeout, call).await
}

/// (NOSPACE raised, CORRUPT raised) across all members.
pub async fn alarms(client: &mut Client, timeout: Duration) -> Result<(bool, bool), EtcdError> {
    let response = bounded(
        "alarm list",
        timeout,
        client.alarm(AlarmAction::Get, AlarmType::None, None),
    )
    .await?;
    let mut nospace = false;
    let mut corrupt = false;
    for alarm in response.alarms() {
        match alarm.alarm() {
            AlarmType::Nospace => nospace = true,
            AlarmType::Corrupt => corrupt = true,
            AlarmType::None => {}
        }
    }
    Ok((nospace, corrupt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, leader: u64, answered: bool) -> MemberView {
        MemberView {
            id,
            name: format!("m{id}"),
            endpoint: format!("http://127.0.0.1:{id}"),
            peer_url: String::new(),
            status: answered.then(|| MemberStatus {
                leader,
                db_size: 50,
                db_size_in_use: 10,
                quota_bytes: 100,
                revision: 7,
                raft_term: 2,
                version: "3.4".into(),
                errors: Vec::new(),
            }),
            error: (!answered).then(|| "connection refused".to_owned()),
        }
    }

    #[test]
    fn safe_only_with_every_member_a_leader_and_no_corrupt_alarm() {
        let mut view = ClusterView {
            members: vec![member(1, 2, true), member(2, 2, true)],
            nospace: true,
            corrupt: false,
            alarms_error: None,
        };
        assert_eq!(view.safe_to_act(), Ok(()), "NOSPACE must not block");
        view.members[0] = member(1, 2, false);
        assert!(
            view.safe_to_act()
                .unwrap_err()
                .to_string()
                .contains("m1 (connection refused)")
        );
        view.members = vec![member(1, 9, true), member(2, 9, true)];
        assert_eq!(view.safe_to_act().unwrap_err().to_string(), "no leader");
        view.members = vec![member(1, 1, true)];
        view.corrupt = true;
        assert!(
            view.safe_to_act()
                .unwrap_err()
                .to_string()
                .contains("CORRUPT")
        );
    }

    #[test]
    fn quorum_needs_a_majority_agreeing_on_a_leader() {
        let mut view = ClusterView {
            members: vec![member(1, 2, false), member(2, 2, true), member(3, 2, true)],
            nospace: false,
            corrupt: false,
            alarms_error: None,
        };
        assert!(view.quorum_holds().unwrap().starts_with("2 of 3"));
        view.members[2] = member(3, 2, false);
        assert_eq!(view.quorum_holds(), None);
        // The leader silent to us, the two others naming it, the alarm list read: it
        // still commits. Without the alarm list, that may be a dead leader.
        view.members = vec![member(1, 1, false), member(2, 1, true), member(3, 1, true)];
        let holds = view.quorum_holds().unwrap();
        assert!(
            holds.starts_with("2 of 3") && holds.contains("m1"),
            "{holds}"
        );
        view.alarms_error = Some("timed out".into());
        assert_eq!(view.quorum_holds(), None);
    }

    #[test]
    fn quota_check_needs_every_member_below_the_fraction() {
        let mut view = ClusterView {
            members: vec![member(1, 1, true), member(2, 1, true)],
            nospace: true,
            corrupt: false,
            alarms_error: None,
        };
        assert!(view.all_below_quota(0.9));
        if let Some(s) = view.members[1].status.as_mut() {
            s.db_size = 95;
        }
        assert!(!view.all_below_quota(0.9));
        view.members[1] = member(2, 1, false);
        assert!(!view.all_below_quota(0.9), "an unknown size is not below");
    }
}
