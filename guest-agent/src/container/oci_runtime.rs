//! Containers of a native pod, made by an OCI runtime binary (runc, crun)
//! through its command line: `create`, `start`, `exec`, `delete`, as
//! containerd's runc shim drives it. The agent serving a native pod on the
//! host is that shim: it holds the processes' stdio, and as their child
//! subreaper it reaps them once the runtime has exited.
//!
//! The runtime keeps its state under the agent's own directory (`--root`)
//! and writes its errors as JSON lines to a log per call (`--log`), which
//! this module turns into the error it returns.

use crate::reaper::{self, Exit};
use crate::stdio::ChildStdio;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// An OCI runtime binary and the state directory it keeps.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: PathBuf,
    root: PathBuf,
    /// Where console sockets and per-call logs go (short paths: a socket's
    /// path must fit `sockaddr_un`).
    scratch: PathBuf,
    /// `create --no-pivot`: where pivot_root cannot work (see
    /// [`pivot_root_works`]).
    no_pivot: bool,
}

/// Whether pivot_root can make a container's root here: not when the root
/// is the initramfs (ramfs or tmpfs; the kernel refuses to pivot away from
/// it), as on a node booted from an initramfs without switch_root. There the
/// runtime moves the rootfs over `/` and chroots instead (`--no-pivot`,
/// containerd's `NoPivotRoot`).
pub fn pivot_root_works() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    match nix::sys::statfs::statfs("/") {
        Ok(s) => !matches!(s.filesystem_type().0, RAMFS_MAGIC | TMPFS_MAGIC),
        Err(_) => false,
    }
}

/// A process the runtime started (a container's init or an exec).
pub struct Started {
    /// Its pid.
    pub pid: i32,
    /// Resolves when it exits (the agent is its subreaper).
    pub exit: oneshot::Receiver<Exit>,
    /// The pty master, when the process has a terminal.
    pub console: Option<OwnedFd>,
}

/// Why a runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime ran and refused (its own message).
    #[error("{runtime} {verb}: {message}")]
    Refused {
        /// The binary.
        runtime: String,
        /// The command.
        verb: &'static str,
        /// What it said.
        message: String,
    },
    /// Running it, or preparing its files, failed.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Io(format!("{what}: {e}"))
}

impl OciRuntime {
    /// `binary` keeping its state in `root`; `scratch` holds console
    /// sockets and call logs.
    pub fn new(binary: PathBuf, root: PathBuf, scratch: PathBuf) -> Self {
        Self {
            binary,
            root,
            scratch,
            no_pivot: !pivot_root_works(),
        }
    }

    fn scratch_path(&self, kind: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.scratch.join(format!(
            "{kind}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Runs `args` with `stdio` and waits for the runtime to exit; its
    /// errors come back from the call's log.
    async fn run(
        &self,
        verb: &'static str,
        args: &[&std::ffi::OsStr],
        stdio: Option<ChildStdio>,
    ) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.scratch).map_err(|e| io("runtime scratch dir", e))?;
        let log = self.scratch_path("log");
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .arg(verb)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        match stdio {
            Some(s) => {
                cmd.stdin(s.stdin.map_or_else(Stdio::null, Stdio::from));
                cmd.stdout(Stdio::from(s.stdout));
                cmd.stderr(Stdio::from(s.stderr));
            }
            None => {
                cmd.stdin(Stdio::null()).stdout(Stdio::null());
                cmd.stderr(Stdio::null());
            }
        }
        let (pid, exit) = reaper::global()
            .spawn(&mut cmd)
            .map_err(|e| io(&format!("running {}", self.binary.display()), e))?;
        drop(cmd);
        let waited = tokio::time::timeout(COMMAND_TIMEOUT, exit).await;
        let result = match waited {
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err(io(verb, format!("no answer within {COMMAND_TIMEOUT:?}")))
            }
            Ok(Ok(Exit::Code(0))) => Ok(()),
            Ok(status) => Err(RuntimeError::Refused {
                runtime: self.binary.display().to_string(),
                verb,
                message: log_errors(&log).unwrap_or_else(|| format!("ended with {status:?}")),
            }),
        };
        let _ = std::fs::remove_file(&log);
        result
    }

    /// `create`: sets container `id` up from the bundle in `bundle` (its
    /// `config.json`), its process waiting for [`Self::start`].
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: ChildStdio,
        terminal: bool,
    ) -> Result<Started, RuntimeError> {
        let pid_file = bundle.join("init.pid");
        let console = terminal.then(|| self.scratch_path("console"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
        ];
        if let Some(c) = &console {
            args.extend(["--console-socket".as_ref(), c.as_os_str()]);
        }
        if self.no_pivot {
            args.push("--no-pivot".as_ref());
        }
        args.push(id.as_ref());
        self.started("create", &args, stdio, console.as_deref(), &pid_file)
            .await
    }

    /// `start`: runs the process of a created container.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", &[id.as_ref()], None).await
    }

    /// `exec --detach`: starts `process` (written to `process_file`) in
    /// running container `id`.
    pub async fn exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
        process_file: &Path,
        stdio: ChildStdio,
    ) -> Result<Started, RuntimeError> {
        let json = serde_json::to_vec(process).map_err(|e| io("process JSON", e))?;
        std::fs::write(process_file, json).map_err(|e| io("writing the process JSON", e))?;
        let pid_file = process_file.with_extension("pid");
        let console = process
            .terminal()
            .unwrap_or(false)
            .then(|| self.scratch_path("console"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--process".as_ref(),
            process_file.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            "--detach".as_ref(),
        ];
        if let Some(c) = &console {
            args.extend(["--console-socket".as_ref(), c.as_os_str()]);
        }
        args.push(id.as_ref());
        let started = self
            .started("exec", &args, stdio, console.as_deref(), &pid_file)
            .await;
        let _ = std::fs::remove_file(process_file);
        let _ = std::fs::remove_file(&pid_file);
        started
    }

    /// `delete --force`: forgets container `id` (killing what is left).
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("delete", &["--force".as_ref(), id.as_ref()], None)
            .await
    }

    /// Runs a command that starts a process: receives its pty master on
    /// `console` while the runtime runs, then reads its pid.
    async fn started(
        &self,
        verb: &'static str,
        args: &[&std::ffi::OsStr],
        stdio: ChildStdio,
        console: Option<&Path>,
        pid_file: &Path,
    ) -> Result<Started, RuntimeError> {
        let master = match console {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| io("console socket", e))?;
                let receiving = tokio::task::spawn_blocking(move || receive_console(&listener));
                let ran = self.run(verb, args, Some(stdio)).await;
                if let Err(e) = ran {
                    // Unblocks the accept: the runtime will not connect now.
                    let _ = std::os::unix::net::UnixStream::connect(path);
                    let _ = std::fs::remove_file(path);
                    return Err(e);
                }
                let _ = std::fs::remove_file(path);
                Some(
                    receiving
                        .await
                        .map_err(|e| io("console task", e))?
                        .map_err(|e| io("receiving the console", e))?,
                )
            }
            None => {
                self.run(verb, args, Some(stdio)).await?;
                None
            }
        };
        let text = std::fs::read_to_string(pid_file).map_err(|e| io("reading the pid file", e))?;
        let pid: i32 = text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| io("pid file", format!("not a pid: {text:?}")))?;
        Ok(Started {
            pid,
            exit: reaper::global().watch(pid),
            console: master,
        })
    }
}

/// Accepts the runtime's connection on the console socket and takes the
/// pty master it sends (SCM_RIGHTS, with the pty's name as payload).
fn receive_console(listener: &std::os::unix::net::UnixListener) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: each fd was just received and is owned by nobody else.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(std::io::Error::other(format!(
            "expected one pty fd, got {}",
            owned.len()
        )));
    }
    Ok(owned.remove(0))
}

/// The error lines of a runtime's JSON log (`{"level":"error","msg":…}`),
/// or its last line.
fn log_errors(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut errors = Vec::new();
    let mut last = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or(line);
                if matches!(
                    v.get("level").and_then(|l| l.as_str()),
                    Some("error" | "fatal")
                ) {
                    errors.push(msg.to_string());
                }
                last = Some(msg.to_string());
            }
            Err(_) => last = Some(line.to_string()),
        }
    }
    if errors.is_empty() {
        last
    } else {
        Some(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"hello\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\n",
        )
        .unwrap();
        assert_eq!(
            log_errors(&log).unwrap(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        std::fs::write(&log, "plain words\n").unwrap();
        assert_eq!(log_errors(&log).unwrap(), "plain words");
        assert!(log_errors(&dir.path().join("missing")).is_none());
    }
}
