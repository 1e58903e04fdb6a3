//! Agent side of process creation: spawns the init stage (the agent binary
//! re-executed with [`INIT_ARG`]) with the process's stdio and the setup
//! channel, sends the request, and follows the init stage's reports.
//! Blocking code: call it from `spawn_blocking`.

use super::sync::{Channel, Control, InitReport, InitRequest, INIT_ARG, INIT_SYNC_FD};
use crate::reaper::{self, Exit};
use crate::stdio::ChildStdio;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the init stage may take to set a container up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A process set up by the init stage.
pub struct Launched {
    /// Pid (agent's view) of the container process.
    pub pid: i32,
    /// Resolves when it exits.
    pub exit: oneshot::Receiver<Exit>,
    /// The channel; for a created container, [`start`] uses it.
    pub channel: Channel,
    /// The pty master, when the process has a terminal (allocated inside
    /// the container so its name resolves there).
    pub console: Option<OwnedFd>,
}

/// Why launching failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The init stage reported a setup error.
    #[error("container setup failed: {0}")]
    Setup(String),
    /// Spawning or talking to the init stage failed.
    #[error("init stage: {0}")]
    Io(String),
}

/// Spawns the init stage and runs `req` until the process is ready (for
/// `Create`: waiting for [`start`]; for `Exec` and `Holder`: running).
/// `before_request` runs with the init stage's pid before the request is
/// sent (the agent moves it into the container's cgroup there).
pub fn launch(
    init_binary: &Path,
    req: &InitRequest,
    stdio: ChildStdio,
    before_request: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    let (chan, child_end) =
        Channel::pair().map_err(|e| LaunchError::Io(format!("socketpair: {e}")))?;
    let mut cmd = std::process::Command::new(init_binary);
    cmd.arg(INIT_ARG).env_clear();
    cmd.stdin(match stdio.stdin {
        Some(fd) => std::process::Stdio::from(fd),
        None => std::process::Stdio::null(),
    });
    cmd.stdout(std::process::Stdio::from(stdio.stdout));
    cmd.stderr(std::process::Stdio::from(stdio.stderr));
    let raw = child_end.as_raw_fd();
    // SAFETY: only dup2/fcntl, which are async-signal-safe, run between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if raw == INIT_SYNC_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, INIT_SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (stage_pid, _stage_exit) = reaper::global()
        .spawn(&mut cmd)
        .map_err(|e| LaunchError::Io(format!("spawning {}: {e}", init_binary.display())))?;
    drop(cmd);
    drop::<OwnedFd>(child_end);
    let kill_stage = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stage_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    if let Err(e) = before_request(stage_pid) {
        kill_stage();
        return Err(LaunchError::Io(e));
    }
    if let Err(e) = chan.send(req) {
        kill_stage();
        return Err(LaunchError::Io(format!("sending the request: {e}")));
    }
    let mut pid = None;
    let mut exit = None;
    let mut ready = false;
    let mut console = None;
    while !(ready && pid.is_some()) {
        match chan.recv_with_fd::<InitReport>(Some(SETUP_TIMEOUT)) {
            Ok((InitReport::Console, fd)) => console = fd,
            Ok((InitReport::Pid(p), _)) => {
                exit = Some(reaper::global().watch(p));
                pid = Some(p);
            }
            Ok((InitReport::Ready, _)) => ready = true,
            Ok((InitReport::Error(e), _)) => {
                kill_both(stage_pid, pid);
                return Err(LaunchError::Setup(e));
            }
            Err(e) => {
                kill_both(stage_pid, pid);
                return Err(LaunchError::Io(format!("{e}")));
            }
        }
    }
    match (pid, exit) {
        (Some(pid), Some(exit)) => Ok(Launched {
            pid,
            exit,
            channel: chan,
            console,
        }),
        _ => Err(LaunchError::Io("no pid reported".into())),
    }
}

fn kill_both(stage: i32, child: Option<i32>) {
    for p in std::iter::once(stage).chain(child) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// For an exec'd process: waits until it has exec'd (the channel closes)
/// or reports an exec error.
pub fn wait_exec(chan: &Channel) -> Result<(), LaunchError> {
    match chan.recv::<InitReport>(Some(SETUP_TIMEOUT)) {
        Err(super::sync::ChannelError::Closed) => Ok(()),
        Ok(InitReport::Error(e)) => Err(LaunchError::Setup(e)),
        Ok(other) => Err(LaunchError::Io(format!("unexpected report {other:?}"))),
        Err(e) => Err(LaunchError::Io(e.to_string())),
    }
}

/// Tells a created container to exec its process and waits for the exec.
pub fn start(chan: &Channel) -> Result<(), LaunchError> {
    chan.send(&Control::Start)
        .map_err(|e| LaunchError::Io(format!("sending start: {e}")))?;
    wait_exec(chan)
}
