//! What the fuzz targets share: a hostile guest driver. The fuzzer's input
//! is decoded (with `arbitrary`) into [`GuestOp`]s — descriptor chains,
//! raw descriptor-table and ring writes, guest-memory writes, queue
//! notifications — that a [`Driver`] plays against a real device behind the
//! real virtio-mmio transport, through the same `VirtQueue` harness the unit
//! tests use (`moat_vmm::devices::virtio::test_utils`, feature `fuzzing`).
//! Setup failures here are bugs of the harness, so it unwraps.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use moat_vmm::devices::bus::BusDevice;
use moat_vmm::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use moat_vmm::devices::virtio::test_utils::{bring_up, mem, VirtQueue};
use moat_vmm::devices::virtio::VirtioDevice;
use moat_vmm::event_loop::{split_token, EventHandler, EventLoop};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{EpollEvent, EventSet};

/// Where the data buffers the ops name live: [`SLOTS`] slots of
/// [`SLOT_SIZE`] bytes, above the queues `bring_up` lays out (1-4 MiB).
pub const DATA_BASE: u64 = 0x80_0000;
/// Size of one data slot.
pub const SLOT_SIZE: u64 = 0x1_0000;
/// Number of data slots.
pub const SLOTS: u64 = 64;
/// Most descriptors one [`GuestOp::Chain`] writes (a queue holds 16; more
/// make the chain overwrite itself, which is fair game).
pub const MAX_CHAIN: usize = 24;

/// A guest-physical address: mostly inside a data slot (where the fuzzer
/// finds structure), sometimes anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// `offset` (modulo the slot size) into data slot `slot` (modulo [`SLOTS`]).
    Slot(u8, u16),
    /// Any address, in guest memory or not.
    Raw(u64),
}

impl Addr {
    /// The guest-physical address.
    pub fn get(self) -> u64 {
        match self {
            Addr::Slot(s, off) => {
                DATA_BASE + (u64::from(s) % SLOTS) * SLOT_SIZE + u64::from(off) % SLOT_SIZE
            }
            Addr::Raw(a) => a,
        }
    }
}

/// A descriptor length: mostly small, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    /// Up to 64 KiB.
    Small(u16),
    /// Any length (past the end of memory, `u32::MAX`, ...).
    Raw(u32),
}

impl Len {
    /// The length in bytes.
    pub fn get(self) -> u32 {
        match self {
            Len::Small(n) => u32::from(n),
            Len::Raw(n) => n,
        }
    }
}

/// One descriptor of a [`GuestOp::Chain`], with the bytes the guest puts
/// in its buffer first.
#[derive(Arbitrary, Debug, Clone)]
pub struct Desc {
    /// Buffer address.
    pub addr: Addr,
    /// Buffer length.
    pub len: Len,
    /// Device-writable.
    pub write: bool,
    /// Marked indirect (the table it points at is whatever is there).
    pub indirect: bool,
    /// Written at `addr` before the chain is published.
    pub content: Vec<u8>,
}

/// What a hostile driver can do to a running device's queues.
#[derive(Arbitrary, Debug, Clone)]
pub enum GuestOp {
    /// Writes a linked chain at the next free descriptors and publishes it.
    Chain {
        /// Queue index (modulo the device's queue count).
        queue: u8,
        /// The descriptors, head first.
        descs: Vec<Desc>,
    },
    /// Writes descriptor `index` verbatim: any flags, any `next`.
    RawDesc {
        /// Queue index.
        queue: u8,
        /// Table index (modulo the queue size).
        index: u16,
        /// Buffer address.
        addr: Addr,
        /// Buffer length.
        len: u32,
        /// Flags as the guest writes them.
        flags: u16,
        /// Next index as the guest writes it.
        next: u16,
    },
    /// Puts `head` (any value) in the available ring.
    Publish {
        /// Queue index.
        queue: u8,
        /// The head index, valid or not.
        head: u16,
    },
    /// Sets the available index to anything (claims more buffers than the
    /// ring holds, or goes backwards).
    AvailIdx {
        /// Queue index.
        queue: u8,
        /// The new index.
        idx: u16,
    },
    /// Writes bytes anywhere in guest memory (rings included).
    WriteMem {
        /// Where.
        addr: Addr,
        /// What.
        bytes: Vec<u8>,
    },
    /// Writes QueueNotify; the event loop's dispatch follows.
    Notify {
        /// Queue index (any value; only existing queues have an eventfd).
        queue: u8,
    },
}

/// A device behind the real transport, brought up as Linux does, with the
/// guest's side of its queues and the event loop its backend fds are on.
pub struct Driver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The transport wrapping the device.
    pub t: MmioTransport,
    /// The driver side of each queue.
    pub vqs: Vec<VirtQueue>,
    /// The epoll the device registered its backend fds with (handler id 0).
    pub el: EventLoop,
}

impl Driver {
    /// Wraps `make(&event_loop)`'s device in the transport and brings it up.
    pub fn new(make: impl FnOnce(&EventLoop) -> Box<dyn VirtioDevice>) -> Self {
        let el = EventLoop::new().unwrap();
        let mem = mem();
        let dev = make(&el);
        let mut t = MmioTransport::new(dev, mem.clone()).unwrap();
        let vqs = bring_up(&mut t, &mem, 1);
        assert!(t.is_activated());
        Self { mem, t, vqs, el }
    }

    fn vq(&mut self, queue: u8) -> &mut VirtQueue {
        let n = self.vqs.len();
        &mut self.vqs[usize::from(queue) % n]
    }

    /// Plays one op.
    pub fn apply(&mut self, op: &GuestOp) {
        match op {
            GuestOp::Chain { queue, descs } => {
                let descs = &descs[..descs.len().min(MAX_CHAIN)];
                if descs.is_empty() {
                    return;
                }
                let mut list = Vec::with_capacity(descs.len());
                for d in descs {
                    let addr = d.addr.get();
                    let _ = self.mem.write_slice(&d.content, GuestAddress(addr));
                    let mut flags = 0u16;
                    if d.write {
                        flags |= VRING_DESC_F_WRITE as u16;
                    }
                    if d.indirect {
                        flags |= VRING_DESC_F_INDIRECT as u16;
                    }
                    list.push((addr, d.len.get(), flags));
                }
                self.vq(*queue).push_chain(&list);
            }
            GuestOp::RawDesc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let addr = addr.get();
                self.vq(*queue)
                    .write_desc(*index, addr, *len, *flags, *next);
            }
            GuestOp::Publish { queue, head } => self.vq(*queue).publish(*head),
            GuestOp::AvailIdx { queue, idx } => {
                let at = self.vq(*queue).avail_addr() + 2;
                self.mem.write_obj(*idx, GuestAddress(at)).unwrap();
            }
            GuestOp::WriteMem { addr, bytes } => {
                let _ = self.mem.write_slice(bytes, GuestAddress(addr.get()));
            }
            GuestOp::Notify { queue } => self.notify(u32::from(*queue)),
        }
    }

    /// The guest writes `queue` to QueueNotify; as KVM's ioeventfd and the
    /// event loop would, an existing queue's handler runs.
    pub fn notify(&mut self, queue: u32) {
        self.t.write(QUEUE_NOTIFY_OFFSET, &queue.to_le_bytes());
        if (queue as usize) < self.t.queue_evts().len() {
            self.t.handle_event(queue, EventSet::IN);
        }
    }

    /// Ends a run: reads the device's counters (as the control API would)
    /// and, with `MOAT_FUZZ_STATS` set, prints them — to see how deep a
    /// corpus gets (`<target> -runs=0 <corpus dir>`).
    pub fn finish(&self) {
        static STATS: OnceLock<bool> = OnceLock::new();
        let c = self.t.device().counters();
        if *STATS.get_or_init(|| std::env::var_os("MOAT_FUZZ_STATS").is_some()) {
            eprintln!("moat-fuzz counters: {c}");
        }
    }

    /// Dispatches the backend fds that are ready (sockets, TAP, timers),
    /// as the event loop would, for a few rounds.
    pub fn pump(&mut self) {
        let mut evs = [EpollEvent::default(); 32];
        for _ in 0..4 {
            let n = self.el.epoll().wait(0, &mut evs).unwrap_or(0);
            if n == 0 {
                return;
            }
            for ev in &evs[..n] {
                let (_, sub) = split_token(ev.data());
                self.t.handle_event(sub, ev.event_set());
            }
        }
    }
}

/// Flags of a chained descriptor (for targets that write raw tables).
pub const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Flags of a device-writable descriptor.
pub const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
