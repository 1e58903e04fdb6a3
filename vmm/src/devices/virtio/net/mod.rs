//! virtio-net backed by a TAP device.

pub mod device;
pub mod tap;

pub use device::Net;
pub use tap::{FrameIo, Tap};
