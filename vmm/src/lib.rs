//! moat-vmm: the virtual machine monitor of one pod sandbox.
//!
//! One process boots one Linux microVM (KVM, in-kernel irqchip, 64-bit Linux
//! boot protocol) with a serial console, an i8042 for reset, an exit port for
//! clean poweroff, and virtio-mmio devices: vsock (hybrid Unix-socket
//! backend), K hot-attachable block slots, and net on a TAP. A line-delimited
//! JSON control API drives it at runtime. See `README.md`.

#![deny(missing_docs)]

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod confine;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod jailer;
pub mod log;
pub mod runtime;
pub mod seccomp;
pub mod vstate;
