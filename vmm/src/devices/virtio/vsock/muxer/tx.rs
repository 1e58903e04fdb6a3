//! The packets the guest sends: connection requests and answers, data,
//! credit, shutdown and reset.

use std::io::Write;

use super::super::backend::VsockBackend;
use super::super::connection::{Conn, Key, State};
use super::super::handshake::ok_line;
use super::super::packet::*;
use super::{Muxer, MAX_CONNS};

impl<B: VsockBackend> Muxer<B> {
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
            c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        }
        // Some(true): established; Some(false): our request is pending.
        let established = self.conns.get(&key).map(Conn::established);
        match (h.op, established) {
            (OP_REQUEST, None) => self.guest_connect(key, h),
            (OP_RESPONSE, Some(false)) => self.guest_accepted(key),
            (OP_RW, Some(true)) => self.guest_data(key, payload),
            (OP_CREDIT_UPDATE, Some(_)) => {}
            (OP_CREDIT_REQUEST, Some(true)) => self.push_ctrl(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, Some(_)) => self.guest_shutdown(key, h.flags),
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

    /// The guest accepted a host-initiated connection: `OK <port>\n`.
    fn guest_accepted(&mut self, key: Key) {
        let mut ok = false;
        if let Some(c) = self.conns.get_mut(&key) {
            c.state = State::Established;
            ok = c.stream.write_all(ok_line(key.0).as_bytes()).is_ok();
        }
        if ok {
            self.stats.host_connections += 1;
        } else {
            self.push_ctrl(key, OP_RST, 0);
            self.remove_conn(key);
        }
    }

    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.len() >= MAX_CONNS {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        match self.backend.connect(key.0) {
            Ok(stream) => {
                let sub = self.alloc_sub();
                let mut c = Conn::new(stream, sub, State::Established);
                c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
                self.conns.insert(key, c);
                self.subs.insert(sub, key);
                self.stats.guest_connections += 1;
                self.push_ctrl(key, OP_RESPONSE, 0);
            }
            Err(_) => self.push_ctrl(key, OP_RST, 0),
        }
    }

    fn guest_data(&mut self, key: Key, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        self.stats.bytes_from_guest += payload.len() as u64;
        if c.push_from_guest(payload).is_err() {
            // The guest ignored our credit or the host side is gone.
            self.push_ctrl(key, OP_RST, 0);
            self.remove_conn(key);
            return;
        }
        self.maybe_credit_update(key, false);
    }

    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if flags & both == both {
            if let Some(c) = self.conns.get_mut(&key) {
                let _ = c.flush();
            }
            self.push_ctrl(key, OP_RST, 0);
            self.remove_conn(key);
        } else if let Some(c) = self.conns.get_mut(&key) {
            if flags & SHUTDOWN_SEND != 0 {
                c.peer_shutdown_send();
            }
            if flags & SHUTDOWN_RCV != 0 {
                c.peer_no_more_recv = true;
            }
        }
    }
}
