//! What every etcd-dr service shares, and nothing more: logging set-up, the shutdown
//! signal, the `/healthz` `/readyz` `/metrics` scaffolding with JSON errors, duration
//! flags, TLS file flags and (feature `etcd`) an etcd client built from them.
#![forbid(unsafe_code)]

pub mod duration;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod http;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
