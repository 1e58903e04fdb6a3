//! One vsock connection: its state, the host stream it relays to, and the
//! virtio-vsock credit accounting in both directions.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::backend::HostStream;

/// Receive buffer we advertise per connection (guest → host bytes we may buffer).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this many forwarded bytes are unreported.
pub(super) const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE
    /// until the deadline.
    LocalInit {
        /// When the request is given up (RST to the guest, host stream closed).
        deadline: Instant,
    },
    /// Data flows.
    Established,
}

/// (host-side port, guest-side port).
pub(super) type Key = (u32, u32);

/// A connection between a guest port and a host stream.
pub(super) struct Conn<S> {
    /// The host end.
    pub stream: S,
    /// Epoll sub-token of `stream`.
    pub sub: u32,
    /// Connection state.
    pub state: State,
    /// The guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed from its receive buffer.
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub tx_cnt: u32,
    /// Bytes forwarded from the guest to the host stream.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last reported to the guest.
    pub last_fwd_cnt_sent: u32,
    /// Guest → host bytes the host stream has not taken yet.
    pub pending: VecDeque<u8>,
    /// The host stream has data (or EOF) to read.
    pub readable: bool,
    /// The host stream reached EOF.
    pub host_eof: bool,
    /// The guest will send no more data.
    pub peer_no_more_send: bool,
    /// The guest will receive no more data.
    pub peer_no_more_recv: bool,
    /// The interest set registered with epoll, if any.
    pub registered: Option<EventSet>,
}

impl<S: HostStream> Conn<S> {
    /// A fresh connection on `stream`.
    pub fn new(stream: S, sub: u32, state: State) -> Self {
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

    /// Whether data flows.
    pub fn established(&self) -> bool {
        self.state == State::Established
    }

    /// The deadline of an unanswered host-initiated request.
    pub fn request_deadline(&self) -> Option<Instant> {
        match self.state {
            State::LocalInit { deadline } => Some(deadline),
            State::Established => None,
        }
    }

    /// Bytes the guest can still take (its buffer minus bytes in flight).
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
            .min(self.peer_buf_alloc)
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Whether host data (or the host's EOF) can be sent to the guest now.
    pub fn has_rx(&self) -> bool {
        self.readable
            && self.established()
            && !self.peer_no_more_recv
            && (self.host_eof || self.peer_credit() > 0)
    }

    /// The epoll interest the connection needs on its host stream.
    pub fn wants(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.established()
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

    /// Forwarded bytes not yet reported to the guest, if a credit update
    /// is due (`force`: any unreported byte is enough).
    pub fn credit_update_due(&self, force: bool) -> bool {
        let unreported = self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        unreported > 0
            && (force
                || unreported >= CREDIT_UPDATE_THRESHOLD
                || self.pending.is_empty() && unreported >= CONN_BUF_SIZE / 16)
    }

    /// Queues guest bytes for the host stream and writes what it takes;
    /// an error means the connection must be reset (the guest overran its
    /// credit or the host stream failed).
    pub fn push_from_guest(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.pending.extend(payload);
        let over = self.pending.len() > CONN_BUF_SIZE as usize;
        self.flush()?;
        if over {
            return Err(std::io::Error::other("guest overran its credit"));
        }
        Ok(())
    }

    /// Writes as much of `pending` as the host stream takes.
    pub fn flush(&mut self) -> std::io::Result<()> {
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
            let _ = self.stream.shutdown_write();
        }
        Ok(())
    }

    /// The guest shut down its sending side: close the host stream's write
    /// side once the pending bytes are out.
    pub fn peer_shutdown_send(&mut self) {
        self.peer_no_more_send = true;
        if self.pending.is_empty() {
            let _ = self.stream.shutdown_write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 16, State::Established);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants().contains(EventSet::IN));
        c.update_peer_credit(100, 0);
        assert_eq!(c.peer_credit(), 100);
        assert!(c.wants().contains(EventSet::IN));
        c.tx_cnt = 60;
        assert_eq!(c.peer_credit(), 40);
        c.tx_cnt = 100;
        assert_eq!(c.peer_credit(), 0);
        assert!(c.wants().is_empty());
        c.update_peer_credit(100, 70);
        assert_eq!(c.peer_credit(), 70);
        // Wrapping counters.
        c.tx_cnt = 10;
        c.update_peer_credit(100, u32::MAX - 9);
        assert_eq!(c.peer_credit(), 80);
        // A bogus fwd_cnt ahead of tx_cnt never yields more than buf_alloc.
        c.update_peer_credit(100, 50);
        assert_eq!(c.peer_credit(), 100);
    }

    #[test]
    fn credit_update_thresholds() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 16, State::Established);
        assert!(!c.credit_update_due(true));
        c.fwd_cnt = 1;
        assert!(c.credit_update_due(true));
        assert!(!c.credit_update_due(false));
        c.fwd_cnt = CONN_BUF_SIZE / 16;
        assert!(c.credit_update_due(false));
        c.pending.push_back(0);
        assert!(!c.credit_update_due(false));
        c.fwd_cnt = CREDIT_UPDATE_THRESHOLD;
        assert!(c.credit_update_due(false));
    }

    #[test]
    fn guest_overrun_is_an_error() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 16, State::Established);
        // The host end never reads: the socket buffer fills, then ours.
        let chunk = vec![0u8; 64 * 1024];
        let mut failed = false;
        for _ in 0..64 {
            if c.push_from_guest(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(c.pending.len() > CONN_BUF_SIZE as usize);
    }
}
