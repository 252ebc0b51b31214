//! dr-collector: scrape etcd's `/metrics`, keep the families that matter, push them to a
//! Pushgateway.
//!
//! Where things are: [`serve`] (the service's life: a collection every interval, the ops
//! endpoints, the drain), [`collect`] (one collection with its retries), [`scrape`],
//! [`exposition`] (the parser), [`allowlist`], [`push`], [`error`] (why a collection
//! failed), [`metrics`], [`config`].
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
