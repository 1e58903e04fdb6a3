//! virtio-fs (virtio 1.2 §5.11) served by a vhost-user-fs daemon
//! (virtiofsd): the VMM presents the device and its configuration (the mount
//! tag) to the guest, and hands the daemon guest memory (the memfd), the
//! rings' addresses, the queue-notify eventfds KVM signals and one call
//! eventfd per queue. The daemon then works the rings itself; the VMM only
//! turns a call into the device's interrupt.

pub mod device;

pub use device::{Fs, FsError};
