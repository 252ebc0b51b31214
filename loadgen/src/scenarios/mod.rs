//! The loads: each spawns its tasks on the shared context and returns when they all end.

mod bigkey;
mod churn;
mod steady;

use std::future::Future;
use std::sync::Arc;

use rand::RngCore;
use tokio::task::JoinSet;

use crate::config::Scenario;
use crate::ctx::Ctx;

pub async fn run(ctx: Arc<Ctx>, scenario: Scenario) {
    match scenario {
        Scenario::Steady {
            keys,
            lease_fraction,
            lease_ttl_seconds,
            watchers,
        } => steady::run(ctx, keys, lease_fraction, lease_ttl_seconds, watchers).await,
        Scenario::Bigkey {
            value_size,
            overwrite,
        } => bigkey::run(ctx, value_size, overwrite).await,
        Scenario::Churn { keys, value_size } => churn::run(ctx, keys, value_size).await,
    }
}

/// Spawns `--concurrency` copies of `worker` (given its task number) next to `tasks`,
/// and waits for all of them.
async fn run_workers<F, W>(ctx: &Arc<Ctx>, mut tasks: JoinSet<()>, worker: W)
where
    W: Fn(Arc<Ctx>, usize) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    for task in 0..ctx.load.concurrency {
        tasks.spawn(worker(ctx.clone(), task));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(error = %err, "a load task failed");
        }
    }
}

/// `size` random bytes: etcd stores values as given, so their content does not matter,
/// but random content keeps any compression (snapshots, disks) honest.
fn random_value(rng: &mut impl RngCore, size: usize) -> Vec<u8> {
    let mut value = vec![0; size];
    rng.fill_bytes(&mut value);
    value
}

/// Marks a reused value with the write's number, so successive values differ.
fn stamp(value: &mut [u8], n: u64) {
    let bytes = n.to_le_bytes();
    let len = bytes.len().min(value.len());
    value[..len].copy_from_slice(&bytes[..len]);
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
