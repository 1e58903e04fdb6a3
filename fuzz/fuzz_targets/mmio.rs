//! The virtio-mmio transport: a guest's register accesses (any offset in the
//! device's 4 KiB window, any width, any value; in any order — queues
//! reconfigured, features renegotiated, resets, notifications of queues
//! that do not exist) against the real transport wrapping a real device
//! (block with a drive, net on a datagram pair, or vsock on the Unix
//! backend), with guest-memory writes and chains in between, so that what
//! the driver sets up is then used.

#![no_main]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{Driver, GuestOp};
use moat_vmm::devices::bus::BusDevice;
use moat_vmm::devices::virtio::block::Block;
use moat_vmm::devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;
use moat_vmm::devices::virtio::net::Net;
use moat_vmm::devices::virtio::test_utils::bring_up;
use moat_vmm::devices::virtio::vsock::Vsock;
use moat_vmm::devices::virtio::VirtioDevice;
use moat_vmm::event_loop::{EpollRegistrar, EventHandler};
use vmm_sys_util::epoll::EventSet;

/// Size of a virtio-mmio device's window on the bus.
const WINDOW: u64 = 0x1000;

/// The registers of the v2 layout (so that the fuzzer hits them often).
const REGS: [u64; 24] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xfc, 0x100,
];

fn paths() -> &'static (tempfile::TempDir, PathBuf) {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
        (dir, disk)
    })
}

#[derive(Arbitrary, Debug)]
enum Dev {
    Block { read_only: bool },
    Net,
    Vsock,
}

#[derive(Arbitrary, Debug)]
enum Offset {
    Reg(u8),
    Any(u16),
}

impl Offset {
    fn get(&self) -> u64 {
        match self {
            Offset::Reg(i) => REGS[usize::from(*i) % REGS.len()],
            Offset::Any(o) => u64::from(*o) % WINDOW,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `width` (1..=8 as KVM delivers, or 0) bytes.
    Read { offset: Offset, width: u8 },
    /// A write of `width` bytes of `value`.
    Write {
        offset: Offset,
        width: u8,
        value: u64,
    },
    /// The whole probe sequence again (queues at the harness' addresses).
    BringUp { features_hi: u32 },
    /// Queue and memory traffic as in the device targets.
    Guest(GuestOp),
    /// The event loop dispatches what is ready.
    Pump,
}

#[derive(Arbitrary, Debug)]
struct Input {
    dev: Dev,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let (dir, disk) = paths();
    // Keep the datagram peer open while the device runs.
    let mut peer = None;
    let mut d = Driver::new(|el| -> Box<dyn VirtioDevice> {
        let reg = EpollRegistrar::new(el.epoll(), 0);
        match input.dev {
            Dev::Block { read_only } => {
                let mut b = Block::new(0, read_only);
                b.attach(disk, read_only).unwrap();
                Box::new(b)
            }
            Dev::Net => {
                let (host, dev_end) = UnixDatagram::pair().unwrap();
                dev_end.set_nonblocking(true).unwrap();
                host.set_nonblocking(true).unwrap();
                peer = Some(host);
                Box::new(Net::new([2, 0, 0, 0, 0, 1], Box::new(dev_end), reg).unwrap())
            }
            Dev::Vsock => Box::new(Vsock::new(3, &dir.path().join("m.sock"), reg).unwrap()),
        }
    });
    let nq = d.t.queue_evts().len();
    for op in &input.ops {
        match op {
            Op::Read { offset, width } => {
                let mut b = vec![0u8; usize::from(*width % 9)];
                d.t.read(offset.get(), &mut b);
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let off = offset.get();
                let w = usize::from(*width % 9);
                let bytes = value.to_le_bytes();
                d.t.write(off, &bytes[..w]);
                // KVM's ioeventfd fires on a 4-byte QueueNotify write of an
                // existing queue's index; the event loop then dispatches it.
                if off == QUEUE_NOTIFY_OFFSET && w == 4 && (*value as u32 as usize) < nq {
                    d.t.handle_event(*value as u32, EventSet::IN);
                }
            }
            Op::BringUp { features_hi } => {
                d.vqs = bring_up(&mut d.t, &d.mem, *features_hi);
            }
            Op::Guest(g) => d.apply(g),
            Op::Pump => d.pump(),
        }
        if let Some(p) = &peer {
            let mut b = [0u8; 2048];
            while p.recv(&mut b).is_ok() {}
        }
    }
    d.finish();
});
