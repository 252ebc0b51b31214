//! The model: what a trained model is and how a window is scored with it.

pub mod baseline;
pub mod features;
pub mod fused;
pub mod inference;
pub mod lstm;
pub mod model_dir;
pub mod normalisation;
pub mod scoring;
pub mod selector;
pub mod step;
pub mod transform;
