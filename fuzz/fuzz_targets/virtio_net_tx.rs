//! virtio-net: frames the guest transmits (own or spoofed source MAC, any
//! virtio-net header, any length, split over descriptors as the guest
//! likes, or malformed chains) through the real transport and the real
//! device to a TAP stand-in (a datagram socket pair keeps frame boundaries
//! as a TAP does), with host frames arriving for the rx queue in between.

#![no_main]

use std::os::unix::net::UnixDatagram;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{Driver, GuestOp, Len, F_WRITE};
use moat_vmm::devices::virtio::net::device::TAP_SUB;
use moat_vmm::devices::virtio::net::Net;
use moat_vmm::event_loop::{EpollRegistrar, EventHandler};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const RXQ: u32 = 0;
const TXQ: usize = 1;
const TXBUF: u64 = 0x60_0000;
const RXBUF: u64 = 0x70_0000;

#[derive(Arbitrary, Debug)]
struct Frame {
    vnet_hdr: [u8; 12],
    dst: [u8; 6],
    /// `None`: the NIC's own MAC.
    src: Option<[u8; 6]>,
    rest: Vec<u8>,
    /// Bytes cut off the end (a frame shorter than its headers).
    truncate: u8,
    /// Descriptors the frame is split over.
    split: Vec<Len>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Tx(Frame),
    Guest(GuestOp),
    /// The guest offers `n` rx buffers of `len` bytes.
    Rx {
        n: u8,
        len: u16,
    },
    /// A frame arrives on the TAP.
    HostFrame(Vec<u8>),
    /// A large frame arrives on the TAP.
    HostBig(u16),
    /// The TAP is readable (the event loop's dispatch).
    TapEvent,
}

fn tx(d: &mut Driver, f: &Frame, tx_next: &mut u64) {
    let mut bytes = f.vnet_hdr.to_vec();
    bytes.extend_from_slice(&f.dst);
    bytes.extend_from_slice(&f.src.unwrap_or(MAC));
    bytes.extend_from_slice(&f.rest);
    bytes.truncate(bytes.len().saturating_sub(usize::from(f.truncate)));
    let base = TXBUF + (*tx_next % 8) * 0x2_0000;
    *tx_next += 1;
    let total = bytes.len() as u64;
    let mut descs = Vec::new();
    let mut at = 0u64;
    for l in f.split.iter().take(moat_fuzz::MAX_CHAIN - 1) {
        if at >= total {
            break;
        }
        let l = u64::from(l.get()).min(total - at);
        descs.push((base + at, l as u32, 0u16));
        at += l;
    }
    if at < total || descs.is_empty() {
        descs.push((base + at, (total - at) as u32, 0));
    }
    d.mem.write_slice(&bytes, GuestAddress(base)).unwrap();
    d.vqs[TXQ].push_chain(&descs);
    d.notify(TXQ as u32);
}

fuzz_target!(|ops: Vec<Op>| {
    let (host, dev_end) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let mut d = Driver::new(|el| {
        let reg = EpollRegistrar::new(el.epoll(), 0);
        Box::new(Net::new(MAC, Box::new(dev_end), reg).unwrap())
    });
    let mut tx_next = 0u64;
    let mut rx_next = 0u64;
    let mut sink = vec![0u8; 70_000];
    for op in &ops {
        match op {
            Op::Tx(f) => tx(&mut d, f, &mut tx_next),
            Op::Guest(g) => d.apply(g),
            Op::Rx { n, len } => {
                for _ in 0..(n % 8) {
                    let base = RXBUF + (rx_next % 8) * 0x2_0000;
                    rx_next += 1;
                    d.vqs[RXQ as usize].push_chain(&[(base, u32::from(*len), F_WRITE)]);
                }
                d.notify(RXQ);
            }
            Op::HostFrame(b) => {
                let _ = host.send(b);
            }
            Op::HostBig(n) => {
                let _ = host.send(&vec![0xa5; usize::from(*n) + 1500]);
            }
            Op::TapEvent => d.t.handle_event(TAP_SUB, EventSet::IN),
        }
        // The TAP's far side takes what the guest sent.
        while host.recv(&mut sink).is_ok() {}
    }
    d.pump();
    d.finish();
});
