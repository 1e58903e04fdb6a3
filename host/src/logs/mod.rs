//! Container logs in the CRI format kubelet reads.

pub mod cri_log;

pub use cri_log::{CriLogWriter, Stream};
