//! The real-stack harness: etcd, Pushgateway, Prometheus and Alertmanager started on free
//! loopback ports in a temporary directory, waited for, and stopped by PID (also when a
//! test panics). Used by the services' tests and, through the `dr-stack` binary, by the
//! e2e scripts.
//!
//! Where things are: [`process`] (child processes stopped by PID, bounded runs),
//! [`loopback`] (the one start-up of the Prometheus project's servers), [`pushgateway`],
//! [`prometheus`], [`alertmanager`] (each server's kind and flags), [`etcd`] (clusters of 1
//! or 3 members), [`restore`] (the remediator's restore procedure for harness members),
//! [`slow_disk`] (the syncs of chosen processes delayed), [`certs`], [`http`] (a tiny
//! blocking client for checks), [`ports`], [`netns`] (a network namespace of a test's own)
//! and [`tmpfs`] (a small file system to fill), both for root.
//!
//! ```no_run
//! use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion};
//! let etcd = EtcdCluster::start(EtcdOptions { version: EtcdVersion::V3_6, members: 3,
//!     ..EtcdOptions::default() })?;
//! println!("{:?}", etcd.client_endpoints());
//! # anyhow::Ok(())
//! ```
#![forbid(unsafe_code)]

pub mod alertmanager;
pub mod certs;
pub mod etcd;
pub mod http;
pub mod loopback;
pub mod netns;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod pushgateway;
pub mod restore;
pub mod s3;
pub mod slow_disk;
pub mod tmpfs;

pub use alertmanager::{Alertmanager, AlertmanagerOptions};
pub use certs::{TlsFiles, UnrelatedCa, generate_tls, generate_unrelated_ca};
pub use etcd::{EtcdCluster, EtcdMember, EtcdOptions, EtcdVersion, etcdctl_binary};
pub use http::{http_get, http_post, http_put, url_encode};
pub use loopback::LoopbackServer;
pub use netns::NetNs;
pub use ports::free_port;
pub use process::{ChildGuard, Workdir, output_within, pid_alive, run_within};
pub use prometheus::{Prometheus, PrometheusOptions};
pub use pushgateway::{Pushgateway, PushgatewayOptions};
pub use restore::{MarkerAction, RestoreMarkers};
pub use s3::S3Server;
pub use slow_disk::SlowDisk;
pub use tmpfs::Tmpfs;
