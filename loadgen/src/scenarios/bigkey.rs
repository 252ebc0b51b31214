//! Large values in a loop. New keys grow the live data until etcd hits its quota and
//! answers NOSPACE (the run's expected end); only a person or a restore fixes that.
//! With `--overwrite` the same keys are rewritten: the growth is old revisions, which
//! compact + defrag reclaim.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{put_values, rewritten_key};
use crate::ctx::Ctx;

pub async fn run(ctx: Arc<Ctx>, value_size: usize, overwrite: Option<u64>) {
    // New keys must not land on an earlier run's keys (that would be overwriting): name
    // them after this run's start.
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let key = move |prefix: &str, n: u64| match overwrite {
        Some(keys) => rewritten_key(prefix, n, keys),
        None => format!("{prefix}{run_id}-{n:08}"),
    };
    put_values(&ctx, value_size, key, true).await;
}
