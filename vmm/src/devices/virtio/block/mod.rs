//! virtio-blk: K slots that exist from boot; a host file can be attached to
//! and detached from a slot at runtime (capacity change + config interrupt).

pub mod device;
pub mod request;

pub use device::{Block, BlockError};
