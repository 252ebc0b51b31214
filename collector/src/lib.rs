//! dr-collector: scrape etcd's `/metrics`, keep the families that matter, push them to a
//! Pushgateway.
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod collect;
pub mod config;
pub mod error;
pub mod exposition;
pub mod metrics;
pub mod push;
pub mod scrape;
pub mod serve;
