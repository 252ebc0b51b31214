//! The health check after a repair: every member answers, there is a leader, no alarm, and
//! a sentinel key can be written and read back through the cluster (that needs quorum).

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::ClusterView;
use crate::etcd::{self, EtcdAccess, EtcdError, bounded_long};

/// Where the sentinel lives; one key, overwritten by each check.
pub const SENTINEL_KEY: &str = "/etcd-dr/sentinel";

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "verdict", content = "detail", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// It serves reads and writes (quorum holds) but something is wrong, e.g. a member is
    /// down. A restore would lose data for nothing: a person or the kubelet restarts members.
    Degraded(String),
    /// Writes do not go through: the case a restore is for.
    Unavailable(String),
}

/// How long a majority that answers but does not take writes may take to elect a leader
/// before the cluster counts as unavailable. etcd elects within a few election timeouts
/// (1 s by default, up to 5 s in tuned clusters); "unavailable" leads to a restore, which
/// an election in progress must never cause.
pub const ELECTION_SETTLE: Duration = Duration::from_secs(15);

/// Between sentinel attempts while a majority answers without a leader.
const SETTLE_POLL: Duration = Duration::from_millis(500);

pub async fn check(access: &EtcdAccess, token: &str) -> Health {
    let deadline = Instant::now() + ELECTION_SETTLE;
    loop {
        let sentinel = write_and_read_back(access, token).await;
        let view = ClusterView::observe(access).await;
        let electing = sentinel.is_err()
            && view
                .as_ref()
                .is_ok_and(|v| !v.nospace && majority_answers(v));
        if electing && Instant::now() + SETTLE_POLL < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            continue;
        }
        return verdict(sentinel, view);
    }
}

/// More than half the members answer Status: quorum is there, so a failed write is a
/// leader being elected (or a stuck one), not a lost cluster, until the settle time ends.
fn majority_answers(view: &ClusterView) -> bool {
    let answering = view.members.iter().filter(|m| m.status.is_some()).count();
    answering * 2 > view.members.len()
}

fn verdict(sentinel: Result<(), Vec<EtcdError>>, view: Result<ClusterView, EtcdError>) -> Health {
    match (sentinel, view) {
        // Under NOSPACE writes fail by design; the members still answer, so this is not a
        // case for a restore (the snapshot holds the same live data).
        (Err(_), Ok(view)) if view.nospace => {
            Health::Degraded("NOSPACE alarm still raised; writes refused".into())
        }
        (Err(errors), _) => Health::Unavailable(etcd::joined(&errors)),
        (Ok(()), Err(err)) => Health::Degraded(err.to_string()),
        (Ok(()), Ok(view)) => {
            if let Err(reason) = view.safe_to_act() {
                Health::Degraded(reason.to_string())
            } else if view.nospace {
                Health::Degraded("NOSPACE alarm still raised".into())
            } else {
                Health::Healthy
            }
        }
    }
}

/// Succeeds if any endpoint's member takes the write and reads it back: one live member
/// with quorum behind it is enough, a dead one in the list must not decide. Otherwise
/// each endpoint's failure.
async fn write_and_read_back(access: &EtcdAccess, token: &str) -> Result<(), Vec<EtcdError>> {
    let mut errors = Vec::new();
    for endpoint in &access.endpoints {
        let call = async {
            let mut client = access
                .client_for(std::slice::from_ref(endpoint), access.timeout)
                .await?;
            client
                .put(SENTINEL_KEY, token, None)
                .await
                .map_err(|err| EtcdError::request("sentinel write", err))?;
            let read = client
                .get(SENTINEL_KEY, None)
                .await
                .map_err(|err| EtcdError::request("sentinel read", err))?;
            match read.kvs().first() {
                Some(kv) if kv.value() == token.as_bytes() => Ok(()),
                Some(_) => Err(EtcdError::Unexpected(
                    "sentinel read back a different value",
                )),
                None => Err(EtcdError::Unexpected("sentinel missing after write")),
            }
        };
        // The endpoint names the exchange: "<endpoint>: timed out after 10s".
        match bounded_long("", access.timeout * 2, call).await {
            Ok(()) => return Ok(()),
            Err(err) => errors.push(err.at(endpoint)),
        }
    }
    Err(errors)
}
