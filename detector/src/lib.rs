//! dr-detector: an LSTM autoencoder over windows of etcd metrics. Trains with candle,
//! serves `/score` with a fused forward pass over the same weights.
//!
//! Three parts, each depending only on the ones before it:
//! - [`model`]: what a model is and how a window is scored (the candle LSTM, the fused
//!   forward pass, features, the model directory).
//! - [`training`]: data in, a model directory out (datasets, training, ROC, evaluation,
//!   synthetic data, export of training data from Prometheus).
//! - [`serving`]: live windows from Prometheus scored, on `/score` and `/metrics`.
//!
//! [`prometheus`] is the Prometheus HTTP API client that export and serving share;
//! [`cli`] parses the command line and dispatches to [`commands`], one file per
//! subcommand with its flags and body.
// Not `forbid(unsafe_code)` like the other crates: `model::fused` makes one measured
// `unsafe` call, explained there; the workspace's lints deny every other.

pub mod cli;
pub mod commands;
pub mod model;
pub mod prometheus;
pub mod serving;
pub mod training;
