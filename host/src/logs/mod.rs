//! Container logs in the CRI format kubelet reads, and where they may go.

pub mod cri_log;
pub mod location;

pub use cri_log::{CriLogWriter, Stream};
