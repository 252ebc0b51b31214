//! dr-detector: an LSTM autoencoder over windows of etcd metrics. Trains with candle,
//! serves `/score` with a fused forward pass over the same weights.
// Not `forbid(unsafe_code)` like the other crates: `fused` makes one measured `unsafe`
// call, explained there; the workspace's lints deny every other.

pub mod cli;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod features;
pub mod freshness;
pub mod fused;
pub mod http;
pub mod inference;
pub mod model;
pub mod model_dir;
pub mod prometheus;
pub mod roc;
pub mod scoring;
pub mod synth;
pub mod train;
