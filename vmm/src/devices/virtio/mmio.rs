//! The virtio-mmio transport, version 2 register layout (virtio 1.x §4.2.2).
//!
//! vCPU threads access the registers through the MMIO bus; queue
//! notifications arrive as KVM ioeventfds on the VMM thread's epoll, and the
//! device interrupt leaves through a KVM irqfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{IrqTrigger, QueueCtx, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::event_loop::EventHandler;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (modern).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("MOAT" would do; any value is fine).
pub const VENDOR_ID: u32 = 0x5441_4f4d;
/// Offset of QueueNotify (used to register ioeventfds).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset where the device-specific configuration space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status: ACKNOWLEDGE.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: DRIVER.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: DRIVER_OK.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: FEATURES_OK.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: DEVICE_NEEDS_RESET.
pub const STATUS_NEEDS_RESET: u32 = 0x40;
/// Device status: FAILED.
pub const STATUS_FAILED: u32 = 0x80;

/// One virtio device with its transport state.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; creates its queues and notification eventfds.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| std::io::Error::other(format!("{e:?}")))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            irq: Arc::new(IrqTrigger::new()?),
            queues,
            queue_evts,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The interrupt line (its eventfd goes to KVM_IRQFD).
    pub fn irq(&self) -> &Arc<IrqTrigger> {
        &self.irq
    }

    /// The per-queue notification eventfds (for KVM_IOEVENTFD and epoll).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Whether the driver activated the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Runs `f` on the device with its queue context (if activated).
    pub fn with_device<R>(
        &mut self,
        f: impl FnOnce(&mut dyn VirtioDevice, Option<&mut QueueCtx>) -> R,
    ) -> R {
        if self.activated {
            let mut ctx = QueueCtx {
                mem: &self.mem,
                queues: &mut self.queues,
                irq: &self.irq,
                queue_evts: &self.queue_evts,
            };
            f(self.device.as_mut(), Some(&mut ctx))
        } else {
            f(self.device.as_mut(), None)
        }
    }

    /// The device's configuration changed: bump the generation and, if the
    /// driver is up, raise a configuration-change interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.irq.signal_config();
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.status = 0;
        self.activated = false;
        self.irq.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0
            && self.status & STATUS_FEATURES_OK == 0
            && self.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            // Legacy drivers are not supported: refuse FEATURES_OK.
            tracing::warn!("virtio driver did not accept VIRTIO_F_VERSION_1");
            v &= !STATUS_FEATURES_OK;
        }
        self.status = v;
        if v & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        let result = if !valid {
            Err(super::ActivateError("invalid queue configuration".into()))
        } else {
            let mut ctx = QueueCtx {
                mem: &self.mem,
                queues: &mut self.queues,
                irq: &self.irq,
                queue_evts: &self.queue_evts,
            };
            self.device.activate(self.acked_features, &mut ctx)
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("{e}");
                self.status |= STATUS_NEEDS_RESET;
                self.irq.signal_config();
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.device.avail_features() | VIRTIO_F_VERSION_1;
                match self.features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.irq.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let before_driver_ok = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.features_select = v,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let avail = self.device.avail_features() | VIRTIO_F_VERSION_1;
                    let bits = match self.acked_features_select {
                        0 => u64::from(v),
                        1 => u64::from(v) << 32,
                        _ => 0,
                    };
                    self.acked_features |= bits & avail;
                }
            }
            0x24 => self.acked_features_select = v,
            0x30 => self.queue_select = v,
            0x38 if before_driver_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 if before_driver_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.irq.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if before_driver_ok => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !0x7 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => tracing::debug!("virtio-mmio: ignored write {v:#x} to {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if data.len() == 4 {
            let v = self.read_reg(offset);
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if let Ok(b) = <[u8; 4]>::try_from(data) {
            self.write_reg(offset, u32::from_le_bytes(b));
        }
    }
}

impl EventHandler for MmioTransport {
    fn handle_event(&mut self, sub: u32, events: EventSet) {
        let nq = self.queue_evts.len();
        if (sub as usize) < nq {
            let q = sub as usize;
            // Consume the notification even if the device is not active.
            let _ = self.queue_evts[q].read();
            if self.activated {
                let mut ctx = QueueCtx {
                    mem: &self.mem,
                    queues: &mut self.queues,
                    irq: &self.irq,
                    queue_evts: &self.queue_evts,
                };
                self.device.queue_event(q, &mut ctx);
            }
        } else {
            self.with_device(|d, ctx| d.backend_event(sub, events, ctx));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::devices::virtio::test_utils::bring_up;
    use crate::devices::virtio::{ActivateError, TYPE_BLOCK};
    use std::any::Any;

    struct Dummy {
        activated: u32,
        events: Vec<usize>,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            1 << 9
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn activate(&mut self, _f: u64, _ctx: &mut QueueCtx) -> Result<(), ActivateError> {
            self.activated += 1;
            Ok(())
        }
        fn reset(&mut self) {}
        fn queue_event(&mut self, q: usize, _ctx: &mut QueueCtx) {
            self.events.push(q);
        }
        fn backend_event(&mut self, _: u32, _: EventSet, _: Option<&mut QueueCtx>) {}
        fn counters(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    use crate::devices::virtio::test_utils::{rd, wr};

    fn transport() -> (MmioTransport, GuestMemoryMmap) {
        let mem = crate::devices::virtio::test_utils::mem();
        let d = Dummy {
            activated: 0,
            events: vec![],
        };
        (MmioTransport::new(Box::new(d), mem.clone()).unwrap(), mem)
    }

    fn dummy(t: &mut MmioTransport) -> &mut Dummy {
        t.device.as_any_mut().downcast_mut::<Dummy>().unwrap()
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, 0), MMIO_MAGIC);
        assert_eq!(rd(&mut t, 4), 2);
        assert_eq!(rd(&mut t, 8), TYPE_BLOCK);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1); // VERSION_1 is bit 32
        wr(&mut t, 0x14, 0);
        assert_eq!(rd(&mut t, 0x10), 1 << 9);
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 16);
        wr(&mut t, 0x30, 7);
        assert_eq!(rd(&mut t, 0x34), 0);
        let mut b = [0u8; 2];
        t.read(0x100, &mut b);
        assert_eq!(b, [0xaa, 0xbb]);
        // Odd widths on registers are ignored.
        let mut b3 = [1u8; 3];
        t.read(0, &mut b3);
        assert_eq!(b3, [0; 3]);
        t.write(0x70, &[1, 2]);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn activation_and_notify() {
        let (mut t, mem) = transport();
        bring_up(&mut t, &mem, 1);
        assert!(t.is_activated());
        assert_eq!(dummy(&mut t).activated, 1);
        wr(&mut t, 0x50, 1);
        t.handle_event(1, EventSet::IN);
        // A notify for a queue that does not exist is ignored.
        wr(&mut t, 0x50, 9);
        assert_eq!(dummy(&mut t).events, vec![1]);
        t.config_changed();
        assert_eq!(rd(&mut t, 0xfc), 1);
        assert_eq!(rd(&mut t, 0x60) & 2, 2);
        wr(&mut t, 0x64, 2);
        assert_eq!(rd(&mut t, 0x60), 0);
        wr(&mut t, 0x70, 0);
        assert!(!t.is_activated());
    }

    #[test]
    fn legacy_driver_refused() {
        let (mut t, mem) = transport();
        bring_up(&mut t, &mem, 0);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn invalid_queue_needs_reset() {
        let (mut t, _) = transport();
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0xffff_f000); // outside guest memory
        wr(&mut t, 0x84, 0x10);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, 0xf);
        assert!(!t.is_activated());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }
}
