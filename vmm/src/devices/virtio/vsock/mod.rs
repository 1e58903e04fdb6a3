//! virtio-vsock with the Firecracker-style hybrid Unix-socket backend.

pub mod device;
pub mod packet;
pub mod unix;

pub use device::Vsock;
