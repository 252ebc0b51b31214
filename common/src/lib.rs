//! What every etcd-dr service shares, and nothing more: logging set-up, the shutdown
//! signal, how a binary starts and ends (exit codes and messages), the `/healthz`
//! `/readyz` `/metrics` scaffolding with JSON errors, HTTPS on a listener, duration flags,
//! TLS file flags and files read again when they change,
//! (feature `etcd`) an etcd client built from them and what its errors mean, and (feature
//! `reqwest`) one-line reasons for failed HTTP requests.
#![forbid(unsafe_code)]

pub mod duration;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod http;
pub mod https;
pub mod process;
pub mod reload;
#[cfg(feature = "reqwest")]
pub mod reqwest_error;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
