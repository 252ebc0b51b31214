//! dr-loadgen: drives etcd with the loads that precede its classic failures (steady
//! traffic, big-value storms toward the quota, key churn) and reports what it saw.
//!
//! Where things are: `run` (one run from connect to summary), `scenarios` (the loads;
//! bigkey and churn share one put loop), `ctx` (what a run's tasks share: pacing, bounds,
//! one request), `etcd` (connecting, and names for the ways a request fails), `rate`,
//! `stop`, `stats`, `histogram`, `progress`, `summary`, `config`, `size`.
#![forbid(unsafe_code)]

pub mod config;
mod ctx;
mod etcd;
mod histogram;
mod progress;
mod rate;
pub mod run;
mod scenarios;
mod size;
mod stats;
pub mod stop;
pub mod summary;
