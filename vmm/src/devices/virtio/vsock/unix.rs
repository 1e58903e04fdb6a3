//! The hybrid Unix-socket backend: guest vsock connections are mapped to
//! host `AF_UNIX` streams.
//!
//! - host → guest: a client connects to `<uds>`, sends `CONNECT <port>\n`;
//!   once the guest accepts, the VMM answers `OK <host port>\n` and relays bytes.
//! - guest → host: a guest connect to (CID 2, port P) makes the VMM connect to
//!   `<uds>_<P>`.
//!
//! Flow control follows the virtio-vsock credit scheme in both directions.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use crate::event_loop::EpollRegistrar;

/// Sub-token of the listening socket (queue events use 0..=2).
pub const LISTENER_SUB: u32 = 8;
const FIRST_CONN_SUB: u32 = 16;
/// Receive buffer we advertise per connection (guest → host bytes we may buffer).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this many forwarded bytes are unreported.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const MAX_HANDSHAKE: usize = 32;
const MAX_CONNS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
}

/// (host-side port, guest-side port).
type Key = (u32, u32);

struct Conn {
    stream: UnixStream,
    sub: u32,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes forwarded from the guest to the host stream.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest → host bytes the host stream has not taken yet.
    pending: VecDeque<u8>,
    /// The host stream has data (or EOF) to read.
    readable: bool,
    host_eof: bool,
    peer_no_more_send: bool,
    peer_no_more_recv: bool,
    registered: Option<EventSet>,
}

impl Conn {
    fn new(stream: UnixStream, sub: u32, state: State) -> Self {
        Self {
            stream,
            sub,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending: VecDeque::new(),
            readable: false,
            host_eof: false,
            peer_no_more_send: false,
            peer_no_more_recv: false,
            registered: None,
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
            .min(self.peer_buf_alloc)
    }

    fn wants(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established
            && !self.readable
            && !self.host_eof
            && !self.peer_no_more_recv
            && self.peer_credit() > 0
        {
            e |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Writes as much of `pending` as the host stream takes.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.peer_no_more_send {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

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
}

/// Errors setting up the backend.
#[derive(Debug, thiserror::Error)]
pub enum UnixBackendError {
    /// Binding the listening socket failed.
    #[error("binding vsock socket {0}: {1}")]
    Bind(String, std::io::Error),
    /// Registering with epoll failed.
    #[error("registering vsock socket with epoll: {0}")]
    Epoll(std::io::Error),
}

/// A packet for the guest: header plus payload to read from a connection.
pub enum RxPacket {
    /// A control packet with no payload.
    Control(Header),
    /// Payload from connection `key` (up to the given size is read later).
    Data(Key),
}

/// The connection multiplexer behind one vsock device.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    reg: EpollRegistrar,
    handshakes: HashMap<u32, Handshake>,
    conns: HashMap<Key, Conn>,
    subs: HashMap<u32, Key>,
    next_sub: u32,
    next_local_port: u32,
    ctrl: VecDeque<Header>,
    stats: VsockStats,
}

impl Muxer {
    /// Binds `uds` (replacing a stale socket file) and registers it.
    pub fn new(cid: u64, uds: &Path, reg: EpollRegistrar) -> Result<Self, UnixBackendError> {
        let bind_err = |e| UnixBackendError::Bind(uds.display().to_string(), e);
        if let Ok(m) = std::fs::symlink_metadata(uds) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(uds);
            }
        }
        let listener = UnixListener::bind(uds).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        reg.add(listener.as_raw_fd(), LISTENER_SUB, EventSet::IN)
            .map_err(UnixBackendError::Epoll)?;
        Ok(Self {
            cid,
            uds: uds.to_path_buf(),
            listener,
            reg,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            subs: HashMap::new(),
            next_sub: FIRST_CONN_SUB,
            next_local_port: FIRST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            stats: VsockStats::default(),
        })
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

    fn header(&self, key: Key, op: u16, conn: Option<&Conn>) -> Header {
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
            fwd_cnt: conn.map_or(0, |c| c.fwd_cnt),
        }
    }

    fn push_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        let conn = self.conns.get_mut(&key);
        let fwd = conn.as_ref().map_or(0, |c| c.fwd_cnt);
        if let Some(c) = conn {
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        let mut h = self.header(key, op, None);
        h.fwd_cnt = fwd;
        h.flags = flags;
        if op == OP_RST {
            self.stats.resets_sent += 1;
        }
        self.ctrl.push_back(h);
    }

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
    }

    /// Handles readiness of a backend fd.
    pub fn handle_event(&mut self, sub: u32, events: EventSet) {
        if sub == LISTENER_SUB {
            self.accept_all();
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
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() + self.conns.len() >= MAX_CONNS {
                        tracing::warn!("vsock: too many connections, refusing host client");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let sub = self.alloc_sub();
                    if self.reg.add(stream.as_raw_fd(), sub, EventSet::IN).is_ok() {
                        self.handshakes.insert(
                            sub,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::warn!("vsock accept: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn read_handshake(&mut self, sub: u32) {
        let Some(hs) = self.handshakes.get_mut(&sub) else {
            return;
        };
        // Byte by byte, so no payload after the newline is consumed.
        let mut done = None;
        loop {
            let mut b = [0u8; 1];
            match hs.stream.read(&mut b) {
                Ok(0) => {
                    done = Some(None);
                    break;
                }
                Ok(_) if b[0] == b'\n' => {
                    done = Some(parse_connect(&hs.line));
                    break;
                }
                Ok(_) => {
                    hs.line.push(b[0]);
                    if hs.line.len() > MAX_HANDSHAKE {
                        done = Some(None);
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    done = Some(None);
                    break;
                }
            }
        }
        let Some(result) = done else {
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
        self.conns
            .insert(key, Conn::new(hs.stream, sub, State::LocalInit));
        self.subs.insert(sub, key);
        self.push_ctrl(key, OP_REQUEST, 0);
    }

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
    }

    fn maybe_credit_update(&mut self, key: Key, force: bool) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        let unreported = c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent);
        if unreported > 0
            && (force
                || unreported >= CREDIT_UPDATE_THRESHOLD
                || c.pending.is_empty() && unreported >= CONN_BUF_SIZE / 16)
        {
            self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Handles one packet the guest sent; `payload` is its data.
    pub fn handle_tx(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            self.stats.dropped += 1;
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.push_ctrl(key, OP_RST, 0);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (OP_REQUEST, None) => self.guest_connect(key, h),
            (OP_RESPONSE, Some(State::LocalInit)) => {
                let mut ok = false;
                if let Some(c) = self.conns.get_mut(&key) {
                    c.state = State::Established;
                    let line = format!("OK {}\n", key.0);
                    ok = c.stream.write_all(line.as_bytes()).is_ok();
                }
                if ok {
                    self.stats.host_connections += 1;
                } else {
                    self.push_ctrl(key, OP_RST, 0);
                    self.remove_conn(key);
                }
            }
            (OP_RW, Some(State::Established)) => self.guest_data(key, payload),
            (OP_CREDIT_UPDATE, Some(_)) => {}
            (OP_CREDIT_REQUEST, Some(State::Established)) => {
                self.push_ctrl(key, OP_CREDIT_UPDATE, 0)
            }
            (OP_SHUTDOWN, Some(_)) => {
                let both =
                    h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if both {
                    if let Some(c) = self.conns.get_mut(&key) {
                        let _ = c.flush();
                    }
                    self.push_ctrl(key, OP_RST, 0);
                    self.remove_conn(key);
                } else if let Some(c) = self.conns.get_mut(&key) {
                    if h.flags & SHUTDOWN_SEND != 0 {
                        c.peer_no_more_send = true;
                        if c.pending.is_empty() {
                            let _ = c.stream.shutdown(std::net::Shutdown::Write);
                        }
                    }
                    if h.flags & SHUTDOWN_RCV != 0 {
                        c.peer_no_more_recv = true;
                    }
                }
            }
            (OP_RST, _) => self.remove_conn(key),
            (_, None) => {
                self.stats.dropped += 1;
                self.push_ctrl(key, OP_RST, 0);
            }
            _ => {
                // Unknown op or an op not valid in this state.
                self.stats.dropped += 1;
                self.push_ctrl(key, OP_RST, 0);
                self.remove_conn(key);
            }
        }
        self.update_interest();
    }

    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.len() >= MAX_CONNS {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.0));
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(stream) => {
                let sub = self.alloc_sub();
                let mut c = Conn::new(stream, sub, State::Established);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                self.conns.insert(key, c);
                self.subs.insert(sub, key);
                self.stats.guest_connections += 1;
                self.push_ctrl(key, OP_RESPONSE, 0);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connect to {:?}: {e}", path);
                self.push_ctrl(key, OP_RST, 0);
            }
        }
    }

    fn guest_data(&mut self, key: Key, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        self.stats.bytes_from_guest += payload.len() as u64;
        c.pending.extend(payload);
        let over = c.pending.len() > CONN_BUF_SIZE as usize;
        let failed = c.flush().is_err();
        if over || failed {
            // The guest ignored our credit or the host side is gone.
            self.push_ctrl(key, OP_RST, 0);
            self.remove_conn(key);
            return;
        }
        self.maybe_credit_update(key, false);
    }

    /// Whether a packet is ready for the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty()
            || self.conns.values().any(|c| {
                c.readable
                    && c.state == State::Established
                    && !c.peer_no_more_recv
                    && (c.host_eof || c.peer_credit() > 0)
            })
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
            let Some((&key, _)) = self.conns.iter().find(|(_, c)| {
                c.readable
                    && c.state == State::Established
                    && !c.peer_no_more_recv
                    && (c.host_eof || c.peer_credit() > 0)
            }) else {
                return false;
            };
            let hdr = {
                let Some(c) = self.conns.get(&key) else {
                    return false;
                };
                self.header(key, OP_RW, Some(c))
            };
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

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
