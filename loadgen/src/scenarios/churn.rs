//! A few keys rewritten as fast as the rate allows: every write is a new revision of an
//! existing key, so history and (after compaction) free pages pile up while the live
//! data stays the same size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinSet;

use super::{len_u64, random_value, run_workers, stamp};
use crate::ctx::Ctx;
use crate::stats::Op;

pub async fn run(ctx: Arc<Ctx>, keys: u64, value_size: usize) {
    let next = Arc::new(AtomicU64::new(0));
    run_workers(&ctx, JoinSet::new(), |ctx, task| {
        let next = next.clone();
        async move {
            let mut rng = ctx.rng(task);
            let mut value = random_value(&mut rng, value_size);
            let mut client = ctx.client.clone();
            let prefix = ctx.load.key_prefix.clone();
            while ctx.pace().await {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = format!("{prefix}{:04}", n % keys);
                let bytes = len_u64(key.len() + value.len());
                if !ctx.take_bytes(bytes) {
                    break;
                }
                stamp(&mut value, n);
                ctx.call(Op::Put, bytes, client.put(key, value.clone(), None))
                    .await;
            }
        }
    })
    .await;
}
