//! The device through the mmio transport, with the guest driver played by
//! [`VirtQueue`]s: the hybrid Unix backend end to end, and the test
//! backend for what needs control over the host side.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::super::packet::*;
use super::super::test_backend::{test_backend, TestBackend, TestHost};
use super::*;
use crate::devices::virtio::mmio::{tests::bring_up, MmioTransport};
use crate::devices::virtio::test_utils::{mem, VirtQueue};
use crate::devices::virtio::vsock::muxer::CTRL_BACKLOG;
use crate::event_loop::{EventHandler, EventLoop};

const CID: u64 = 3;
const RXBUF: u64 = 0x80_0000;
const TXBUF: u64 = 0xa0_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

struct Harness {
    el: EventLoop,
    t: MmioTransport,
    m: GuestMemoryMmap,
    rxq: VirtQueue,
    txq: VirtQueue,
    rx_next: u16,
    tx_next: u16,
    rx_used_seen: u16,
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
}

impl Harness {
    /// A device on the hybrid Unix backend.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let el = EventLoop::new().unwrap();
        let reg = EpollRegistrar::new(el.epoll(), 0);
        let dev = Vsock::new(CID, &uds, reg).unwrap();
        Self::with_device(el, Box::new(dev), dir, uds)
    }

    /// A device on the test backend.
    fn test() -> (Self, TestHost) {
        let el = EventLoop::new().unwrap();
        let reg = EpollRegistrar::new(el.epoll(), 0);
        let (b, host) = test_backend();
        let dev = Vsock::with_backend(CID, b, reg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("unused");
        (Self::with_device(el, Box::new(dev), dir, uds), host)
    }

    fn with_device(
        el: EventLoop,
        dev: Box<dyn VirtioDevice>,
        dir: tempfile::TempDir,
        uds: std::path::PathBuf,
    ) -> Self {
        let m = mem();
        let mut t = MmioTransport::new(dev, m.clone()).unwrap();
        let mut qs = bring_up(&mut t, &m, 1).into_iter();
        assert!(t.is_activated());
        // The handler is driven by hand; the loop only collects events.
        let _ = el.next_id();
        let (rxq, txq) = (qs.next().unwrap(), qs.next().unwrap());
        Self {
            el,
            t,
            m,
            rxq,
            txq,
            rx_next: 0,
            tx_next: 0,
            rx_used_seen: 0,
            _dir: dir,
            uds,
        }
    }

    /// Offers `n` rx buffers (header + 4 KiB each); buffer k is slot k % 8.
    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            let base = RXBUF + u64::from(self.rx_next % 8) * 0x2000;
            let head = self
                .rxq
                .push_chain(&[(base, HDR_SIZE as u32, W), (base + 0x100, 4096, W)]);
            assert_eq!(head, 2 * (self.rx_next % 8));
            self.rx_next += 1;
        }
        self.t.handle_event(0, EventSet::IN);
    }

    /// Offers one rx buffer of 20 bytes, too small for a header.
    fn give_small_rx(&mut self) {
        let base = RXBUF + u64::from(self.rx_next % 8) * 0x2000;
        self.rxq.push_chain(&[(base, 10, W), (base + 0x100, 10, W)]);
        self.rx_next += 1;
        self.t.handle_event(0, EventSet::IN);
    }

    /// Sends a packet from the guest.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let base = TXBUF + u64::from(self.tx_next % 8) * 0x2_0000;
        self.m.write_slice(&h.encode(), GuestAddress(base)).unwrap();
        self.m
            .write_slice(payload, GuestAddress(base + 0x100))
            .unwrap();
        self.txq.push_chain(&[
            (base, HDR_SIZE as u32, 0),
            (base + 0x100, payload.len().max(1) as u32, 0),
        ]);
        self.tx_next += 1;
        self.t.handle_event(1, EventSet::IN);
    }

    /// Packets the device put in the rx ring since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let idx = self.rxq.used_idx();
        let mut out = vec![];
        while self.rx_used_seen != idx {
            let (head, len) = self.rxq.used_elem(self.rx_used_seen);
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

    /// Drives every sub the epoll reports through the transport.
    fn drive_for(&mut self, ms: i32) {
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 16];
        for _ in 0..5 {
            let n = self.el.epoll().wait(ms, &mut events).unwrap();
            for ev in &events[..n] {
                let (_, sub) = crate::event_loop::split_token(ev.data());
                self.t.handle_event(sub, ev.event_set());
            }
        }
    }

    fn drive(&mut self) {
        self.drive_for(20);
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

#[test]
fn host_initiated_connection() {
    let mut h = Harness::new();
    h.give_rx(4);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    h.drive();
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
    h.drive();
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
    h.drive();
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
    h.drive();
    let pkts = h.received();
    assert_eq!(pkts[0].1, b"world");
    // No listener on the port: RST.
    h.send(guest_hdr(40001, 6000, OP_REQUEST), &[]);
    assert_eq!(h.received()[0].0.op, OP_RST);
}

#[test]
fn credit_is_respected() {
    let (mut h, host) = Harness::test();
    h.give_rx(8);
    host.listen(7);
    let mut req = guest_hdr(1, 7, OP_REQUEST);
    req.buf_alloc = 10;
    h.send(req, &[]);
    let mut s = host.take_dialled(7).unwrap();
    h.received();
    s.write_all(&[1u8; 100]).unwrap();
    h.drive();
    let got: usize = h.received().iter().map(|p| p.1.len()).sum();
    assert_eq!(got, 10);
    // Guest consumed the 10 bytes: more may flow.
    let mut upd = guest_hdr(1, 7, OP_CREDIT_UPDATE);
    upd.buf_alloc = 10;
    upd.fwd_cnt = 10;
    h.send(upd, &[]);
    h.drive();
    let got: usize = h.received().iter().map(|p| p.1.len()).sum();
    assert_eq!(got, 10);
}

#[test]
fn packets_wait_for_rx_buffers() {
    let (mut h, host) = Harness::test();
    let mut c = host.connect();
    c.write_all(b"CONNECT 1024\n").unwrap();
    h.drive();
    // No rx buffer yet: the REQUEST waits in the muxer.
    assert_eq!(h.rxq.used_idx(), 0);
    h.give_rx(1);
    let pkts = h.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    // A buffer too small for a header is returned empty (once there is
    // something to send), and the packet waits for the next one.
    h.give_small_rx();
    assert_eq!(h.rxq.used_idx(), 1);
    let mut c2 = host.connect();
    c2.write_all(b"CONNECT 1025\n").unwrap();
    h.drive();
    assert_eq!(h.rxq.last_used(), (2, (2, 0)));
    assert!(h.received()[0].1.is_empty());
    h.give_rx(1);
    let pkts = h.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_REQUEST, 1025));
    assert_eq!(h.t.irq().status() & 1, 1);
}

#[test]
fn connect_request_times_out_through_the_event_loop() {
    let (mut h, host) = Harness::test();
    h.t.with_device(|d, _| {
        let v = d.as_any_mut().downcast_mut::<Vsock<TestBackend>>().unwrap();
        v.muxer_mut().set_request_timeout(Duration::from_millis(50));
    });
    h.give_rx(4);
    let c = host.connect();
    (&c).write_all(b"CONNECT 1024\n").unwrap();
    let start = Instant::now();
    let mut pkts = vec![];
    while pkts.len() < 2 && start.elapsed() < Duration::from_secs(2) {
        h.drive_for(10);
        pkts.extend(h.received());
    }
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(
        (pkts[1].0.op, pkts[1].0.src_port, pkts[1].0.dst_port),
        (OP_RST, req.src_port, 1024)
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!((&c).read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(h.t.device().counters()["resets_sent"], 1);
    assert_eq!(h.t.device().counters()["open_connections"], 0);
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
    h.txq.write_desc(0, TXBUF, 10, 0, 0);
    h.txq.publish(0);
    h.t.handle_event(1, EventSet::IN);
    // Header descriptor outside guest memory.
    h.txq.write_desc(1, 0xffff_ffff_0000, 44, 0, 0);
    h.txq.publish(1);
    h.t.handle_event(1, EventSet::IN);
    // A descriptor loop (0 -> 1 -> 0).
    h.txq.write_desc(0, TXBUF, 44, 1, 1);
    h.txq.write_desc(1, TXBUF, 44, 1, 0);
    h.txq.publish(0);
    h.t.handle_event(1, EventSet::IN);
    assert_eq!(h.txq.used_idx(), h.tx_next + 3);
    // Bad handshakes just close the client.
    for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'A'; 100]] {
        let mut c = UnixStream::connect(&h.uds).unwrap();
        c.write_all(line).unwrap();
        h.drive();
        let mut b = [0u8; 1];
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    }
    assert!(h.received().is_empty());
}

#[test]
fn config_space_has_cid() {
    let h = Harness::new();
    let mut b = [0u8; 8];
    h.t.device().read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
}

/// A guest that floods the TX queue with no RX buffers posted: the device
/// stops taking its packets once the control backlog is full, and takes
/// the rest once the guest reads.
#[test]
fn a_flooding_guest_is_paced_by_its_own_rx() {
    let (mut h, _host) = Harness::test();
    // The backlog, then as many as the 16-entry ring holds unanswered.
    let flood = u16::try_from(CTRL_BACKLOG).unwrap() + 16;
    for i in 0..flood {
        // Each to a port of its own: each earns a RST.
        let at = TXBUF + u64::from(i) * 0x100;
        let hdr = guest_hdr(10_000 + u32::from(i), 2, OP_RW);
        h.m.write_slice(&hdr.encode(), GuestAddress(at)).unwrap();
        h.txq.push_chain(&[(at, HDR_SIZE as u32, 0)]);
        h.t.handle_event(1, EventSet::IN);
    }
    assert_eq!(usize::from(h.txq.used_idx()), CTRL_BACKLOG);
    let mut resets = 0;
    while resets < usize::from(flood) {
        h.give_rx(8);
        let got = h.received();
        assert!(
            !got.is_empty(),
            "the device stopped after {resets} resets; tx used {}",
            h.txq.used_idx()
        );
        resets += got.iter().filter(|(p, _)| p.op == OP_RST).count();
    }
    assert_eq!(h.txq.used_idx(), flood);
}
