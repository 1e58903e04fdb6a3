//! A process's stdio as seen by the agent: pipes or a pty master, pumped
//! into bounded channels.
//!
//! Backpressure: a pump task reads at most [`CHUNK`] bytes at a time into a
//! channel of [`QUEUE`] chunks; when the host reads slower than the process
//! writes, the channel fills, the pump stops reading, the pipe fills and the
//! process blocks in write(). Memory stays bounded and nothing is dropped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Mutex};

/// Bytes read per chunk.
pub const CHUNK: usize = 32 * 1024;
/// Chunks buffered per stream (so at most CHUNK * QUEUE bytes per stream).
pub const QUEUE: usize = 8;

/// A non-blocking fd registered with tokio.
pub type Fd = Arc<AsyncFd<OwnedFd>>;

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Registers `fd` with the runtime (making it non-blocking).
pub fn async_fd(fd: OwnedFd) -> std::io::Result<Fd> {
    set_nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns `fd`, so the fd cannot be closed (and its
    // number reused) while it is registered.
    let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Arc::new(afd))
}

/// Reads once; `Ok(0)` is EOF (EIO on a pty master whose slave closed
/// counts as EOF).
pub async fn read(fd: &Fd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard
            .try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(std::io::Error::from))
        {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data`.
pub async fn write_all(fd: &Fd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// An output stream: chunks in order, `None` at EOF. Only one reader holds
/// it at a time; a reader that goes away releases it.
pub type Output = Arc<Mutex<mpsc::Receiver<Vec<u8>>>>;

/// Starts pumping `fd` into a bounded channel.
pub fn pump(fd: Fd) -> Output {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read(&fd, &mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(fd = fd.get_ref().as_raw_fd(), "output read: {e}");
                    break;
                }
            }
        }
    });
    Arc::new(Mutex::new(rx))
}

/// The agent's ends of a process's stdio.
pub struct ProcessIo {
    /// Where WriteStdin writes; `None` once closed (or never opened).
    pub stdin: Mutex<Option<Fd>>,
    /// stdout (or the terminal's output).
    pub stdout: Output,
    /// stderr; `None` with a terminal.
    pub stderr: Option<Output>,
    /// The pty master, for resizing.
    pub pty: Option<Fd>,
}

/// The child's ends, handed to the init stage as fds 0, 1, 2.
pub struct ChildStdio {
    /// fd 0 (`None`: /dev/null).
    pub stdin: Option<OwnedFd>,
    /// fd 1.
    pub stdout: OwnedFd,
    /// fd 2.
    pub stderr: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Creates the stdio of a new process: pipes, or, when `terminal`, only
/// /dev/null placeholders (the init stage allocates the pty inside the
/// container and sends the master back; see [`ProcessIo::from_console`]).
pub fn create(
    terminal: bool,
    open_stdin: bool,
) -> std::io::Result<(ChildStdio, Option<ProcessIo>)> {
    if terminal {
        let null = || -> std::io::Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?
                .into())
        };
        let child = ChildStdio {
            stdin: Some(null()?),
            stdout: null()?,
            stderr: null()?,
        };
        return Ok((child, None));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (child_in, agent_in) = if open_stdin {
        let (r, w) = pipe()?;
        (Some(r), Some(async_fd(w)?))
    } else {
        (None, None)
    };
    let child = ChildStdio {
        stdin: child_in,
        stdout: out_w,
        stderr: err_w,
    };
    let io = ProcessIo {
        stdin: Mutex::new(agent_in),
        stdout: pump(async_fd(out_r)?),
        stderr: Some(pump(async_fd(err_r)?)),
        pty: None,
    };
    Ok((child, Some(io)))
}

impl ProcessIo {
    /// The finished stdio of a launched process: the pipes made by
    /// [`create`], or the terminal built from the master the init stage sent.
    pub fn finish(pipes: Option<ProcessIo>, console: Option<OwnedFd>) -> std::io::Result<Self> {
        match (pipes, console) {
            (Some(io), _) => Ok(io),
            (None, Some(master)) => Self::from_console(master),
            (None, None) => Err(std::io::Error::other("the init stage sent no terminal")),
        }
    }

    /// The stdio of a process with a terminal, from its pty master.
    pub fn from_console(master: OwnedFd) -> std::io::Result<Self> {
        let master = async_fd(master)?;
        Ok(Self {
            stdin: Mutex::new(Some(master.clone())),
            stdout: pump(master.clone()),
            stderr: None,
            pty: Some(master),
        })
    }
}

/// Sets the terminal size on a pty master.
pub fn resize(pty: &Fd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on an open fd.
    if unsafe { libc::ioctl(pty.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_reader_gets_everything_with_bounded_buffering() {
        let (child, io) = create(false, true).unwrap();
        let io = io.unwrap();
        // A writer thread pushes 2 MiB through the "child" stdout end.
        let total = 2 * 1024 * 1024;
        drop(child.stderr);
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(child.stdout);
            let block: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
            let mut sent = 0;
            while sent < total {
                std::io::Write::write_all(&mut f, &block).unwrap();
                sent += block.len();
            }
        });
        // Nobody reads for a while: the writer must block, not buffer 2 MiB.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !writer.is_finished(),
            "writer was not blocked by backpressure"
        );
        let mut rx = io.stdout.lock().await;
        let mut got = 0usize;
        let mut expect = (0..=255u8).cycle();
        while let Some(chunk) = rx.recv().await {
            assert!(chunk.len() <= CHUNK);
            got += chunk.len();
            for b in chunk {
                assert_eq!(Some(b), expect.next());
            }
        }
        assert_eq!(got, total);
        writer.join().unwrap();
    }
}
