//! virtio-vsock: packets the guest sends (any header, any payload, split
//! over descriptors as the guest likes, or malformed chains) through the
//! real transport, the real device and its muxer's TX path, on the real
//! hybrid Unix-socket backend; host clients connect and services accept,
//! read, write and close in between, and the event loop's backend events
//! are dispatched, so connections reach every state.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{Driver, GuestOp, Len, F_WRITE};
use moat_vmm::devices::virtio::vsock::packet::{
    Header, HDR_SIZE, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM,
};
use moat_vmm::devices::virtio::vsock::Vsock;
use moat_vmm::event_loop::EpollRegistrar;
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
/// Host ports with a listening service (`<uds>_<port>`).
const PORTS: [u32; 2] = [1024, 1025];
/// First local port the muxer hands host-initiated connections.
const LOCAL_PORT: u32 = 1 << 30;
/// Most host clients and accepted service streams kept per run.
const MAX_STREAMS: usize = 16;

const RXQ: u32 = 0;
const TXQ: usize = 1;
const TXBUF: u64 = 0x60_0000;
const RXBUF: u64 = 0x70_0000;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().to_path_buf();
        (d, p)
    })
    .1
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

impl Cid {
    fn get(self) -> u64 {
        match self {
            Cid::Guest => CID,
            Cid::Host => HOST_CID,
            Cid::Raw(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Port {
    /// A host port with a service.
    Service(u8),
    /// A local port of a host-initiated connection.
    Local(u8),
    /// A guest-side port.
    Guest(u8),
    Raw(u32),
}

impl Port {
    fn get(self) -> u32 {
        match self {
            Port::Service(i) => PORTS[usize::from(i) % PORTS.len()],
            Port::Local(i) => LOCAL_PORT + u32::from(i % 4),
            Port::Guest(i) => 2000 + u32::from(i % 4),
            Port::Raw(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Packet {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: Port,
    dst_port: Port,
    /// `None`: the payload's length.
    len: Option<u32>,
    stream: bool,
    type_: u16,
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    payload: Vec<u8>,
    /// Descriptors the packet is split over (header and payload bytes run
    /// across them in order).
    split: Vec<Len>,
}

#[derive(Arbitrary, Debug)]
enum HostLine {
    Connect(Port),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The guest connects from guest port `src` to a host service.
    GuestConnect {
        src: u8,
        svc: u8,
        buf_alloc: u32,
    },
    /// The guest accepts host-initiated connection `local` (the muxer
    /// numbers them from 2^30) from guest port `peer`.
    GuestAccept {
        local: u8,
        peer: u8,
    },
    /// Data on a connection, well addressed: (guest port, host port).
    GuestData {
        src: Port,
        dst: Port,
        fwd_cnt: u32,
        payload: Vec<u8>,
    },
    /// Any other well-addressed stream packet (credit, shutdown, reset).
    GuestCtrl {
        src: Port,
        dst: Port,
        op: u8,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    },
    /// Any packet at all.
    Packet(Packet),
    Guest(GuestOp),
    /// The guest offers `n` rx buffers of `len` bytes (after a header).
    Rx {
        n: u8,
        len: u16,
    },
    /// A host client connects to the device's socket and says `line`.
    HostConnect(HostLine),
    /// Host services accept the device's connections.
    HostAccept,
    /// A host stream sends bytes.
    HostWrite {
        which: u8,
        data: Vec<u8>,
    },
    /// A host stream reads what it has.
    HostRead {
        which: u8,
    },
    /// A host stream goes away.
    HostClose {
        which: u8,
    },
}

struct Host {
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
}

impl Host {
    fn pick(&mut self, which: u8) -> Option<&mut UnixStream> {
        let n = self.streams.len();
        self.streams.get_mut(usize::from(which) % n.max(1))
    }
}

/// A well-formed stream packet from the guest, in one chain of two
/// descriptors (header, payload) as Linux sends them.
fn packet(src: Port, dst: Port, op: u16, payload: &[u8]) -> Packet {
    Packet {
        src_cid: Cid::Guest,
        dst_cid: Cid::Host,
        src_port: src,
        dst_port: dst,
        len: None,
        stream: true,
        type_: TYPE_STREAM,
        op: op as u8,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
        payload: payload.to_vec(),
        split: vec![Len::Small(HDR_SIZE as u16)],
    }
}

fn send(d: &mut Driver, p: &Packet, tx_next: &mut u64) {
    let h = Header {
        src_cid: p.src_cid.get(),
        dst_cid: p.dst_cid.get(),
        src_port: p.src_port.get(),
        dst_port: p.dst_port.get(),
        len: p.len.unwrap_or(p.payload.len() as u32),
        // Ops 0..=8: the seven defined and two that are not.
        type_: if p.stream { TYPE_STREAM } else { p.type_ },
        op: u16::from(p.op % 9),
        flags: p.flags,
        buf_alloc: p.buf_alloc,
        fwd_cnt: p.fwd_cnt,
    };
    let mut bytes = h.encode().to_vec();
    bytes.extend_from_slice(&p.payload);
    // Each packet gets its own 128 KiB area (8 of them, reused in turn).
    let base = TXBUF + (*tx_next % 8) * 0x2_0000;
    *tx_next += 1;
    let total = bytes.len() as u64;
    let mut descs = Vec::new();
    let mut at = 0u64;
    for l in p.split.iter().take(moat_fuzz::MAX_CHAIN - 1) {
        let l = u64::from(l.get());
        if at >= total {
            break;
        }
        let l = l.min(total - at);
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
    let uds = dir().join("v.sock");
    let mut host = Host {
        listeners: Vec::new(),
        streams: Vec::new(),
    };
    for p in PORTS {
        let path = PathBuf::from(format!("{}_{p}", uds.display()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        host.listeners.push(l);
    }
    let mut d = Driver::new(|el| {
        let reg = EpollRegistrar::new(el.epoll(), 0);
        Box::new(Vsock::new(CID, &uds, reg).unwrap())
    });
    let mut tx_next = 0u64;
    let mut rx_next = 0u64;
    for op in &ops {
        match op {
            Op::GuestConnect {
                src,
                svc,
                buf_alloc,
            } => {
                let mut p = packet(Port::Guest(*src), Port::Service(*svc), OP_REQUEST, &[]);
                p.buf_alloc = *buf_alloc;
                send(&mut d, &p, &mut tx_next);
            }
            Op::GuestAccept { local, peer } => {
                let p = packet(Port::Guest(*peer), Port::Local(*local), OP_RESPONSE, &[]);
                send(&mut d, &p, &mut tx_next);
            }
            Op::GuestData {
                src,
                dst,
                fwd_cnt,
                payload,
            } => {
                let mut p = packet(*src, *dst, OP_RW, payload);
                p.fwd_cnt = *fwd_cnt;
                send(&mut d, &p, &mut tx_next);
            }
            Op::GuestCtrl {
                src,
                dst,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
            } => {
                let mut p = packet(*src, *dst, u16::from(*op), &[]);
                p.flags = *flags;
                p.buf_alloc = *buf_alloc;
                p.fwd_cnt = *fwd_cnt;
                send(&mut d, &p, &mut tx_next);
            }
            Op::Packet(p) => send(&mut d, p, &mut tx_next),
            Op::Guest(g) => d.apply(g),
            Op::Rx { n, len } => {
                for _ in 0..(n % 8) {
                    let base = RXBUF + (rx_next % 8) * 0x2_0000;
                    rx_next += 1;
                    d.vqs[RXQ as usize].push_chain(&[
                        (base, HDR_SIZE as u32, F_WRITE),
                        (base + 0x100, u32::from(*len), F_WRITE),
                    ]);
                }
                d.notify(RXQ);
            }
            Op::HostConnect(line) => {
                if host.streams.len() >= MAX_STREAMS {
                    continue;
                }
                let Ok(mut s) = UnixStream::connect(&uds) else {
                    continue;
                };
                let _ = s.set_nonblocking(true);
                let _ = match line {
                    HostLine::Connect(p) => {
                        s.write_all(format!("CONNECT {}\n", p.get()).as_bytes())
                    }
                    HostLine::Raw(b) => s.write_all(b),
                };
                host.streams.push(s);
            }
            Op::HostAccept => {
                for l in &host.listeners {
                    while host.streams.len() < MAX_STREAMS {
                        match l.accept() {
                            Ok((s, _)) => {
                                let _ = s.set_nonblocking(true);
                                host.streams.push(s);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            Op::HostWrite { which, data } => {
                if let Some(s) = host.pick(*which) {
                    let _ = s.write(data);
                }
            }
            Op::HostRead { which } => {
                if let Some(s) = host.pick(*which) {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b);
                }
            }
            Op::HostClose { which } => {
                if !host.streams.is_empty() {
                    let i = usize::from(*which) % host.streams.len();
                    host.streams.swap_remove(i);
                }
            }
        }
        // The event loop runs between the guest's steps: accepts, the
        // handshake, host streams readable or writable.
        d.pump();
    }
    d.pump();
    d.finish();
});
