//! The muxer driven through the in-memory test backend and a real epoll.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EpollEvent;

use super::super::connection::CONN_BUF_SIZE;
use super::super::packet::*;
use super::super::test_backend::{closed, guest_hdr, raise_fd_limit, read_line, Mux, CID};
use super::{CTRL_BACKLOG, FIRST_LOCAL_PORT, MAX_CONNS};

#[test]
fn host_initiated_connect_and_data() {
    let mut x = Mux::new();
    let (mut c, req) = x.host_request(1024);
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port),
        (OP_REQUEST, HOST_CID, CID, 1024)
    );
    assert_eq!(req.src_port, FIRST_LOCAL_PORT);
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let mut g = guest_hdr(1024, req.src_port, OP_RESPONSE);
    x.send(g, &[]);
    assert_eq!(read_line(&c), format!("OK {}\n", req.src_port));
    // Host -> guest.
    c.write_all(b"ping").unwrap();
    x.pump();
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, &pkts[0].1[..]), (OP_RW, &b"ping"[..]));
    assert_eq!(pkts[0].0.len, 4);
    assert_eq!(
        (pkts[0].0.src_port, pkts[0].0.dst_port),
        (req.src_port, 1024)
    );
    // Guest -> host.
    g.op = OP_RW;
    x.send(g, b"pong");
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    // Enough forwarded bytes with nothing pending: a credit update.
    let big = vec![7u8; (CONN_BUF_SIZE / 16) as usize];
    x.send(g, &big);
    let mut sink = vec![0u8; big.len()];
    c.read_exact(&mut sink).unwrap();
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.fwd_cnt, 4 + CONN_BUF_SIZE / 16);
    // A credit request is answered.
    g.op = OP_CREDIT_REQUEST;
    x.send(g, &[]);
    assert_eq!(x.rx_ops(), [OP_CREDIT_UPDATE]);
    // Host closes: SHUTDOWN to the guest, which answers RST.
    drop(c);
    x.pump();
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.op = OP_RST;
    x.send(g, &[]);
    let s = x.m.stats();
    assert_eq!((s.host_connections, s.open_connections), (1, 0));
    assert_eq!(
        (s.bytes_to_guest, s.bytes_from_guest),
        (4, big.len() as u64 + 4)
    );
}

#[test]
fn guest_initiated_connect() {
    let mut x = Mux::new();
    // Nothing listens on the port: RST, nothing opened.
    x.send(guest_hdr(40000, 5000, OP_REQUEST), &[]);
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 40000));
    assert_eq!(x.host.connects(), 1);
    let (mut s, mut g) = x.guest_conn(40001, 5000, 64 * 1024);
    g.op = OP_RW;
    x.send(g, b"hello");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s.write_all(b"world").unwrap();
    x.pump();
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"world");
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 40001));
    // A second REQUEST on a live connection is a protocol error.
    g.op = OP_REQUEST;
    x.send(g, &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    assert!(closed(&s));
    let st = x.m.stats();
    assert_eq!((st.guest_connections, st.open_connections), (1, 0));
}

#[test]
fn guest_credit_is_respected() {
    let mut x = Mux::new();
    let (mut s, g) = x.guest_conn(1, 7, 10);
    s.write_all(&[1u8; 100]).unwrap();
    x.pump();
    let got: usize = x.rx().iter().map(|p| p.1.len()).sum();
    assert_eq!(got, 10);
    // The guest's buffer is full: nothing more, however long we wait.
    x.pump();
    assert!(x.rx().is_empty());
    assert!(!x.m.has_rx());
    // A credit update without consumption changes nothing.
    let mut upd = g;
    upd.op = OP_CREDIT_UPDATE;
    upd.buf_alloc = 10;
    x.send(upd, &[]);
    x.pump();
    assert!(x.rx().is_empty());
    // The guest consumed 10 bytes: 10 more may flow.
    upd.fwd_cnt = 10;
    x.send(upd, &[]);
    x.pump();
    let pkts = x.rx();
    assert_eq!(pkts.iter().map(|p| p.1.len()).sum::<usize>(), 10);
    // A bigger buffer lets the rest through.
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 20;
    x.send(upd, &[]);
    x.pump();
    assert_eq!(x.rx().iter().map(|p| p.1.len()).sum::<usize>(), 80);
}

#[test]
fn guest_overrunning_our_credit_is_reset() {
    let mut x = Mux::new();
    let (s, mut g) = x.guest_conn(1, 7, 1000);
    // The host service never reads; the guest sends past CONN_BUF_SIZE.
    g.op = OP_RW;
    let chunk = vec![0u8; MAX_PKT_PAYLOAD as usize];
    let mut sent = 0;
    while x.m.stats().open_connections == 1 {
        x.send(g, &chunk);
        sent += chunk.len();
        assert!(sent < 64 * CONN_BUF_SIZE as usize);
    }
    assert!(sent > CONN_BUF_SIZE as usize);
    assert_eq!(x.rx_ops().last(), Some(&OP_RST));
    drop(s);
}

#[test]
fn guest_rst_and_shutdown_close_the_host_stream() {
    let mut x = Mux::new();
    // RST: host stream closed, nothing sent back.
    let (s, mut g) = x.guest_conn(1, 7, 1000);
    g.op = OP_RST;
    x.send(g, &[]);
    assert!(closed(&s));
    assert!(x.rx().is_empty());
    assert_eq!(x.m.stats().open_connections, 0);
    // SHUTDOWN of both directions: pending data is flushed, host stream
    // closed, RST to the guest.
    let (s, mut g) = x.guest_conn(2, 7, 1000);
    g.op = OP_RW;
    x.send(g, b"last");
    g.op = OP_SHUTDOWN;
    g.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    x.send(g, &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    let mut got = vec![];
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    (&s).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last");
    // SHUTDOWN of the guest's sending side only: the host sees EOF but may
    // still write to the guest.
    let (mut s, mut g) = x.guest_conn(3, 7, 1000);
    g.op = OP_SHUTDOWN;
    g.flags = SHUTDOWN_SEND;
    x.send(g, &[]);
    assert!(closed(&s));
    s.write_all(b"still").unwrap();
    x.pump();
    assert_eq!(x.rx()[0].1, b"still");
    // ... and the guest's receiving side too: no more data to the guest.
    g.flags = SHUTDOWN_RCV;
    x.send(g, &[]);
    s.write_all(b"dropped").unwrap();
    x.pump();
    assert!(x.rx().is_empty());
    assert_eq!(x.m.stats().open_connections, 1);
}

#[test]
fn unanswered_request_times_out() {
    let mut x = Mux::new();
    x.m.set_request_timeout(Duration::from_millis(100));
    let (c, req) = x.host_request(1024);
    // A second client whose request the guest answers in time.
    let (mut answered, g) = x.host_conn(1025);
    let start = Instant::now();
    // Nothing happens before the deadline...
    x.pump_for(20);
    assert!(x.rx().is_empty());
    // ...then the timer fires: RST for the first request only.
    while start.elapsed() < Duration::from_secs(2) && !x.m.has_rx() {
        x.pump_for(50);
    }
    let pkts = x.rx();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(
        (pkts[0].0.src_port, pkts[0].0.dst_port),
        (req.src_port, 1024)
    );
    assert!(closed(&c));
    let st = x.m.stats();
    assert_eq!((st.resets_sent, st.open_connections), (1, 1));
    // The timer was cleared: no further wake-ups, the other one still works.
    let mut evs = [EpollEvent::default(); 4];
    assert_eq!(x.epoll.wait(150, &mut evs).unwrap(), 0);
    answered.write_all(b"alive").unwrap();
    x.pump();
    assert_eq!(x.rx()[0].1, b"alive");
    // A late RESPONSE for the expired request gets a RST.
    x.send(guest_hdr(1024, req.src_port, OP_RESPONSE), &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    let _ = g;
}

#[test]
fn connection_cap() {
    raise_fd_limit(3 * MAX_CONNS as u64 + 256);
    let mut x = Mux::new();
    x.host.listen(7);
    // buf_alloc 0: the connections need no epoll interest.
    for i in 0..MAX_CONNS as u32 {
        let mut g = guest_hdr(10_000 + i, 7, OP_REQUEST);
        g.buf_alloc = 0;
        x.send(g, &[]);
    }
    assert_eq!(x.m.stats().open_connections, MAX_CONNS as u64);
    assert!(x.rx().iter().all(|p| p.0.op == OP_RESPONSE));
    let dials = x.host.connects();
    // One more from the guest: RST without dialling.
    x.send(guest_hdr(1, 7, OP_REQUEST), &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    assert_eq!(x.host.connects(), dials);
    // One more from the host: dropped before the handshake.
    let c = x.host.connect();
    x.pump();
    assert!(closed(&c));
    assert!(x.rx().is_empty());
    // Closing one makes room again.
    x.send(guest_hdr(10_000, 7, OP_RST), &[]);
    x.send(guest_hdr(1, 7, OP_REQUEST), &[]);
    assert_eq!(x.rx_ops(), [OP_RESPONSE]);
    assert_eq!(x.m.stats().open_connections, MAX_CONNS as u64);
}

#[test]
fn malformed_handshakes_drop_the_client() {
    let mut x = Mux::new();
    let lines: [&[u8]; 5] = [
        b"HELLO\n",
        b"CONNECT abc\n",
        b"CONNECT -1\n",
        &[b'A'; 100],
        b"CONNECT 1024",
    ];
    for (i, line) in lines.iter().enumerate() {
        let mut c = x.host.connect();
        c.write_all(line).unwrap();
        if i == lines.len() - 1 {
            // No newline, then EOF.
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        x.pump();
        assert!(closed(&c), "line {i} kept open");
    }
    assert!(x.rx().is_empty());
    // A handshake split across reads still works.
    let mut c = x.host.connect();
    c.write_all(b"CONN").unwrap();
    x.pump();
    assert!(x.rx().is_empty());
    c.write_all(b"ECT 9\n").unwrap();
    x.pump();
    assert_eq!(x.rx_ops(), [OP_REQUEST]);
    assert_eq!(x.m.stats().open_connections, 1);
}

#[test]
fn reset_closes_everything() {
    let mut x = Mux::new();
    let (a, _) = x.host_conn(1);
    let (b, _) = x.host_request(2);
    let (s, _) = x.guest_conn(5, 7, 100);
    x.m.reset();
    assert!(closed(&a) && closed(&b) && closed(&s));
    assert!(!x.m.has_rx());
    assert_eq!(x.m.stats().open_connections, 0);
}

#[test]
fn misaddressed_packets() {
    let mut x = Mux::new();
    let mut bad = guest_hdr(1, 2, OP_REQUEST);
    bad.src_cid = 99;
    x.send(bad, &[]);
    bad.src_cid = CID;
    bad.dst_cid = 7;
    x.send(bad, &[]);
    assert!(x.rx().is_empty());
    assert_eq!(x.m.stats().dropped, 2);
    // Datagram type: RST unless it is a RST.
    let mut dgram = guest_hdr(1, 2, OP_REQUEST);
    dgram.type_ = 2;
    x.send(dgram, &[]);
    dgram.op = OP_RST;
    x.send(dgram, &[]);
    // Unknown connection: RST, one for the connection while it waits.
    x.send(guest_hdr(1, 2, OP_RW), &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    x.send(guest_hdr(1, 2, OP_RW), &[]);
    assert_eq!(x.rx_ops(), [OP_RST]);
    assert_eq!(x.host.connects(), 0);
}

/// A guest that sends without end and posts no RX buffers: the control
/// packets waiting for it stay bounded, and the device is told to stop
/// taking its packets.
#[test]
fn a_guest_that_never_reads_keeps_the_control_queue_bounded() {
    let mut x = Mux::new();
    for port in 0..20_000 {
        x.send(guest_hdr(port, 2, OP_RW), &[]);
        x.send(guest_hdr(port, 2, OP_RW), &[]);
    }
    assert!(x.m.tx_backed_up());
    let stats = x.m.stats();
    assert!(stats.ctrl_dropped > 0);
    let queued = x.rx().len();
    assert!(queued <= CTRL_BACKLOG + MAX_CONNS + 64, "{queued}");
    assert!(!x.m.tx_backed_up());
}
