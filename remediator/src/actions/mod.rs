//! The repair steps, one module each. Every step is safe to retry.

pub mod bump;
pub mod compact;
pub mod compression;
pub mod defrag;
pub mod disarm;
pub mod proof;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod verify;
