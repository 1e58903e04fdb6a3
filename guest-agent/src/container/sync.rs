//! The setup channel between the agent and the re-executed init stage: a
//! SOCK_SEQPACKET socket pair (one JSON message per packet, so the init
//! stage and its child can both report without interleaving), passed to
//! the init stage as fd [`INIT_SYNC_FD`].

use super::spec::{ContainerPlan, ProcessPlan};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// The fd number of the channel in the init stage.
pub const INIT_SYNC_FD: i32 = 3;

/// The argument that makes the agent binary run as the init stage.
pub const INIT_ARG: &str = "__moat_container_init";

/// Largest message accepted (a plan with a big seccomp profile fits).
const MAX_MSG: usize = 4 << 20;

/// What the agent asks the init stage to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum InitRequest {
    /// Create a container and wait for "start".
    Create(Box<ContainerPlan>),
    /// Run a process in the namespaces of `target_pid`.
    Exec {
        /// Pid of the container's init (agent's view).
        target_pid: i32,
        /// The process.
        process: Box<ProcessPlan>,
    },
    /// Hold the pod's shared namespaces.
    Holder {
        /// New IPC namespace.
        ipc: bool,
        /// New UTS namespace.
        uts: bool,
        /// New PID namespace (the holder is its PID 1).
        pid: bool,
        /// Hostname to set in the new UTS namespace.
        hostname: Option<String>,
        /// Sysctls of the new IPC/UTS namespaces: (path under
        /// `/proc/sys`, value).
        sysctls: Vec<(String, String)>,
    },
}

/// What the init stage reports back.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum InitReport {
    /// Pid (agent's view) of the process that will become the container.
    Pid(i32),
    /// Set up; waiting for "start" (create) or about to exec (exec).
    Ready,
    /// Setup failed.
    Error(String),
    /// The pty master of the process's terminal rides along (SCM_RIGHTS).
    Console,
}

/// What the agent sends after the plan.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Control {
    /// Exec the container process now.
    Start,
}

/// One end of the channel.
pub struct Channel {
    fd: OwnedFd,
}

/// Channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The other end closed.
    #[error("channel closed")]
    Closed,
    /// Timed out.
    #[error("timed out waiting for the init stage")]
    Timeout,
    /// Socket error.
    #[error("channel: {0}")]
    Sys(#[from] nix::Error),
    /// Bad message.
    #[error("channel message: {0}")]
    Json(#[from] serde_json::Error),
}

impl Channel {
    /// A connected pair (agent end, init-stage end), both close-on-exec.
    pub fn pair() -> nix::Result<(Channel, OwnedFd)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, b))
    }

    /// Wraps an fd (the init stage's [`INIT_SYNC_FD`]).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Channel { fd }
    }

    /// The socket.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        let buf = serde_json::to_vec(msg)?;
        send(self.fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Sends one message with `fd` attached (SCM_RIGHTS).
    pub fn send_with_fd<T: Serialize>(&self, msg: &T, fd: i32) -> Result<(), ChannelError> {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let buf = serde_json::to_vec(msg)?;
        let iov = [std::io::IoSlice::new(&buf)];
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Receives one message and any fd attached to it.
    pub fn recv_with_fd<T: for<'de> Deserialize<'de>>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(T, Option<OwnedFd>), ChannelError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        use std::os::fd::FromRawFd;
        if let Some(t) = timeout {
            let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, i64::from(t.subsec_micros()));
            nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        }
        let mut buf = vec![0u8; MAX_MSG];
        let mut cmsg_space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fd = None;
                    for c in msg.cmsgs().map_err(ChannelError::Sys)? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for (i, raw) in fds.into_iter().enumerate() {
                                // SAFETY: the kernel just installed this fd
                                // for us; we own it from here on.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                if i == 0 {
                                    fd = Some(owned);
                                }
                            }
                        }
                    }
                    break (msg.bytes, fd);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Err(ChannelError::Timeout),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(ChannelError::Closed);
        }
        Ok((serde_json::from_slice(&buf[..n])?, fd))
    }

    /// Receives one message; `timeout` of `None` waits forever.
    pub fn recv<T: for<'de> Deserialize<'de>>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<T, ChannelError> {
        if let Some(t) = timeout {
            let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, i64::from(t.subsec_micros()));
            nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        }
        let mut buf = vec![0u8; MAX_MSG];
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Err(ChannelError::Timeout),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(ChannelError::Closed);
        }
        Ok(serde_json::from_slice(&buf[..n])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_boundaries() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b);
        b.send(&InitReport::Pid(42)).unwrap();
        b.send(&InitReport::Ready).unwrap();
        assert_eq!(a.recv::<InitReport>(None).unwrap(), InitReport::Pid(42));
        assert_eq!(a.recv::<InitReport>(None).unwrap(), InitReport::Ready);
        assert!(matches!(
            a.recv::<InitReport>(Some(Duration::from_millis(20))),
            Err(ChannelError::Timeout)
        ));
        drop(b);
        assert!(matches!(
            a.recv::<InitReport>(None),
            Err(ChannelError::Closed)
        ));
    }
}
