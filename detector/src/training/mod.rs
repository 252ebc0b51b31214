//! Training: labelled data in, a model directory out, and how well a model does.

pub mod alerting;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod provenance;
pub mod roc;
pub mod rules;
pub mod synth;
pub mod train;
pub mod train_v2;
