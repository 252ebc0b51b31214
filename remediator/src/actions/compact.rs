//! Compact to the current revision, physically: the call returns once the old revisions
//! are gone from the backend, so the defrag that follows has pages to return.

use etcd_client::CompactionOptions;

use crate::error::ActionError;
use crate::etcd::{EtcdAccess, bounded_long, current_revision};

/// Compacts to the revision current now; returns that revision. Compacting to a revision
/// already compacted is not an error here (a retry after a lost answer must succeed).
pub async fn to_current_revision(access: &EtcdAccess) -> Result<i64, ActionError> {
    // Physical compaction walks the whole keyspace; give it the defrag-sized patience of
    // several ordinary calls.
    let timeout = access.timeout * 12;
    let mut client = access.live_client(timeout).await?;
    let revision = current_revision(&mut client, access.timeout).await?;
    let call = async {
        match client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Err(err) if dr_common::etcd::is_compacted(&err) => Ok(()),
            other => other.map(drop),
        }
    };
    bounded_long(format!("compaction to {revision}"), timeout, call).await?;
    Ok(revision)
}
