//! dr-loadgen: drives etcd with the loads that precede its classic failures (steady
//! traffic, big-value storms toward the quota, key churn) and reports what it saw.
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
