//! Revisions moved past the lost cluster's after a restore from a snapshot, through the API,
//! for when no etcdutl with `--bump-revision` is at hand (etcd 3.4; etcdutl before 3.5.10).
//!
//! A cluster restored from a snapshot starts again at the snapshot's revision, below
//! revisions its clients (the API servers' watch caches, controllers' informers) have
//! already seen. A watch they resume from one of those would get the new writes under
//! numbers that meant other writes before, and miss the rest without an error. Writing
//! no-op revisions (puts of one key, then its delete) until the revision is past the old
//! one, then compacting there, makes every watch from an older revision fail with
//! "compacted", and its client list again: what etcdutl's `--bump-revision
//! --mark-compacted` does in the data file, done here over the API: about 5,000 revisions a
//! second (one etcd 3.4 member on loopback, a busy 2-core VM), so it is for gaps up to a
//! million or so, not etcdutl's billion. Each revision holds a few hundred bytes of the db
//! until the compaction frees them (a defrag returns them to the disk).

use std::time::{Duration, Instant};

use etcd_client::{CompactionOptions, DeleteOptions};
use futures_util::{StreamExt, stream};
use serde::Serialize;

use crate::error::ActionError;
use crate::etcd::{EtcdAccess, EtcdError, bounded, bounded_long, local_revision};

/// The key the no-op revisions are written to, and deleted at the end.
pub const BUMP_KEY: &str = "/etcd-dr/revision-bump";
/// Puts in flight at once: enough to fill etcd's batches on one connection.
const IN_FLIGHT: usize = 64;
/// The compaction at the end walks the history it removes.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a bump did, printed as JSON by `--bump-revision-past`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bumped {
    pub revision_before: i64,
    pub revision_after: i64,
    /// The revision the history was compacted at (the last one): every watch from an
    /// earlier revision is told so.
    pub compacted_at: i64,
    pub writes: u64,
    pub seconds: f64,
}

/// Writes revisions until the cluster's is past `past`, then compacts at the last one.
/// Refuses, touching nothing, when that takes more than `max_writes` puts. Always writes at
/// least one, so a cluster already past `past` is still compacted at a revision no client
/// of the old cluster can have seen.
pub async fn bump_past(
    access: &EtcdAccess,
    past: i64,
    max_writes: u64,
) -> Result<Bumped, ActionError> {
    let started = Instant::now();
    let mut client = access.client().await?;
    let before = local_revision(&mut client, access.timeout).await?;
    let writes = u64::try_from(past.saturating_sub(before).saturating_add(1))
        .unwrap_or(0)
        .max(1);
    if writes > max_writes {
        return Err(ActionError::NotSafe(format!(
            "moving revision {before} past {past} takes {writes} writes, more than \
             --bump-revision-max-writes {max_writes}; use etcdutl snapshot restore \
             --bump-revision where it is available"
        )));
    }
    tracing::info!(
        before,
        past,
        writes,
        "writing revisions past the old cluster's"
    );
    let timeout = access.timeout;
    let mut puts = stream::iter(0..writes)
        .map(|_| {
            let mut client = client.clone();
            async move {
                bounded(
                    "writing a revision",
                    timeout,
                    client.put(BUMP_KEY, "", None),
                )
                .await
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut done = 0u64;
    while let Some(put) = puts.next().await {
        put?;
        done += 1;
        if done % 100_000 == 0 {
            tracing::info!(done, writes, "revisions written");
        }
    }
    drop(puts);
    let deleted = bounded(
        "deleting the revision key",
        timeout,
        client.delete(BUMP_KEY, Some(DeleteOptions::new())),
    )
    .await?;
    let after = deleted
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| EtcdError::Unexpected("the delete's answer has no header"))?;
    bounded_long(
        "compacting at the new revision",
        COMPACT_TIMEOUT,
        client.compact(after, Some(CompactionOptions::new().with_physical())),
    )
    .await?;
    Ok(Bumped {
        revision_before: before,
        revision_after: after,
        compacted_at: after,
        writes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
