//! Legacy PC devices: COM1 serial, i8042 (for reset), and moat's exit port.

pub mod exit_port;
pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd (registered as a KVM irqfd) used as an interrupt line.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
