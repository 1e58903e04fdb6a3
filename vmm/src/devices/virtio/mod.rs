//! virtio devices over the virtio-mmio transport (virtio 1.x, modern only).

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::any::Any;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the device is modern (virtio 1.x).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// virtio device ID of a network card.
pub const TYPE_NET: u32 = 1;
/// virtio device ID of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// virtio device ID of a vsock device.
pub const TYPE_VSOCK: u32 = 19;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration space changed.
pub const INT_CONFIG: u32 = 0x2;

/// The interrupt line of one virtio-mmio device: the InterruptStatus
/// register plus an eventfd registered as a KVM irqfd.
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// Creates the line (the eventfd is wired to a GSI by the builder).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register with KVM_IRQFD.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Raises the interrupt with `bits` set in InterruptStatus.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("virtio irq: {e}");
        }
    }

    /// Signals used-ring updates.
    pub fn signal_used(&self) {
        self.trigger(INT_VRING);
    }

    /// Signals a configuration change.
    pub fn signal_config(&self) {
        self.trigger(INT_CONFIG);
    }
}

/// What a device works on once activated: guest memory, its queues, its
/// interrupt line.
pub struct QueueCtx<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The device's virtqueues, in virtio order.
    pub queues: &'a mut [Queue],
    /// The device's interrupt line.
    pub irq: &'a IrqTrigger,
    /// The queue-notify eventfds KVM signals (a vhost-user device hands
    /// them to its daemon).
    pub queue_evts: &'a [EventFd],
}

/// Why activation failed.
#[derive(Debug, thiserror::Error)]
#[error("activating virtio device: {0}")]
pub struct ActivateError(pub String);

/// A virtio device behind the mmio transport.
pub trait VirtioDevice: Send + Any {
    /// virtio device ID.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "ignoring config write at {offset:#x} ({} bytes)",
            data.len()
        );
    }
    /// Whether a backend process reads the queue-notify eventfds itself
    /// (vhost-user), so the VMM must not watch them.
    fn queue_events_to_backend(&self) -> bool {
        false
    }
    /// The driver set DRIVER_OK with `acked_features`.
    fn activate(&mut self, acked_features: u64, ctx: &mut QueueCtx) -> Result<(), ActivateError>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// The driver notified queue `queue`.
    fn queue_event(&mut self, queue: usize, ctx: &mut QueueCtx);
    /// A backend fd registered with sub-token `sub` is ready.
    fn backend_event(&mut self, sub: u32, events: EventSet, ctx: Option<&mut QueueCtx>);
    /// Per-device counters for the control API.
    fn counters(&self) -> serde_json::Value;
    /// Downcasting support (the API attaches drives to block devices).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Reads `data.len()` bytes at `offset` of a config space image `cfg`,
/// zero-filling beyond its end.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= cfg.len() {
        return;
    }
    let n = data.len().min(cfg.len() - start);
    data[..n].copy_from_slice(&cfg[start..start + n]);
}

/// The driver side of virtqueues for the unit tests and, with the `fuzzing`
/// feature, the fuzz targets in `fuzz/`.
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_utils;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_bounds() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn irq_status_and_ack() {
        let irq = IrqTrigger::new().unwrap();
        irq.signal_used();
        irq.signal_config();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
    }
}
