//! A few keys rewritten as fast as the rate allows: every write is a new revision of an
//! existing key, so history and (after compaction) free pages pile up while the live
//! data stays the same size.

use std::sync::Arc;

use super::{put_values, rewritten_key};
use crate::ctx::Ctx;

pub async fn run(ctx: Arc<Ctx>, keys: u64, value_size: usize) {
    // NOSPACE is counted, not an end: churn keeps going, so an outage window shows.
    let key = move |prefix: &str, n: u64| rewritten_key(prefix, n, keys);
    put_values(&ctx, value_size, key, false).await;
}
