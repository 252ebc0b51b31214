//! One remediation at a time across replicas: an etcd lock held by a lease that is kept
//! alive while the run lasts (a crashed replica's lock expires with its lease). The
//! cooldown of an alert is shared the same way: a key with a lease. (Within the process,
//! the gate's try-lock keeps runs apart.)

use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LockOptions};
use tokio::task::JoinHandle;

use crate::etcd::{EtcdAccess, EtcdError, bounded};

pub const LOCK_NAME: &str = "/etcd-dr/remediator-lock";
/// `<prefix><fingerprint>` exists while that alert is in cooldown (a lease ends it), so
/// every replica sees it.
pub const COOLDOWN_PREFIX: &str = "/etcd-dr/cooldown/";
/// `<prefix><identity>/<lease hex>` exists, on the lock's lease, while a replica holds or
/// waits for the lock: etcd's lock key carries no value, so this is what tells a restarted
/// replica that a lease is its dead predecessor's (see [`release_own`]).
pub const OWNER_PREFIX: &str = "/etcd-dr/lock-owner/";
/// The least time the lock's writes (lease, owner key) get, whatever `--etcd-timeout`
/// says: a reader's deadline is too short for a write on a disk that stalls.
const LOCK_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A held etcd lock; [`release`](Self::release) it, or its lease expires after the TTL.
pub struct EtcdLock {
    access: EtcdAccess,
    lease: i64,
    key: Vec<u8>,
    keepalive: JoinHandle<()>,
}

impl EtcdLock {
    /// Tries for `wait` to take the lock. `Ok(None)` when another holder has it;
    /// [`EtcdError::Nospace`] when etcd refuses the lease or the lock key for lack of space.
    /// `identity` names this replica in the owner key beside the lock.
    pub async fn try_acquire(
        access: &EtcdAccess,
        identity: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Self>, EtcdError> {
        // The lease and the owner key are writes: each waits for a WAL fsync on a quorum,
        // which on a stalling disk (the very incident being called about) takes seconds.
        let write_deadline = access.timeout.max(LOCK_WRITE_DEADLINE);
        let mut client = access.live_client(write_deadline).await?;
        let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(60);
        let granting = Instant::now();
        let lease = bounded(
            "lease grant",
            write_deadline,
            client.lease_grant(ttl_secs, None),
        )
        .await?
        .id();
        // The lock key is one more such write: the wait for another holder starts after it.
        let write_took = granting.elapsed();
        // Written before queueing for the lock, so a replica killed while it waited is
        // found too; it goes with the lease.
        let owner = owner_key(identity, lease);
        let marked = bounded(
            "lock owner key",
            write_deadline,
            client.put(
                owner,
                serde_json::json!({ "identity": identity, "lease": lease, "pid": std::process::id() })
                    .to_string(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            ),
        )
        .await;
        if let Err(err) = marked {
            let _ = tokio::time::timeout(access.timeout, client.lease_revoke(lease)).await;
            return Err(err);
        }
        let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(err) => {
                let _ = tokio::time::timeout(access.timeout, client.lease_revoke(lease)).await;
                return Err(EtcdError::request("lease keep-alive", err));
            }
        };
        let period = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(60)) / 3;
        let keepalive = tokio::spawn(async move {
            loop {
                if keeper.keep_alive().await.is_err() {
                    tracing::warn!(lease, "lock lease keep-alive failed");
                    return;
                }
                // Drain the answer so the stream does not back up.
                let _ = tokio::time::timeout(period, responses.message()).await;
                tokio::time::sleep(period).await;
            }
        });
        let attempt = tokio::time::timeout(
            wait + write_took,
            client.lock(LOCK_NAME, Some(LockOptions::new().with_lease(lease))),
        )
        .await;
        let failed = match attempt {
            Ok(Ok(response)) => {
                return Ok(Some(EtcdLock {
                    access: access.clone(),
                    lease,
                    key: response.key().to_vec(),
                    keepalive,
                }));
            }
            // Another holder kept it for the whole wait.
            Err(_) => None,
            Ok(Err(err)) => Some(EtcdError::request("lock", err)),
        };
        // Revoking the lease also removes our place in the lock's queue.
        keepalive.abort();
        let _ = tokio::time::timeout(access.timeout, client.lease_revoke(lease)).await;
        failed.map_or(Ok(None), Err)
    }

    pub fn key(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// Unlocks and revokes the lease; failures only shorten nothing (the TTL ends it).
    pub async fn release(self) {
        self.keepalive.abort();
        if let Ok(mut client) = self.access.client().await {
            let _ =
                tokio::time::timeout(self.access.timeout, client.unlock(self.key.clone())).await;
            let _ =
                tokio::time::timeout(self.access.timeout, client.lease_revoke(self.lease)).await;
        }
    }
}

/// Marks `fingerprint` as in cooldown for `ttl` on every replica.
pub async fn mark_cooldown(
    access: &EtcdAccess,
    fingerprint: &str,
    ttl: Duration,
) -> Result<(), EtcdError> {
    let deadline = (access.timeout * 2).max(LOCK_WRITE_DEADLINE);
    let call = async {
        let mut client = access.live_client(deadline).await?;
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|err| EtcdError::request("cooldown lease", err))?
            .id();
        client
            .put(
                format!("{COOLDOWN_PREFIX}{fingerprint}"),
                "1",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|err| EtcdError::request("cooldown key", err))?;
        Ok::<_, EtcdError>(())
    };
    bounded("marking the cooldown", deadline, call).await
}

/// True while some replica's cooldown for `fingerprint` lasts.
pub async fn in_shared_cooldown(access: &EtcdAccess, fingerprint: &str) -> Result<bool, EtcdError> {
    let call = async {
        let mut client = access.client().await?;
        let found = client
            .get(format!("{COOLDOWN_PREFIX}{fingerprint}"), None)
            .await
            .map_err(|err| EtcdError::request("cooldown key", err))?;
        Ok::<_, EtcdError>(!found.kvs().is_empty())
    };
    bounded("reading the cooldown", access.timeout * 2, call).await
}

fn owner_key(identity: &str, lease: i64) -> String {
    format!("{OWNER_PREFIX}{identity}/{lease:x}")
}

/// A lease of this replica's identity left by a predecessor, revoked at start-up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OwnLease {
    pub lease: i64,
    /// It held the lock (rather than waiting in its queue).
    pub held_lock: bool,
}

/// Revokes every lease an earlier process of this `identity` left (its lock, or its place
/// in the lock's queue, goes with it), so the next alert is not skipped for the lease's
/// TTL. Only at start-up, before this process takes any lock: every lease of the identity
/// then belongs to a dead process.
pub async fn release_own(access: &EtcdAccess, identity: &str) -> Result<Vec<OwnLease>, EtcdError> {
    let call = async {
        let mut client = access.client().await?;
        let prefix = format!("{OWNER_PREFIX}{identity}/");
        let owned = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|err| EtcdError::request("lock owner keys", err))?;
        let mut released = Vec::new();
        for kv in owned.kvs() {
            let lease = kv.lease();
            if lease == 0 {
                continue;
            }
            let holder = client
                .get(
                    format!("{LOCK_NAME}/{lease:x}"),
                    Some(GetOptions::new().with_count_only()),
                )
                .await
                .map_err(|err| EtcdError::request("lock key", err))?;
            match client.lease_revoke(lease).await {
                Ok(_) => {}
                // It expired between the read and the revoke: nothing left to release.
                Err(err) if err.to_string().contains("lease not found") => {}
                Err(err) => return Err(EtcdError::request("revoking an own lease", err)),
            }
            released.push(OwnLease {
                lease,
                held_lock: holder.count() > 0,
            });
        }
        Ok::<_, EtcdError>(released)
    };
    bounded("releasing own locks", access.timeout * 3, call).await
}

/// True while anyone holds (or waits for) the etcd lock: a cheap look before a retry runs
/// every check again.
pub async fn held_by_anyone(access: &EtcdAccess) -> Result<bool, EtcdError> {
    let call = async {
        let mut client = access.client().await?;
        let found = client
            .get(
                format!("{LOCK_NAME}/"),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|err| EtcdError::request("lock key", err))?;
        Ok::<_, EtcdError>(found.count() > 0)
    };
    bounded("reading the lock", access.timeout * 2, call).await
}
