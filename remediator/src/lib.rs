//! dr-remediator: receive Alertmanager webhooks, confirm with the detector, and repair etcd
//! safely (snapshot, compact, defrag, disarm, verify, restore), one run at a time.
#![forbid(unsafe_code)]

pub mod actions;
pub mod app;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod confirm;
pub mod diagnosis;
pub mod error;
pub mod etcd;
pub mod gate;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod remediation;
pub mod retry;
pub mod serve;
pub mod signs;
pub mod webhook;
