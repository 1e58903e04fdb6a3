//! An in-memory [`VsockBackend`] for tests: host clients and host services
//! are the far ends of `UnixStream::pair()`s the test holds. [`Mux`] drives
//! a muxer over it with a real epoll, as the device would.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::muxer::Muxer;
use super::packet::*;
use crate::event_loop::{split_token, EpollRegistrar};

#[derive(Default)]
struct Shared {
    /// Device ends of host clients not accepted yet.
    incoming: VecDeque<UnixStream>,
    /// Host ports that accept guest connections.
    listening: HashSet<u32>,
    /// Host ends of guest-initiated connections, per port.
    dialled: HashMap<u32, VecDeque<UnixStream>>,
    /// Every `connect` call, refused or not.
    connects: u64,
}

/// The backend half, owned by the muxer.
pub(crate) struct TestBackend {
    shared: Arc<Mutex<Shared>>,
    /// Readable while clients wait in `incoming` (the "listener").
    evt: EventFd,
}

/// The test's half: plays the host's clients and services.
pub(crate) struct TestHost {
    shared: Arc<Mutex<Shared>>,
    evt: EventFd,
}

/// A backend and the handle the test keeps.
pub(crate) fn test_backend() -> (TestBackend, TestHost) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let host = TestHost {
        shared: shared.clone(),
        evt: evt.try_clone().unwrap(),
    };
    (TestBackend { shared, evt }, host)
}

impl TestHost {
    /// A host client connecting to the device; the test holds the returned end.
    pub fn connect(&self) -> UnixStream {
        let (client, dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        self.shared.lock().unwrap().incoming.push_back(dev);
        self.evt.write(1).unwrap();
        client
    }

    /// Lets guest connections to host `port` succeed.
    pub fn listen(&self, port: u32) {
        self.shared.lock().unwrap().listening.insert(port);
    }

    /// The host end of the oldest guest connection to `port` not taken yet.
    pub fn take_dialled(&self, port: u32) -> Option<UnixStream> {
        self.shared
            .lock()
            .unwrap()
            .dialled
            .get_mut(&port)
            .and_then(VecDeque::pop_front)
    }

    /// How many times the muxer dialled.
    pub fn connects(&self) -> u64 {
        self.shared.lock().unwrap().connects
    }
}

impl VsockBackend for TestBackend {
    type Stream = UnixStream;

    fn listener_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn accept(&mut self) -> std::io::Result<Option<UnixStream>> {
        let mut s = self.shared.lock().unwrap();
        let next = s.incoming.pop_front();
        if s.incoming.is_empty() {
            // Drain the counter: the "listener" is no longer readable.
            let _ = self.evt.read();
        }
        Ok(next)
    }

    fn connect(&mut self, port: u32) -> std::io::Result<UnixStream> {
        let mut s = self.shared.lock().unwrap();
        s.connects += 1;
        if !s.listening.contains(&port) {
            return Err(ErrorKind::ConnectionRefused.into());
        }
        let (host, dev) = UnixStream::pair()?;
        dev.set_nonblocking(true)?;
        s.dialled.entry(port).or_default().push_back(host);
        Ok(dev)
    }
}

/// The guest's CID in the muxer tests.
pub(crate) const CID: u64 = 3;

/// A muxer on the test backend, its epoll, and the test's host handle.
pub(crate) struct Mux {
    pub epoll: Arc<Epoll>,
    pub m: Muxer<TestBackend>,
    pub host: TestHost,
}

impl Mux {
    pub fn new() -> Self {
        let epoll = Arc::new(Epoll::new().unwrap());
        let (backend, host) = test_backend();
        let m = Muxer::new(CID, backend, EpollRegistrar::new(epoll.clone(), 0)).unwrap();
        Self { epoll, m, host }
    }

    /// Dispatches the ready events until none arrive within `ms`.
    pub fn pump_for(&mut self, ms: i32) {
        let mut evs = [EpollEvent::default(); 64];
        for _ in 0..100 {
            let n = self.epoll.wait(ms, &mut evs).unwrap();
            if n == 0 {
                return;
            }
            for ev in &evs[..n] {
                self.m
                    .handle_event(split_token(ev.data()).1, ev.event_set());
            }
        }
    }

    pub fn pump(&mut self) {
        self.pump_for(20);
    }

    /// Everything the muxer has for the guest, as the device would take it
    /// with 4 KiB rx buffers.
    pub fn rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = vec![];
        let mut buf = vec![];
        while self.m.has_rx() && self.m.next_rx(4096, &mut buf) {
            let mut raw = [0u8; HDR_SIZE];
            raw.copy_from_slice(&buf[..HDR_SIZE]);
            out.push((Header::decode(&raw), buf[HDR_SIZE..].to_vec()));
        }
        self.m.after_rx();
        out
    }

    pub fn rx_ops(&mut self) -> Vec<u16> {
        self.rx().iter().map(|p| p.0.op).collect()
    }

    pub fn send(&mut self, h: Header, payload: &[u8]) {
        let mut h = h;
        h.len = payload.len() as u32;
        self.m.handle_tx(&h, payload);
    }

    /// A host client through the handshake; returns it and the REQUEST.
    pub fn host_request(&mut self, port: u32) -> (UnixStream, Header) {
        let mut c = self.host.connect();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.pump();
        let pkts = self.rx();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        (c, pkts[0].0)
    }

    /// An established host-initiated connection; returns the client and the
    /// guest's header template for it.
    pub fn host_conn(&mut self, port: u32) -> (UnixStream, Header) {
        let (c, req) = self.host_request(port);
        let g = guest_hdr(port, req.src_port, OP_RESPONSE);
        self.send(g, &[]);
        let ok = read_line(&c);
        assert_eq!(ok, format!("OK {}\n", req.src_port));
        (c, g)
    }

    /// An established guest-initiated connection to host `port`.
    pub fn guest_conn(&mut self, src: u32, port: u32, buf_alloc: u32) -> (UnixStream, Header) {
        self.host.listen(port);
        let mut g = guest_hdr(src, port, OP_REQUEST);
        g.buf_alloc = buf_alloc;
        self.send(g, &[]);
        assert_eq!(self.rx_ops(), [OP_RESPONSE]);
        (self.host.take_dialled(port).unwrap(), g)
    }
}

/// A header from the guest.
pub(crate) fn guest_hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// Reads one line (with a 2 s timeout).
pub(crate) fn read_line(s: &UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = vec![];
    let mut b = [0u8; 1];
    while (&*s).read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    line.push(b'\n');
    String::from_utf8(line).unwrap()
}

/// Whether the peer of `s` closed it (EOF within a short wait).
pub(crate) fn closed(s: &UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 16];
    match (&*s).read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// Raises the soft fd limit to at least `want` (within the hard limit).
pub(crate) fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    assert_eq!(rc, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: setrlimit reads the rlimit we own.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
        assert_eq!(rc, 0);
    }
}
