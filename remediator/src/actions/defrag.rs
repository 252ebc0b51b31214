//! Defragment one member, with a long deadline, then wait until it answers again.
//! Defrag blocks the member while it runs (and stalls writes on the leader), so callers go
//! one member at a time, followers first.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{EtcdAccess, member_status};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DefragOutcome {
    pub db_size_before: i64,
    pub db_size_after: i64,
    pub duration_seconds: f64,
}

/// Defragments the member at `endpoint`; then its Status must answer within `settle`.
pub async fn member(
    access: &EtcdAccess,
    endpoint: &str,
    timeout: Duration,
    settle: Duration,
) -> Result<DefragOutcome, String> {
    let started = Instant::now();
    let before = member_status(access, endpoint).await?;
    let mut client = access.client_for(&[endpoint.to_owned()], timeout).await?;
    tokio::time::timeout(timeout, client.defragment())
        .await
        .map_err(|_| format!("defrag of {endpoint} timed out after {timeout:?}"))?
        .map_err(|err| format!("defrag of {endpoint}: {err}"))?;
    let deadline = Instant::now() + settle;
    let after = loop {
        match member_status(access, endpoint).await {
            Ok(status) => break status,
            Err(err) if Instant::now() >= deadline => {
                return Err(format!("{endpoint} not answering after defrag: {err}"));
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
