//! Large values in a loop. New keys grow the live data until etcd hits its quota and
//! answers NOSPACE (the run's expected end); only a person or a restore fixes that.
//! With `--overwrite` the same keys are rewritten: the growth is old revisions, which
//! compact + defrag reclaim.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use super::{len_u64, random_value, run_workers, stamp};
use crate::ctx::{Ctx, Outcome};
use crate::stats::Op;
use crate::stop::StopReason;

pub async fn run(ctx: Arc<Ctx>, value_size: usize, overwrite: Option<u64>) {
    let next = Arc::new(AtomicU64::new(0));
    // New keys must not land on an earlier run's keys (that would be overwriting): name
    // them after this run's start.
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    run_workers(&ctx, JoinSet::new(), |ctx, task| {
        let next = next.clone();
        async move {
            let mut rng = ctx.rng(task);
            let mut value = random_value(&mut rng, value_size);
            let mut client = ctx.client.clone();
            let prefix = ctx.load.key_prefix.clone();
            while ctx.pace().await {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = match overwrite {
                    Some(keys) => format!("{prefix}{:04}", n % keys),
                    None => format!("{prefix}{run_id}-{n:08}"),
                };
                let bytes = len_u64(key.len() + value.len());
                if !ctx.take_bytes(bytes) {
                    break;
                }
                stamp(&mut value, n);
                let put = client.put(key, value.clone(), None);
                if let Outcome::Failed("nospace") = ctx.call(Op::Put, bytes, put).await {
                    ctx.stop.stop(StopReason::Nospace);
                }
            }
        }
    })
    .await;
}
