//! What the muxer needs from the host side: a source of host-initiated
//! streams and a way to dial guest-initiated ones. The hybrid Unix-socket
//! backend ([`super::unix::UnixBackend`]) is the production one; tests use
//! in-memory socket pairs.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// The host end of one vsock connection: a non-blocking byte stream whose
/// fd the muxer polls with epoll.
pub trait HostStream: Read + Write + AsRawFd + Send + 'static {
    /// Closes the write side (the guest sent SHUTDOWN with "no more send").
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// The host side of a vsock device.
///
/// Host-initiated connections arrive on [`Self::listener_fd`] and are taken
/// with [`Self::accept`]; the muxer then reads the `CONNECT <port>\n`
/// handshake from them. Guest-initiated connections to host port `P` are
/// dialled with [`Self::connect`]. Every stream must be non-blocking.
pub trait VsockBackend: Send + 'static {
    /// The host streams this backend hands out.
    type Stream: HostStream;

    /// The fd that becomes readable when [`Self::accept`] has a stream;
    /// the muxer registers it with epoll.
    fn listener_fd(&self) -> RawFd;

    /// The next pending host-initiated stream; `Ok(None)` when none is
    /// pending (the listener fd is then no longer readable).
    fn accept(&mut self) -> std::io::Result<Option<Self::Stream>>;

    /// Opens a stream to host port `port` for a guest-initiated connection.
    fn connect(&mut self, port: u32) -> std::io::Result<Self::Stream>;
}
