//! The loads: each spawns its tasks on the shared context and returns when they all end.

mod bigkey;
mod churn;
mod steady;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use tokio::task::JoinSet;

use crate::config::Scenario;
use crate::ctx::{Ctx, Outcome};
use crate::stats::Op;
use crate::stop::StopReason;

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

/// The puts bigkey and churn are made of: `--concurrency` tasks writing `value_size`-byte
/// values, paced and within the byte budget, the `n`th write of the run (counted across
/// tasks) to `key(prefix, n)`. With `stop_on_nospace`, etcd's NOSPACE answer ends the run.
async fn put_values<K>(ctx: &Arc<Ctx>, value_size: usize, key: K, stop_on_nospace: bool)
where
    K: Fn(&str, u64) -> String + Clone + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    run_workers(ctx, JoinSet::new(), |ctx, task| {
        let (next, key) = (next.clone(), key.clone());
        async move {
            let mut rng = ctx.rng(task);
            let mut value = random_value(&mut rng, value_size);
            let mut client = ctx.client.clone();
            let prefix = ctx.load.key_prefix.clone();
            while ctx.pace().await {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = key(&prefix, n);
                let bytes = len_u64(key.len() + value.len());
                if !ctx.take_bytes(bytes) {
                    break;
                }
                stamp(&mut value, n);
                let put = client.put(key, value.clone(), None);
                if let Outcome::Failed("nospace") = ctx.call(Op::Put, bytes, put).await
                    && stop_on_nospace
                {
                    ctx.stop.stop(StopReason::Nospace);
                }
            }
        }
    })
    .await;
}

/// The key of the `n`th write when `keys` keys are rewritten round-robin.
fn rewritten_key(prefix: &str, n: u64, keys: u64) -> String {
    format!("{prefix}{:04}", n % keys)
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
