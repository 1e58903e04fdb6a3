//! The line protocol of host-initiated connections: the host client sends
//! `CONNECT <port>\n`; once the guest accepted, the VMM answers
//! `OK <host port>\n` and bytes flow.

use std::io::{ErrorKind, Read};

/// Longest `CONNECT` line accepted (without the newline).
pub const MAX_HANDSHAKE: usize = 32;

/// A host stream whose `CONNECT` line is still being read.
pub(super) struct Handshake<S> {
    /// The host stream.
    pub stream: S,
    /// The bytes of the line read so far.
    pub line: Vec<u8>,
}

impl<S: Read> Handshake<S> {
    /// A handshake on a freshly accepted stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            line: Vec::new(),
        }
    }

    /// Reads what is available: `None` while the line is incomplete,
    /// `Some(Some(port))` for a valid request, `Some(None)` when the client
    /// must be dropped (EOF, error, overlong or malformed line).
    pub fn poll(&mut self) -> Option<Option<u32>> {
        // Byte by byte, so no payload after the newline is consumed.
        loop {
            let mut b = [0u8; 1];
            match self.stream.read(&mut b) {
                Ok(0) => return Some(None),
                Ok(_) if b[0] == b'\n' => return Some(parse_connect(&self.line)),
                Ok(_) => {
                    self.line.push(b[0]);
                    if self.line.len() > MAX_HANDSHAKE {
                        return Some(None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => return Some(None),
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// The answer to an accepted request: `OK <local port>\n`.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
        assert_eq!(ok_line(7), "OK 7\n");
    }

    #[test]
    fn poll_reads_up_to_the_newline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut h = Handshake::new(b);
        assert_eq!(h.poll(), None);
        a.write_all(b"CONNECT 5").unwrap();
        assert_eq!(h.poll(), None);
        a.write_all(b"2\npayload").unwrap();
        assert_eq!(h.poll(), Some(Some(52)));
        // The payload stays in the stream.
        let mut rest = [0u8; 7];
        h.stream.set_nonblocking(false).unwrap();
        h.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"payload");
        // Overlong lines and EOF end the handshake.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut h = Handshake::new(b);
        a.write_all(&[b'C'; MAX_HANDSHAKE + 1]).unwrap();
        assert_eq!(h.poll(), Some(None));
        drop(a);
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(Handshake::new(b).poll(), Some(None));
    }
}
