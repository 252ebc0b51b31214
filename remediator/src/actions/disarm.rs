//! Disarm NOSPACE, but only once every member is under 90% of its quota: disarming earlier
//! lets writes refill the space and the alarm fire again mid-incident.

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::cluster::{ClusterView, EtcdAccess};

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

pub async fn nospace(access: &EtcdAccess) -> Result<Disarm, String> {
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
    let raised = tokio::time::timeout(
        access.timeout,
        client.alarm(AlarmAction::Get, AlarmType::None, None),
    )
    .await
    .map_err(|_| "alarm list timed out".to_owned())?
    .map_err(|err| format!("alarm list: {err}"))?;
    let mut members = 0;
    for alarm in raised.alarms() {
        if alarm.alarm() != AlarmType::Nospace {
            continue;
        }
        let mut options = AlarmOptions::new();
        options.with_member(alarm.member_id());
        tokio::time::timeout(
            access.timeout,
            client.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)),
        )
        .await
        .map_err(|_| "disarming timed out".to_owned())?
        .map_err(|err| format!("disarming NOSPACE on {:x}: {err}", alarm.member_id()))?;
        members += 1;
    }
    Ok(Disarm::Disarmed { members })
}
