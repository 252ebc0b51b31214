//! What every task of a run shares: the client, the schedule, the bounds, the stop flag and
//! the counters; and the two steps each task repeats: wait for a slot, make one request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::config::Load;
use crate::etcd;
use crate::rate::Pacer;
use crate::stats::{Op, Stats};
use crate::stop::{Stop, StopReason};

/// How one request ended.
pub enum Outcome<T> {
    Done(T),
    /// Counted under this kind in the summary's errors.
    Failed(&'static str),
    /// The run was interrupted while the request was in flight; it is not counted.
    Stopped,
}

pub struct Ctx {
    pub client: Client,
    pub load: Load,
    pub stop: Stop,
    pub stats: Stats,
    pub started: Instant,
    deadline: Instant,
    pacer: Pacer,
    /// Bytes that writes may still send.
    budget: AtomicU64,
}

impl Ctx {
    pub fn new(client: Client, load: Load, started: Instant) -> Self {
        Self {
            client,
            deadline: started + load.duration,
            pacer: Pacer::new(load.rate),
            budget: AtomicU64::new(load.max_bytes),
            stop: Stop::default(),
            stats: Stats::default(),
            started,
            load,
        }
    }

    /// The random source of task `task`: the same seed replays the same keys and sizes.
    pub fn rng(&self, task: usize) -> StdRng {
        StdRng::seed_from_u64(self.load.seed.wrapping_add(task as u64))
    }

    /// Waits for this task's next slot of the schedule; false once the run is over, or
    /// when the slot falls after the deadline (the deadline itself stops the run: other
    /// tasks may still hold earlier slots).
    pub async fn pace(&self) -> bool {
        let slot = self.pacer.reserve(Instant::now().into_std());
        if slot >= self.deadline.into_std() {
            return false;
        }
        tokio::select! {
            biased;
            () = self.stop.stopped() => false,
            () = tokio::time::sleep_until(slot.into()) => self.stop.reason().is_none(),
        }
    }

    /// Sleeps unless the run ends first; false if it did.
    pub async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.stop.stopped() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }

    /// Takes `bytes` from the write budget; when it is spent, ends the run and says no.
    pub fn take_bytes(&self, bytes: u64) -> bool {
        let taken = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok();
        if !taken {
            self.stop.stop(StopReason::MaxBytes);
        }
        taken
    }

    /// Runs one request and records it: latency and `bytes` written on success, the kind
    /// of failure otherwise. A failure that every retry would repeat ends the run.
    /// Ctrl-C abandons the request; other stops let it finish, so the counts match what
    /// etcd applied.
    pub async fn call<T>(
        &self,
        op: Op,
        bytes: u64,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Outcome<T> {
        let sent = Instant::now();
        let result = tokio::select! {
            biased;
            () = self.stop.interrupted() => return Outcome::Stopped,
            result = request => result,
        };
        match result {
            Ok(response) => {
                self.stats.success(op, sent.elapsed(), bytes);
                Outcome::Done(response)
            }
            Err(err) => {
                let kind = etcd::classify(&err);
                self.stats.failure(kind);
                if etcd::is_fatal(kind) {
                    tracing::error!(op = op.as_str(), error = %etcd::describe(&err), "etcd refused a request that would fail again; stopping");
                    self.stop.stop(StopReason::FatalError);
                } else {
                    tracing::debug!(op = op.as_str(), error = %etcd::describe(&err), "request failed");
                }
                Outcome::Failed(kind)
            }
        }
    }
}
