//! virtio-vsock with the Firecracker-style hybrid Unix-socket backend.
//!
//! - `device.rs`: the virtio device — rx/tx/event queues in front of the muxer.
//! - `packet.rs`: the 44-byte packet header and the protocol constants.
//! - `muxer.rs`: the connection table, host-side events (accept, handshake,
//!   readiness, request timer) and the scheduling of packets for the rx queue;
//!   `muxer/tx.rs`: the packets the guest sends.
//! - `connection.rs`: one connection's state and its credit accounting.
//! - `request_timer.rs`: the connect-request timeout of host-initiated
//!   connections (timerfd on the event loop).
//! - `handshake.rs`: the `CONNECT <port>\n` / `OK <port>\n` line protocol.
//! - `backend.rs`: the [`backend::VsockBackend`] trait (accept host streams,
//!   dial guest-initiated ones); `unix.rs`: its hybrid Unix-socket
//!   implementation (`<uds>` listener, `<uds>_<P>` dial).
//! - `test_backend.rs` (tests only): an in-memory backend on socket pairs.

pub mod backend;
mod connection;
pub mod device;
pub mod handshake;
pub mod muxer;
pub mod packet;
mod request_timer;
#[cfg(test)]
mod test_backend;
pub mod unix;

pub use connection::CONN_BUF_SIZE;
pub use device::Vsock;
pub use request_timer::CONN_REQUEST_TIMEOUT;
