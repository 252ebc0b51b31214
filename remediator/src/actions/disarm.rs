//! Disarm NOSPACE, but only once every member is under 90% of its quota: disarming earlier
//! lets writes refill the space and the alarm fire again mid-incident.

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::cluster::ClusterView;
use crate::etcd::{EtcdAccess, EtcdError, bounded};

/// Below this fraction of its quota a member has room to take writes again.
pub const QUOTA_FRACTION: f64 = 0.9;

#[derive(Debug, PartialEq)]
pub enum Disarm {
    /// No NOSPACE alarm was raised.
    NotRaised,
    Disarmed {
        members: usize,
    },
    /// Still too full; the alarm stays.
    TooFull(String),
}

pub async fn nospace(access: &EtcdAccess) -> Result<Disarm, EtcdError> {
    let view = ClusterView::observe(access).await?;
    if !view.nospace {
        return Ok(Disarm::NotRaised);
    }
    if !view.all_below_quota(QUOTA_FRACTION) {
        let sizes: Vec<String> = view
            .members
            .iter()
            .map(|m| match &m.status {
                Some(s) => format!("{} {}/{} bytes", m.name, s.db_size, s.quota_bytes),
                None => format!("{} unknown", m.name),
            })
            .collect();
        return Ok(Disarm::TooFull(sizes.join(", ")));
    }
    let mut client = access.client().await?;
    let raised = bounded(
        "alarm list",
        access.timeout,
        client.alarm(AlarmAction::Get, AlarmType::None, None),
    )
    .await?;
    let mut members = 0;
    for alarm in raised.alarms() {
        if alarm.alarm() != AlarmType::Nospace {
            continue;
        }
        let mut options = AlarmOptions::new();
        options.with_member(alarm.member_id());
        let member = alarm.member_id();
        // The deadline names the step, a refusal the member.
        let disarm = async {
            client
                .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
                .await
                .map_err(|err| EtcdError::request(format!("disarming NOSPACE on {member:x}"), err))
        };
        bounded("disarming", access.timeout, disarm).await?;
        members += 1;
    }
    Ok(Disarm::Disarmed { members })
}
