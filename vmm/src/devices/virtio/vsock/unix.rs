//! The hybrid Unix-socket backend: guest vsock connections are mapped to
//! host `AF_UNIX` streams.
//!
//! - host → guest: a client connects to `<uds>`, sends `CONNECT <port>\n`;
//!   once the guest accepts, the VMM answers `OK <host port>\n` and relays
//!   bytes (see [`super::handshake`]).
//! - guest → host: a guest connect to (CID 2, port P) makes the VMM connect to
//!   `<uds>_<P>`.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::backend::VsockBackend;

/// Errors setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum UnixBackendError {
    /// Binding the listening socket failed.
    #[error("binding vsock socket {0}: {1}")]
    Bind(String, std::io::Error),
    /// Registering with epoll (or creating the request timer) failed.
    #[error("registering vsock socket with epoll: {0}")]
    Epoll(std::io::Error),
}

/// Host streams from the `<uds>` listener; guest connects dial `<uds>_<P>`.
pub struct UnixBackend {
    uds: PathBuf,
    listener: UnixListener,
}

impl UnixBackend {
    /// Binds `uds` (replacing a stale socket file), non-blocking.
    pub fn bind(uds: &Path) -> Result<Self, UnixBackendError> {
        let bind_err = |e| UnixBackendError::Bind(uds.display().to_string(), e);
        if let Ok(m) = std::fs::symlink_metadata(uds) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(uds);
            }
        }
        let listener = UnixListener::bind(uds).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            uds: uds.to_path_buf(),
            listener,
        })
    }

    /// The socket a guest connect to host port `port` dials: `<uds>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{port}"));
        path.into()
    }
}

impl VsockBackend for UnixBackend {
    type Stream = UnixStream;

    fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn accept(&mut self) -> std::io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        return Ok(Some(stream));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn connect(&mut self, port: u32) -> std::io::Result<UnixStream> {
        let path = self.port_path(port);
        let s = UnixStream::connect(&path).map_err(|e| {
            tracing::debug!("vsock: guest connect to {:?}: {e}", path);
            e
        })?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn accept_and_connect() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        // A stale socket file is replaced.
        drop(UnixListener::bind(&uds).unwrap());
        let mut b = UnixBackend::bind(&uds).unwrap();
        assert!(b.accept().unwrap().is_none());
        let mut client = UnixStream::connect(&uds).unwrap();
        let mut s = b.accept().unwrap().unwrap();
        client.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        assert!(b.accept().unwrap().is_none());
        // Guest connects dial <uds>_<port>.
        assert!(b.connect(77).is_err());
        let l = UnixListener::bind(format!("{}_77", uds.display())).unwrap();
        assert_eq!(b.port_path(77), dir.path().join("v.sock_77"));
        let _s = b.connect(77).unwrap();
        assert!(l.accept().is_ok());
        // A regular file at the path is not replaced.
        let f = dir.path().join("file");
        std::fs::write(&f, b"keep").unwrap();
        assert!(UnixBackend::bind(&f).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
    }
}
