//! Serving: live windows pulled from Prometheus, scored, and answered on `/score` and
//! `/metrics`.

pub mod baselines;
pub mod freshness;
pub mod http;
pub mod live;
pub mod metrics;
pub mod pull;
