//! What runs on each member during a defrag, in order: its Status (the size before), the
//! Defragment call on that member alone with the long `--defrag-timeout`, then its Status
//! again until it answers (the size after). Defrag blocks the member while it runs (and
//! stalls writes on the leader), so the plan goes one member at a time, followers first;
//! the run records each member's defrag in the audit log before and after it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::member_status;
use crate::error::ActionError;
use crate::etcd::{EtcdAccess, bounded_long};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DefragOutcome {
    pub db_size_before: i64,
    pub db_size_after: i64,
    pub duration_seconds: f64,
}

/// Defragments the member at `endpoint` within `timeout` (`--defrag-timeout`); then its
/// Status must answer again within six `--etcd-timeout`s.
pub async fn member(
    access: &EtcdAccess,
    endpoint: &str,
    timeout: Duration,
) -> Result<DefragOutcome, ActionError> {
    let settle = access.timeout * 6;
    let started = Instant::now();
    let before = member_status(access, endpoint).await?;
    let mut client = access.client_for(&[endpoint.to_owned()], timeout).await?;
    bounded_long(
        format!("defrag of {endpoint}"),
        timeout,
        client.defragment(),
    )
    .await?;
    let deadline = Instant::now() + settle;
    let after = loop {
        match member_status(access, endpoint).await {
            Ok(status) => break status,
            Err(error) if Instant::now() >= deadline => {
                return Err(ActionError::NotBackAfterDefrag {
                    endpoint: endpoint.to_owned(),
                    error,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Ok(DefragOutcome {
        db_size_before: before.db_size,
        db_size_after: after.db_size,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}
