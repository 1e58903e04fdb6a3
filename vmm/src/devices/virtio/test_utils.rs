//! Test helpers shared by the virtio device tests and the fuzz targets
//! (`fuzz/`, through the `fuzzing` feature): guest memory, a driver-side
//! split virtqueue ([`VirtQueue`]) laid out in it, and the driver's probe
//! sequence ([`bring_up`]). They play the guest; a failure here is a bug of
//! the test, so they unwrap.
#![allow(clippy::unwrap_used)]

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::devices::bus::BusDevice;

/// 16 MiB of guest memory for test queues.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// Reads the 32-bit register at `off`, as the guest does.
pub fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Writes the 32-bit register at `off`, as the guest does.
pub fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Guest address of queue `i` as [`bring_up`] lays it out.
pub fn queue_addr(i: usize) -> u64 {
    0x10_0000 * (i as u64 + 1)
}

/// Drives the Linux probe sequence through the transport's registers, with
/// 16-entry queues at [`queue_addr`] and the high feature word
/// `features_hi` (1: VIRTIO_F_VERSION_1); returns the driver side of each
/// queue.
pub fn bring_up(t: &mut MmioTransport, mem: &GuestMemoryMmap, features_hi: u32) -> Vec<VirtQueue> {
    wr(t, 0x70, 0);
    wr(t, 0x70, STATUS_ACKNOWLEDGE);
    wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x10, 0);
    let lo = rd(t, 0x10);
    wr(t, 0x20, lo);
    wr(t, 0x24, 1);
    wr(t, 0x14, 1);
    wr(t, 0x20, features_hi);
    wr(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    let nq = t.device().queue_max_sizes().len();
    let mut vqs = Vec::new();
    for i in 0..nq {
        let vq = VirtQueue::new(mem, queue_addr(i), 16);
        wr(t, 0x30, i as u32);
        wr(t, 0x38, u32::from(vq.size()));
        for (off, a) in [
            (0x80, vq.desc_table_addr()),
            (0x90, vq.avail_addr()),
            (0xa0, vq.used_addr()),
        ] {
            wr(t, off, a as u32);
            wr(t, off + 4, (a >> 32) as u32);
        }
        wr(t, 0x44, 1);
        vqs.push(vq);
    }
    wr(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    vqs
}

/// One descriptor as the tests write it: guest address, length, flags.
/// `VRING_DESC_F_NEXT` and `next` are filled in by [`VirtQueue::push_chain`].
pub type Desc = (u64, u32, u16);

/// The driver side of a split virtqueue in guest memory (virtio 1.x §2.7):
/// descriptor table at `base`, the available ring right after it, the used
/// ring after that, 4-byte aligned. The tests play the guest driver with it.
pub struct VirtQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
}

impl VirtQueue {
    /// Lays out a queue of `size` entries at `base` and zeroes its rings.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        // flags, idx, ring[size], used_event.
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let q = Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
        };
        let total = (used + 6 + 8 * u64::from(size) - base) as usize;
        mem.write_slice(&vec![0u8; total], GuestAddress(base))
            .unwrap();
        q
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest address of the descriptor table.
    pub fn desc_table_addr(&self) -> u64 {
        self.desc
    }

    /// Guest address of the available ring.
    pub fn avail_addr(&self) -> u64 {
        self.avail
    }

    /// Guest address of the used ring.
    pub fn used_addr(&self) -> u64 {
        self.used
    }

    /// Writes descriptor `index` verbatim (flags and `next` as given).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        let at = self.desc + 16 * u64::from(index % self.size);
        self.mem.write_obj(raw, GuestAddress(at)).unwrap();
    }

    /// Makes descriptor `head` available to the device.
    pub fn publish(&self, head: u16) {
        let idx = self.avail_idx();
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Writes `descs` as one chain at the next free table slots (wrapping),
    /// links them with `VRING_DESC_F_NEXT`, publishes the head and returns it.
    pub fn push_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | VRING_DESC_F_NEXT as u16, (index + 1) % self.size)
            };
            self.write_desc(index, addr, len, flags, next);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The driver's available index.
    pub fn avail_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i` (taken modulo the size): (head index, written length).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// The most recent used element, with the used index.
    pub fn last_used(&self) -> (u16, (u32, u32)) {
        let idx = self.used_idx();
        (idx, self.used_elem(idx.wrapping_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};

    #[test]
    fn device_sees_pushed_chains() {
        let m = mem();
        let mut vq = VirtQueue::new(&m, 0x1_0000, 16);
        // Rings do not overlap.
        assert_eq!(vq.avail_addr(), 0x1_0000 + 256);
        assert_eq!(vq.used_addr(), 0x1_0000 + 256 + 40);
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(vq.desc_table_addr() as u32), Some(0));
        q.set_avail_ring_address(Some(vq.avail_addr() as u32), Some(0));
        q.set_used_ring_address(Some(vq.used_addr() as u32), Some(0));
        q.set_ready(true);
        for round in 0..40u16 {
            let head = vq.push_chain(&[(0x8_0000, 8, 0), (0x9_0000, 8, 2)]);
            let chain = q.pop_descriptor_chain(&m).unwrap();
            assert_eq!(chain.head_index(), head);
            assert_eq!(chain.count(), 2);
            q.add_used(&m, head, u32::from(round)).unwrap();
            assert_eq!(vq.used_idx(), round + 1);
            assert_eq!(vq.last_used().1, (u32::from(head), u32::from(round)));
        }
    }
}
