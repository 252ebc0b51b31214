//! Serving: live windows pulled from Prometheus, scored, and answered on `/score` and
//! `/metrics`.

pub mod freshness;
pub mod live;
pub mod pull;
