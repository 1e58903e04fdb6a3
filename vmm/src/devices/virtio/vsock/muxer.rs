//! The connection multiplexer behind one vsock device: host streams from a
//! [`VsockBackend`] on one side, the guest's packets on the other. This file
//! holds the connection table, the host-side events (accept, handshake,
//! readiness, the request timer) and the scheduling of packets for the
//! guest's rx queue; `muxer/tx.rs` handles the packets the guest sends.

mod tx;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::backend::VsockBackend;
use super::connection::{Conn, Key, State, CONN_BUF_SIZE};
use super::handshake::Handshake;
use super::packet::*;
use super::request_timer::{RequestTimer, CONN_REQUEST_TIMEOUT};
use super::unix::UnixBackendError;
use crate::event_loop::EpollRegistrar;

/// Sub-token of the backend's listening fd (queue events use 0..=2).
pub const LISTENER_SUB: u32 = 8;
/// Sub-token of the connect-request timer.
pub const TIMER_SUB: u32 = 9;
const FIRST_CONN_SUB: u32 = 16;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Most connections (and handshakes in progress) at once.
pub const MAX_CONNS: usize = 1024;

/// Counters of the vsock backend.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VsockStats {
    /// Host-initiated connections established.
    pub host_connections: u64,
    /// Guest-initiated connections established.
    pub guest_connections: u64,
    /// Connections currently open.
    pub open_connections: u64,
    /// Payload bytes guest → host.
    pub bytes_from_guest: u64,
    /// Payload bytes host → guest.
    pub bytes_to_guest: u64,
    /// RST packets sent to the guest.
    pub resets_sent: u64,
    /// Malformed or misaddressed packets dropped.
    pub dropped: u64,
    /// Control packets for the guest dropped because its queue was full
    /// (a guest that posts no RX buffers while it keeps sending).
    pub ctrl_dropped: u64,
}

/// Control packets (REQUEST, RESPONSE, RST, SHUTDOWN, CREDIT_UPDATE)
/// waiting for the guest's RX buffers beyond which the device takes no more
/// guest packets: each guest packet queues at most one, so the queue stays
/// near this size whatever the guest does.
pub const CTRL_BACKLOG: usize = 256;

/// The hard bound on the control queue (host-side events, which the guest
/// does not pace, may add some past [`CTRL_BACKLOG`]); past it, control
/// packets are dropped and counted.
const CTRL_MAX: usize = CTRL_BACKLOG + MAX_CONNS + 64;

/// The connection multiplexer behind one vsock device.
pub struct Muxer<B: VsockBackend> {
    cid: u64,
    backend: B,
    reg: EpollRegistrar,
    handshakes: HashMap<u32, Handshake<B::Stream>>,
    conns: HashMap<Key, Conn<B::Stream>>,
    subs: HashMap<u32, Key>,
    next_sub: u32,
    next_local_port: u32,
    ctrl: VecDeque<Header>,
    stats: VsockStats,
    timer: RequestTimer,
    request_timeout: Duration,
}

impl<B: VsockBackend> Muxer<B> {
    /// A muxer for guest `cid`; registers the backend's listener and the
    /// request timer with `reg`.
    pub fn new(cid: u64, backend: B, reg: EpollRegistrar) -> Result<Self, UnixBackendError> {
        reg.add(backend.listener_fd(), LISTENER_SUB, EventSet::IN)
            .map_err(UnixBackendError::Epoll)?;
        let timer = RequestTimer::new().map_err(UnixBackendError::Epoll)?;
        reg.add(timer.fd(), TIMER_SUB, EventSet::IN)
            .map_err(UnixBackendError::Epoll)?;
        Ok(Self {
            cid,
            backend,
            reg,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            subs: HashMap::new(),
            next_sub: FIRST_CONN_SUB,
            next_local_port: FIRST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            stats: VsockStats::default(),
            timer,
            request_timeout: CONN_REQUEST_TIMEOUT,
        })
    }

    /// Overrides [`CONN_REQUEST_TIMEOUT`] (tests).
    #[cfg(test)]
    pub(crate) fn set_request_timeout(&mut self, t: Duration) {
        self.request_timeout = t;
    }

    /// Counters.
    pub fn stats(&self) -> VsockStats {
        let mut s = self.stats.clone();
        s.open_connections = self.conns.len() as u64;
        s
    }

    fn alloc_sub(&mut self) -> u32 {
        loop {
            let s = self.next_sub;
            self.next_sub = self.next_sub.checked_add(1).unwrap_or(FIRST_CONN_SUB);
            if !self.subs.contains_key(&s) && !self.handshakes.contains_key(&s) {
                return s;
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn header(&self, key: Key, op: u16, fwd_cnt: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt,
        }
    }

    /// Queues a control packet for the guest (reporting `fwd_cnt`).
    fn push_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        let mut fwd = 0;
        if let Some(c) = self.conns.get_mut(&key) {
            fwd = c.fwd_cnt;
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        let mut h = self.header(key, op, fwd);
        h.flags = flags;
        let same = |q: &Header| (q.src_port, q.dst_port) == key && q.op == op;
        // One RST per connection is enough; a newer credit update
        // replaces the queued one.
        if op == OP_RST && self.ctrl.iter().any(same) {
            return;
        }
        if op == OP_CREDIT_UPDATE {
            if let Some(q) = self.ctrl.iter_mut().find(|q| same(q)) {
                *q = h;
                return;
            }
        }
        if self.ctrl.len() >= CTRL_MAX {
            self.stats.ctrl_dropped += 1;
            return;
        }
        if op == OP_RST {
            self.stats.resets_sent += 1;
        }
        self.ctrl.push_back(h);
    }

    /// True while so many control packets wait for the guest's RX buffers
    /// that the device should take no more of its packets.
    pub fn tx_backed_up(&self) -> bool {
        self.ctrl.len() >= CTRL_BACKLOG
    }

    /// Drops a connection; its host stream is closed.
    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            if c.registered.is_some() {
                let _ = self.reg.remove(c.stream.as_raw_fd());
            }
            self.subs.remove(&c.sub);
        }
    }

    /// Resets the guest side: every connection is closed.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        self.ctrl.clear();
        self.timer.arm(None, false);
    }

    /// Handles readiness of a backend fd.
    pub fn handle_event(&mut self, sub: u32, events: EventSet) {
        if sub == LISTENER_SUB {
            self.accept_all();
        } else if sub == TIMER_SUB {
            self.expire_requests();
        } else if self.handshakes.contains_key(&sub) {
            self.read_handshake(sub);
        } else if let Some(&key) = self.subs.get(&sub) {
            let mut failed = false;
            if let Some(c) = self.conns.get_mut(&key) {
                if events.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP,
                ) {
                    c.readable = true;
                }
                if events.contains(EventSet::OUT) || events.contains(EventSet::ERROR) {
                    failed = c.flush().is_err();
                }
            }
            if failed {
                self.push_ctrl(key, OP_RST, 0);
                self.remove_conn(key);
            } else {
                self.maybe_credit_update(key, false);
            }
        }
        self.update_interest();
    }

    fn accept_all(&mut self) {
        loop {
            match self.backend.accept() {
                Ok(Some(stream)) => {
                    if self.handshakes.len() + self.conns.len() >= MAX_CONNS {
                        tracing::warn!("vsock: too many connections, refusing host client");
                        continue;
                    }
                    let sub = self.alloc_sub();
                    if self.reg.add(stream.as_raw_fd(), sub, EventSet::IN).is_ok() {
                        self.handshakes.insert(sub, Handshake::new(stream));
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("vsock accept: {e}");
                    return;
                }
            }
        }
    }

    fn read_handshake(&mut self, sub: u32) {
        let Some(hs) = self.handshakes.get_mut(&sub) else {
            return;
        };
        let Some(result) = hs.poll() else {
            return;
        };
        let Some(hs) = self.handshakes.remove(&sub) else {
            return;
        };
        let _ = self.reg.remove(hs.stream.as_raw_fd());
        let Some(peer_port) = result else {
            tracing::debug!(
                "vsock: bad handshake {:?}",
                String::from_utf8_lossy(&hs.line)
            );
            return;
        };
        let local = self.alloc_local_port(peer_port);
        let key = (local, peer_port);
        let deadline = Instant::now() + self.request_timeout;
        self.conns.insert(
            key,
            Conn::new(hs.stream, sub, State::LocalInit { deadline }),
        );
        self.subs.insert(sub, key);
        self.push_ctrl(key, OP_REQUEST, 0);
    }

    /// Gives up host-initiated requests the guest left unanswered past
    /// their deadline: RST to the guest, host stream closed.
    fn expire_requests(&mut self) {
        let now = Instant::now();
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.request_deadline().is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            tracing::debug!("vsock: guest did not answer request {key:?}");
            self.push_ctrl(key, OP_RST, 0);
            self.remove_conn(key);
        }
        // Clear the expiration that woke us, whatever the next deadline.
        let next = self.next_deadline();
        self.timer.arm(next, true);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.request_deadline())
            .min()
    }

    /// Brings the epoll interest of every connection, and the request
    /// timer, in line with the connection states.
    fn update_interest(&mut self) {
        for c in self.conns.values_mut() {
            let want = c.wants();
            let want = (!want.is_empty()).then_some(want);
            if want == c.registered {
                continue;
            }
            let fd = c.stream.as_raw_fd();
            let r = match (c.registered, want) {
                (None, Some(w)) => self.reg.add(fd, c.sub, w),
                (Some(_), Some(w)) => self.reg.modify(fd, c.sub, w),
                (Some(_), None) => self.reg.remove(fd),
                (None, None) => Ok(()),
            };
            match r {
                Ok(()) => c.registered = want,
                Err(e) => tracing::warn!("vsock epoll update: {e}"),
            }
        }
        let next = self.next_deadline();
        self.timer.arm(next, false);
    }

    fn maybe_credit_update(&mut self, key: Key, force: bool) {
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.credit_update_due(force))
        {
            self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Whether a packet is ready for the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || self.conns.values().any(Conn::has_rx)
    }

    /// Produces the next packet for the guest, with at most `max_payload`
    /// payload bytes, into `buf` (header + payload).
    pub fn next_rx(&mut self, max_payload: usize, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        loop {
            if let Some(h) = self.ctrl.pop_front() {
                buf.extend_from_slice(&h.encode());
                return true;
            }
            let Some((&key, c)) = self.conns.iter().find(|(_, c)| c.has_rx()) else {
                return false;
            };
            let hdr = self.header(key, OP_RW, c.fwd_cnt);
            let Some(c) = self.conns.get_mut(&key) else {
                return false;
            };
            let n = max_payload
                .min(c.peer_credit() as usize)
                .min(MAX_PKT_PAYLOAD as usize);
            buf.resize(HDR_SIZE + n, 0);
            match c.stream.read(&mut buf[HDR_SIZE..]) {
                Ok(0) if n > 0 => {
                    // The host closed its end.
                    c.readable = false;
                    c.host_eof = true;
                    buf.clear();
                    self.push_ctrl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                }
                Ok(0) => {
                    buf.clear();
                    c.readable = false;
                }
                Ok(got) => {
                    buf.truncate(HDR_SIZE + got);
                    c.tx_cnt = c.tx_cnt.wrapping_add(got as u32);
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    let mut h = hdr;
                    h.len = got as u32;
                    buf[..HDR_SIZE].copy_from_slice(&h.encode());
                    self.stats.bytes_to_guest += got as u64;
                    return true;
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    buf.clear();
                    c.readable = false;
                }
                Err(_) => {
                    buf.clear();
                    self.push_ctrl(key, OP_RST, 0);
                    self.remove_conn(key);
                }
            }
        }
    }

    /// Re-evaluates epoll interest after the rx queue was filled.
    pub fn after_rx(&mut self) {
        self.update_interest();
    }
}

#[cfg(test)]
mod tests;
