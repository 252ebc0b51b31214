//! Traffic shaped like a Kubernetes control plane: mostly reads of single objects, some
//! paginated lists, writes of 1-10 KB objects (a fraction on short leases, like Events),
//! a few deletes, and a watcher on the prefix like an informer.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions, WatchOptions};
use rand::Rng;
use tokio::task::JoinSet;

use super::{len_u64, random_value, run_workers};
use crate::ctx::{Ctx, Outcome};
use crate::etcd;
use crate::stats::Op;

/// Shares of the operation mix (the rest are deletes).
const GET: f64 = 0.50;
const RANGE: f64 = 0.10;
const PUT: f64 = 0.30;
/// Page size of a list, as `kubectl get` and informers ask for.
const RANGE_LIMIT: i64 = 50;
const MIN_VALUE: usize = 1024;
const MAX_VALUE: usize = 10 * 1024;
/// Pause before re-opening a broken watch, as informers back off.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

pub async fn run(
    ctx: Arc<Ctx>,
    keys: u64,
    lease_fraction: f64,
    lease_ttl_seconds: i64,
    watchers: usize,
) {
    // 0 until the first lease is granted; puts go without one until then.
    let lease = Arc::new(AtomicI64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..watchers {
        tasks.spawn(watch(ctx.clone()));
    }
    if lease_fraction > 0.0 {
        tasks.spawn(grant_leases(ctx.clone(), lease_ttl_seconds, lease.clone()));
    }
    run_workers(&ctx, tasks, |ctx, task| {
        worker(ctx, task, keys, lease_fraction, lease.clone())
    })
    .await;
}

async fn worker(ctx: Arc<Ctx>, task: usize, keys: u64, lease_fraction: f64, lease: Arc<AtomicI64>) {
    let mut rng = ctx.rng(task);
    let mut client = ctx.client.clone();
    let prefix = ctx.load.key_prefix.clone();
    while ctx.pace().await {
        let key = format!("{prefix}{:06}", rng.random_range(0..keys));
        let roll: f64 = rng.random();
        if roll < GET {
            ctx.call(Op::Get, 0, client.get(key, None)).await;
        } else if roll < GET + RANGE {
            let page = GetOptions::new().with_prefix().with_limit(RANGE_LIMIT);
            ctx.call(Op::Range, 0, client.get(prefix.as_str(), Some(page)))
                .await;
        } else if roll < GET + RANGE + PUT {
            let size = rng.random_range(MIN_VALUE..=MAX_VALUE);
            let value = random_value(&mut rng, size);
            let bytes = len_u64(key.len() + value.len());
            if !ctx.take_bytes(bytes) {
                break;
            }
            let lease_id = lease.load(Ordering::Relaxed);
            if lease_id != 0 && rng.random::<f64>() < lease_fraction {
                let options = PutOptions::new().with_lease(lease_id);
                ctx.call(
                    Op::PutWithLease,
                    bytes,
                    client.put(key, value, Some(options)),
                )
                .await;
            } else {
                ctx.call(Op::Put, bytes, client.put(key, value, None)).await;
            }
        } else {
            ctx.call(Op::Delete, 0, client.delete(key, None)).await;
        }
    }
}

/// Grants a lease every half TTL and lets each expire on its own, taking its keys along.
async fn grant_leases(ctx: Arc<Ctx>, ttl_seconds: i64, current: Arc<AtomicI64>) {
    let mut client = ctx.client.clone();
    let renew = Duration::from_secs(u64::try_from(ttl_seconds / 2).unwrap_or(1).max(1));
    loop {
        if let Outcome::Done(granted) = ctx
            .call(Op::LeaseGrant, 0, client.lease_grant(ttl_seconds, None))
            .await
        {
            current.store(granted.id(), Ordering::Relaxed);
        }
        if !ctx.pause(renew).await {
            return;
        }
    }
}

/// Counts the events under the prefix; a broken watch is counted and opened again.
async fn watch(ctx: Arc<Ctx>) {
    let mut client = ctx.client.clone();
    let prefix = ctx.load.key_prefix.clone();
    loop {
        let opened = tokio::select! {
            biased;
            () = ctx.stop.stopped() => return,
            opened = client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix())) => opened,
        };
        match opened {
            Ok(mut stream) => loop {
                let message = tokio::select! {
                    biased;
                    () = ctx.stop.stopped() => return,
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(response)) if response.canceled() => {
                        ctx.stats.failure("watch_canceled");
                        break;
                    }
                    Ok(Some(response)) => ctx.stats.watch_events(len_u64(response.events().len())),
                    Ok(None) => {
                        ctx.stats.failure("watch_closed");
                        break;
                    }
                    Err(err) => {
                        ctx.stats.failure(etcd::classify(&err));
                        break;
                    }
                }
            },
            Err(err) => ctx.stats.failure(etcd::classify(&err)),
        }
        if !ctx.pause(REWATCH_AFTER).await {
            return;
        }
    }
}
