//! The virtio-vsock device: rx/tx/event queues in front of the [`Muxer`].

use std::any::Any;
use std::io::{Read, Write};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, HDR_SIZE, MAX_PKT_PAYLOAD};
use super::unix::{Muxer, UnixBackendError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, QueueCtx, VirtioDevice, TYPE_VSOCK,
};
use crate::event_loop::EpollRegistrar;

const RXQ: usize = 0;
const TXQ: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];

/// The vsock device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    buf: Vec<u8>,
}

impl Vsock {
    /// A device for guest `cid` serving host clients on `uds`.
    pub fn new(cid: u64, uds: &Path, reg: EpollRegistrar) -> Result<Self, UnixBackendError> {
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, uds, reg)?,
            buf: Vec::new(),
        })
    }

    fn process_tx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(TXQ) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            match read_packet(ctx.mem, chain, &mut self.buf) {
                Some(h) => self.muxer.handle_tx(&h, &self.buf),
                None => tracing::debug!("vsock: dropping malformed tx packet"),
            }
            if q.add_used(ctx.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    fn process_rx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(RXQ) else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = q.pop_descriptor_chain(ctx.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut w = match Writer::new(ctx.mem, chain) {
                Ok(w) if w.available_bytes() >= HDR_SIZE => w,
                _ => {
                    // Unusable buffer: return it empty.
                    if q.add_used(ctx.mem, head, 0).is_err() {
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let max = w.available_bytes() - HDR_SIZE;
            if !self.muxer.next_rx(max, &mut self.buf) {
                undo_pop(q);
                break;
            }
            let len = match w.write_all(&self.buf) {
                Ok(()) => self.buf.len() as u32,
                Err(_) => 0,
            };
            if q.add_used(ctx.mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        self.muxer.after_rx();
        used
    }

    fn process(&mut self, ctx: &mut QueueCtx, tx: bool) {
        let mut used = false;
        if tx {
            used |= self.process_tx(ctx);
        }
        used |= self.process_rx(ctx);
        if used {
            ctx.irq.signal_used();
        }
    }
}

fn undo_pop(q: &mut Queue) {
    q.go_to_previous_position();
}

/// Reads header and payload of a tx chain; `None` if malformed.
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Option<Header> {
    let mut r = Reader::new(mem, chain).ok()?;
    let mut raw = [0u8; HDR_SIZE];
    r.read_exact(&mut raw).ok()?;
    let h = Header::decode(&raw);
    if h.len > MAX_PKT_PAYLOAD || h.len as usize > r.available_bytes() {
        return None;
    }
    buf.clear();
    buf.resize(h.len as usize, 0);
    r.read_exact(buf).ok()?;
    Some(h)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked: u64, ctx: &mut QueueCtx) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError("vsock needs 3 queues".into()));
        }
        self.process(ctx, false);
        Ok(())
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }

    fn queue_event(&mut self, queue: usize, ctx: &mut QueueCtx) {
        self.process(ctx, queue == TXQ);
    }

    fn backend_event(&mut self, sub: u32, events: EventSet, ctx: Option<&mut QueueCtx>) {
        self.muxer.handle_event(sub, events);
        if let Some(ctx) = ctx {
            self.process(ctx, false);
        }
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.muxer.stats()).unwrap_or_default()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::*;
    use super::*;
    use crate::devices::virtio::mmio::{tests::bring_up, MmioTransport};
    use crate::devices::virtio::test_utils::mem;
    use crate::event_loop::{EventHandler, EventLoop};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::{UnixListener, UnixStream};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::{Bytes, GuestAddress};

    const CID: u64 = 3;
    // MockSplitQueue::create placed queue i at 0x10_0000 * (i + 1) in bring_up.
    const RXQ_ADDR: u64 = 0x10_0000;
    const TXQ_ADDR: u64 = 0x20_0000;
    const RXBUF: u64 = 0x80_0000;
    const TXBUF: u64 = 0xa0_0000;
    // Ring offsets for a 16-entry queue (as MockSplitQueue lays it out).
    const AVAIL_OFF: u64 = 16 * 16;
    // (the mock places the used ring 4 + 16 bytes after the avail ring start).
    const USED_OFF: u64 = 16 * 16 + 20;

    struct Harness {
        el: EventLoop,
        t: MmioTransport,
        m: GuestMemoryMmap,
        rx_next: u16,
        tx_next: u16,
        rx_used_seen: u16,
        _dir: tempfile::TempDir,
        uds: std::path::PathBuf,
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("v.sock");
            let m = mem();
            let el = EventLoop::new().unwrap();
            let reg = EpollRegistrar::new(el.epoll(), 0);
            let dev = Vsock::new(CID, &uds, reg).unwrap();
            let mut t = MmioTransport::new(Box::new(dev), m.clone()).unwrap();
            bring_up(&mut t, &m, 1);
            assert!(t.is_activated());
            // The handler is driven by hand; the loop only collects events.
            let _ = el.next_id();
            Self {
                el,
                t,
                m,
                rx_next: 0,
                tx_next: 0,
                rx_used_seen: 0,
                _dir: dir,
                uds,
            }
        }

        /// Writes descriptors at table index `first` and makes `first` available.
        fn push_chain(&self, qaddr: u64, first: u16, descs: &[(u64, u32, u16, u16)]) {
            for (i, d) in descs.iter().enumerate() {
                let raw = RawDescriptor::from(SplitDescriptor::new(d.0, d.1, d.2, d.3));
                let at = qaddr + 16 * u64::from(first + i as u16);
                self.m.write_obj(raw, GuestAddress(at)).unwrap();
            }
            let avail = qaddr + AVAIL_OFF;
            let idx: u16 = self.m.read_obj(GuestAddress(avail + 2)).unwrap();
            self.m
                .write_obj(first, GuestAddress(avail + 4 + 2 * u64::from(idx % 16)))
                .unwrap();
            self.m
                .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
                .unwrap();
        }

        fn used_idx(&self, qaddr: u64) -> u16 {
            self.m.read_obj(GuestAddress(qaddr + USED_OFF + 2)).unwrap()
        }

        fn used_elem(&self, qaddr: u64, i: u16) -> (u32, u32) {
            let at = qaddr + USED_OFF + 4 + 8 * u64::from(i % 16);
            (
                self.m.read_obj(GuestAddress(at)).unwrap(),
                self.m.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        /// Offers `n` rx buffers (header + 4 KiB each).
        fn give_rx(&mut self, n: u16) {
            for _ in 0..n {
                let i = self.rx_next % 8;
                let base = RXBUF + u64::from(i) * 0x2000;
                let w = VRING_DESC_F_WRITE as u16;
                self.push_chain(
                    RXQ_ADDR,
                    2 * i,
                    &[
                        (base, HDR_SIZE as u32, w | 1, 2 * i + 1),
                        (base + 0x100, 4096, w, 0),
                    ],
                );
                self.rx_next += 1;
            }
            self.t.handle_event(0, EventSet::IN);
        }

        /// Sends a packet from the guest.
        fn send(&mut self, h: Header, payload: &[u8]) {
            let i = self.tx_next % 8;
            let base = TXBUF + u64::from(i) * 0x2_0000;
            self.m.write_slice(&h.encode(), GuestAddress(base)).unwrap();
            self.m
                .write_slice(payload, GuestAddress(base + 0x100))
                .unwrap();
            self.push_chain(
                TXQ_ADDR,
                2 * i,
                &[
                    (base, HDR_SIZE as u32, 1, 2 * i + 1),
                    (base + 0x100, payload.len().max(1) as u32, 0, 0),
                ],
            );
            self.tx_next += 1;
            self.t.handle_event(1, EventSet::IN);
        }

        /// Dispatches pending backend events.
        fn pump(&mut self) {
            for _ in 0..4 {
                let evs = self.el.run_once(20).unwrap();
                for (sub, ev) in evs {
                    let _ = sub;
                    let _ = ev;
                }
            }
        }

        /// Packets the device put in the rx ring since the last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let idx = self.used_idx(RXQ_ADDR);
            let mut out = vec![];
            while self.rx_used_seen != idx {
                let (head, len) = self.used_elem(RXQ_ADDR, self.rx_used_seen);
                let (head, len) = (u64::from(head), len as usize);
                let base = RXBUF + (head / 2) * 0x2000;
                let mut raw = [0u8; HDR_SIZE];
                self.m.read_slice(&mut raw, GuestAddress(base)).unwrap();
                let h = Header::decode(&raw);
                let mut data = vec![0u8; len.saturating_sub(HDR_SIZE)];
                self.m
                    .read_slice(&mut data, GuestAddress(base + 0x100))
                    .unwrap();
                out.push((h, data));
                self.rx_used_seen = self.rx_used_seen.wrapping_add(1);
            }
            out
        }

        fn backend(&mut self, sub: u32) {
            self.t.handle_event(sub, EventSet::IN | EventSet::OUT);
        }
    }

    fn guest_hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Drives all subs the epoll reported, through the transport.
    fn drive(h: &mut Harness) {
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 16];
        for _ in 0..5 {
            let n = h.el.epoll().wait(20, &mut events).unwrap();
            for ev in &events[..n] {
                let (_, sub) = crate::event_loop::split_token(ev.data());
                h.backend(sub);
            }
        }
    }

    #[test]
    fn host_initiated_connection() {
        let mut h = Harness::new();
        h.give_rx(4);
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        drive(&mut h);
        let pkts = h.received();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid, req.src_cid),
            (OP_REQUEST, 1024, CID, HOST_CID)
        );
        // Guest accepts.
        let mut resp = guest_hdr(1024, req.src_port, OP_RESPONSE);
        h.send(resp, &[]);
        let mut line = String::new();
        BufReader::new(client.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {}\n", req.src_port));
        // Host -> guest bytes.
        client.write_all(b"ping").unwrap();
        drive(&mut h);
        let pkts = h.received();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, OP_RW);
        assert_eq!(pkts[0].1, b"ping");
        // Guest -> host bytes.
        resp.op = OP_RW;
        resp.len = 4;
        h.send(resp, b"pong");
        let mut b = [0u8; 4];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
        // Host closes: guest gets SHUTDOWN, answers RST.
        drop(client);
        drive(&mut h);
        let pkts = h.received();
        assert_eq!(pkts.last().unwrap().0.op, OP_SHUTDOWN);
        resp.op = OP_RST;
        resp.len = 0;
        h.send(resp, &[]);
        let c = h.t.device().counters();
        assert_eq!(c["host_connections"], 1);
        assert_eq!(c["open_connections"], 0);
    }

    #[test]
    fn guest_initiated_connection() {
        let mut h = Harness::new();
        h.give_rx(4);
        let listener = UnixListener::bind(format!("{}_5000", h.uds.display())).unwrap();
        h.send(guest_hdr(40000, 5000, OP_REQUEST), &[]);
        let (mut s, _) = listener.accept().unwrap();
        let pkts = h.received();
        assert_eq!(pkts[0].0.op, OP_RESPONSE);
        let mut d = guest_hdr(40000, 5000, OP_RW);
        d.len = 5;
        h.send(d, b"hello");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        s.write_all(b"world").unwrap();
        drive(&mut h);
        let pkts = h.received();
        assert_eq!(pkts[0].1, b"world");
        // No listener on the port: RST.
        h.send(guest_hdr(40001, 6000, OP_REQUEST), &[]);
        assert_eq!(h.received()[0].0.op, OP_RST);
    }

    #[test]
    fn credit_is_respected() {
        let mut h = Harness::new();
        h.give_rx(8);
        let listener = UnixListener::bind(format!("{}_7", h.uds.display())).unwrap();
        let mut req = guest_hdr(1, 7, OP_REQUEST);
        req.buf_alloc = 10;
        h.send(req, &[]);
        let (mut s, _) = listener.accept().unwrap();
        h.received();
        s.write_all(&[1u8; 100]).unwrap();
        drive(&mut h);
        let got: usize = h.received().iter().map(|p| p.1.len()).sum();
        assert_eq!(got, 10);
        // Guest consumed the 10 bytes: more may flow.
        let mut upd = guest_hdr(1, 7, OP_CREDIT_UPDATE);
        upd.buf_alloc = 10;
        upd.fwd_cnt = 10;
        h.send(upd, &[]);
        drive(&mut h);
        let got: usize = h.received().iter().map(|p| p.1.len()).sum();
        assert_eq!(got, 10);
    }

    #[test]
    fn malformed_packets_never_panic() {
        let mut h = Harness::new();
        h.give_rx(8);
        // Wrong source CID: dropped silently.
        let mut bad = guest_hdr(1, 2, OP_REQUEST);
        bad.src_cid = 99;
        h.send(bad, &[]);
        // Wrong destination CID.
        let mut bad = guest_hdr(1, 2, OP_REQUEST);
        bad.dst_cid = 7;
        h.send(bad, &[]);
        assert!(h.received().is_empty());
        // Claimed length larger than the buffer: dropped.
        let mut bad = guest_hdr(1, 2, OP_RW);
        bad.len = 60000;
        h.send(bad, b"x");
        // Length above the maximum.
        bad.len = u32::MAX;
        h.send(bad, b"x");
        assert!(h.received().is_empty());
        // Unknown op / unknown connection / wrong type: RST.
        h.send(guest_hdr(1, 2, 99), &[]);
        h.send(guest_hdr(1, 2, OP_RW), &[]);
        let mut dgram = guest_hdr(1, 2, OP_REQUEST);
        dgram.type_ = 2;
        h.send(dgram, &[]);
        let pk = h.received();
        assert_eq!(pk.len(), 3);
        assert!(pk.iter().all(|p| p.0.op == OP_RST));
        // Truncated header (descriptor shorter than 44 bytes).
        h.push_chain(TXQ_ADDR, 0, &[(TXBUF, 10, 0, 0)]);
        h.t.handle_event(1, EventSet::IN);
        // Header descriptor outside guest memory.
        h.push_chain(TXQ_ADDR, 1, &[(0xffff_ffff_0000, 44, 0, 0)]);
        h.t.handle_event(1, EventSet::IN);
        // A descriptor loop (0 -> 1 -> 0).
        h.push_chain(TXQ_ADDR, 0, &[(TXBUF, 44, 1, 1), (TXBUF, 44, 1, 0)]);
        h.t.handle_event(1, EventSet::IN);
        assert_eq!(h.used_idx(TXQ_ADDR), h.tx_next + 3);
        // Bad handshakes just close the client.
        for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'A'; 100]] {
            let mut c = UnixStream::connect(&h.uds).unwrap();
            c.write_all(line).unwrap();
            drive(&mut h);
            let mut b = [0u8; 1];
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            assert_eq!(c.read(&mut b).unwrap_or(0), 0);
        }
        assert!(h.received().is_empty());
        h.pump();
    }

    #[test]
    fn config_space_has_cid() {
        let h = Harness::new();
        let mut b = [0u8; 8];
        h.t.device().read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), CID);
    }
}
