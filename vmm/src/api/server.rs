//! Socket handling of the control API: accept clients, frame lines, and
//! take the file descriptors a client passes with a request (SCM_RIGHTS:
//! a jailed VMM cannot open the host files moatd attaches).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::event_loop::EpollRegistrar;

/// Longest accepted request line.
pub const MAX_LINE: usize = 64 * 1024;
const MAX_CLIENTS: usize = 64;
/// Most passed files a client may have waiting for their requests.
const MAX_PENDING_FILES: usize = 4;

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Files passed with bytes not yet framed into a request.
    files: VecDeque<File>,
}

/// One request line, with the file its client passed along with it.
pub struct RequestLine {
    /// The client, for [`ApiServer::respond`].
    pub client: u32,
    /// The line, trimmed.
    pub text: String,
    /// A file passed with the request (SCM_RIGHTS), if any.
    pub file: Option<File>,
}

/// The listening socket and its clients.
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    reg: EpollRegistrar,
    listener_sub: u32,
    first_client_sub: u32,
    next_sub: u32,
    clients: HashMap<u32, Client>,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket) and registers it with
    /// `listener_sub`; clients get subs from `first_client_sub` upwards.
    pub fn bind(
        path: &Path,
        reg: EpollRegistrar,
        listener_sub: u32,
        first_client_sub: u32,
    ) -> std::io::Result<Self> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        reg.add(listener.as_raw_fd(), listener_sub, EventSet::IN)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            reg,
            listener_sub,
            first_client_sub,
            next_sub: first_client_sub,
            clients: HashMap::new(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `sub` belongs to this server.
    pub fn owns(&self, sub: u32) -> bool {
        sub == self.listener_sub || self.clients.contains_key(&sub)
    }

    /// Handles an event; returns complete request lines with their client
    /// (a file passed with a line's bytes goes with the first line they
    /// complete).
    pub fn handle_event(&mut self, sub: u32) -> Vec<RequestLine> {
        if sub == self.listener_sub {
            self.accept();
            return Vec::new();
        }
        let mut lines = Vec::new();
        let mut close = false;
        if let Some(c) = self.clients.get_mut(&sub) {
            let mut chunk = [0u8; 4096];
            match c.stream.recv_with_fd(&mut chunk) {
                Ok((0, _)) => close = true,
                Ok((n, file)) => {
                    if let Some(f) = file {
                        if c.files.len() < MAX_PENDING_FILES {
                            c.files.push_back(f);
                        }
                    }
                    c.buf.extend_from_slice(&chunk[..n]);
                    while let Some(pos) = c.buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = c.buf.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1])
                            .trim()
                            .to_string();
                        if !text.is_empty() {
                            lines.push(RequestLine {
                                client: sub,
                                text,
                                file: c.files.pop_front(),
                            });
                        }
                    }
                    if c.buf.len() > MAX_LINE {
                        let _ = c
                            .stream
                            .write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n");
                        close = true;
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
                Err(_) => close = true,
            }
        }
        if close {
            self.close(sub);
        }
        lines
    }

    /// Sends one answer line to client `sub`.
    pub fn respond(&mut self, sub: u32, line: &str) {
        let failed = match self.clients.get_mut(&sub) {
            Some(c) => {
                // Answers are small; a short blocking write is fine here.
                let _ = c.stream.set_nonblocking(false);
                let r = c
                    .stream
                    .write_all(line.as_bytes())
                    .and_then(|_| c.stream.write_all(b"\n"));
                let _ = c.stream.set_nonblocking(true);
                r.is_err()
            }
            None => false,
        };
        if failed {
            self.close(sub);
        }
    }

    fn close(&mut self, sub: u32) {
        if let Some(c) = self.clients.remove(&sub) {
            let _ = self.reg.remove(c.stream.as_raw_fd());
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let sub = self.next_sub;
                    self.next_sub = self
                        .next_sub
                        .checked_add(1)
                        .unwrap_or(self.first_client_sub);
                    if self.reg.add(stream.as_raw_fd(), sub, EventSet::IN).is_ok() {
                        self.clients.insert(
                            sub,
                            Client {
                                stream,
                                buf: Vec::new(),
                                files: VecDeque::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_loop::EventLoop;
    use std::io::{BufRead, BufReader};

    #[test]
    fn lines_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let el = EventLoop::new().unwrap();
        let mut srv =
            ApiServer::bind(&path, EpollRegistrar::new(el.epoll(), u32::MAX), 2, 100).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        let mut got = Vec::new();
        c.write_all(b"{\"op\":\"state\"}\n{\"op\":").unwrap();
        for _ in 0..3 {
            for (sub, _) in el.run_once(100).unwrap() {
                got.extend(srv.handle_event(sub));
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "{\"op\":\"state\"}");
        assert!(got[0].file.is_none());
        srv.respond(got[0].client, "{\"ok\":true}");
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        assert_eq!(line, "{\"ok\":true}\n");
        // An endless line is cut off.
        c.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap_or(());
        for _ in 0..40 {
            for (sub, _) in el.run_once(20).unwrap() {
                srv.handle_event(sub);
            }
        }
        assert!(srv.clients.is_empty());
    }

    /// A file sent with a request's bytes arrives with that request.
    #[test]
    fn files_come_with_their_request() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let el = EventLoop::new().unwrap();
        let mut srv =
            ApiServer::bind(&path, EpollRegistrar::new(el.epoll(), u32::MAX), 2, 100).unwrap();
        let data = dir.path().join("disk.img");
        std::fs::write(&data, b"image bytes").unwrap();
        let file = File::open(&data).unwrap();
        let c = UnixStream::connect(&path).unwrap();
        c.send_with_fd(b"{\"op\":\"attach_drive\"}\n".as_slice(), file.as_raw_fd())
            .unwrap();
        drop(file);
        let mut got = Vec::new();
        for _ in 0..3 {
            for (sub, _) in el.run_once(100).unwrap() {
                got.extend(srv.handle_event(sub));
            }
        }
        assert_eq!(got.len(), 1);
        let mut text = String::new();
        got.remove(0)
            .file
            .expect("the passed file")
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "image bytes");
    }
}
