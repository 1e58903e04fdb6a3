//! Starting a pod's `moat-vmm` and waiting until its agent answers.

use crate::network::NetNs;
use moat_proto::agent::agent_client::AgentClient;
use moat_vmm::config::{InheritedFds, VmConfig, VsockConfig};
use moat_vmm::exit::ExitCode;
use moat_vmm::jailer::ChildSetup;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// What VM to start: the moat-vmm binary and the VM's own settings
/// (kernel, initramfs, vCPUs, memory, image slots, NIC). [`launch`] adds the
/// files under the VM's directory: console, vsock and control sockets.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The moat-vmm binary.
    pub vmm: PathBuf,
    /// The VM, as moat-vmm reads it.
    pub vm: VmConfig,
}

/// Files of one VM under moatd's run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPaths {
    /// The VM's directory.
    pub dir: PathBuf,
}

impl VmPaths {
    /// The hybrid vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// The control socket.
    pub fn api(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// The guest console log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's own log (its stdout and stderr).
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// A native pod's agent socket.
    pub fn agent(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    /// A native pod's agent log (its stderr).
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    /// A native pod's agent's own directory (containers, bundles, runtime
    /// state).
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    /// The VM config file given to moat-vmm.
    pub fn config(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
}

/// A running VMM process, identified so a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandle {
    /// Process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
}

impl VmHandle {
    /// The live (not zombie) process `pid`, with its start time.
    pub fn live(pid: u32) -> Option<Self> {
        let stat = crate::procfs::Stat::of(pid)?;
        (stat.state != 'Z').then_some(VmHandle {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// True while this very process runs (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        crate::procfs::Stat::of(self.pid)
            .is_some_and(|s| s.state != 'Z' && s.start_ticks == self.start_ticks)
    }

    /// Sends SIGKILL if the process is still this VMM.
    pub fn kill(&self) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

/// Most files a VMM may hold open (its vsock connections are bounded at
/// 1024).
pub const VMM_MAX_FILES: libc::rlim_t = 4096;

/// The fd number a VMM finds its TAP at (`net.tap_fd`).
pub const VMM_TAP_FD: i32 = 3;
/// The fd number a VMM finds `/dev/kvm` at (`fds.kvm`).
pub const VMM_KVM_FD: i32 = 4;
/// The fd number a VMM finds its kernel at (`fds.kernel`).
pub const VMM_KERNEL_FD: i32 = 5;
/// The fd number a VMM finds its initramfs at (`fds.initrd`).
pub const VMM_INITRD_FD: i32 = 6;
/// The fd number a VMM finds its stream to the pod's virtiofsd at
/// (`fds.fs_socket`).
pub const VMM_FS_FD: i32 = 7;

/// Most tasks a jailed VMM's uid may have (its threads: the event loop and
/// one per vCPU, at most 64).
pub const VMM_MAX_TASKS: libc::rlim_t = 128;

/// The config file's name on moat-vmm's command line: relative, read in the
/// VM's directory, where the VMM starts (a jailed VMM may not reach the
/// directory's absolute path).
const CONFIG_ARG: &str = "vm.json";

/// Writes the VM config and spawns moat-vmm in `netns` (if any), handing it
/// `/dev/kvm`, the kernel and the initramfs (opened here) and `tap` (the
/// pod's TAP, opened by moatd) as inherited fds, in its own session so it
/// outlives a moatd restart, with only the environment it reads, no core
/// dumps, [`VMM_MAX_FILES`] (and, jailed, [`VMM_MAX_TASKS`]) and
/// no_new_privs, working in its VM directory; with `cgroup_procs` (a
/// cgroup's `cgroup.procs`, open for writing) it joins that cgroup before
/// it execs. A jailed VMM is started as its jail's uid and gid (see
/// [`moat_vmm::jailer`]).
pub fn launch(
    spec: &VmSpec,
    paths: &VmPaths,
    netns: Option<&NetNs>,
    tap: Option<&std::fs::File>,
    cgroup_procs: Option<&std::fs::File>,
    fs: Option<&std::os::unix::net::UnixStream>,
) -> anyhow::Result<(VmHandle, tokio::process::Child)> {
    use anyhow::Context;
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    let mut cfg = spec.vm.clone();
    // Paths in the VM's directory are relative to it, the VMM's working
    // directory: they stay valid once the VMM's jail makes it the root.
    let relative = |p: PathBuf| {
        p.strip_prefix(&paths.dir)
            .map(Path::to_path_buf)
            .unwrap_or(p)
    };
    cfg.serial = relative(paths.console()).display().to_string();
    cfg.vsock = Some(VsockConfig {
        uds: relative(paths.vsock()),
        cid: 3,
    });
    cfg.api_sock = Some(relative(paths.api()));
    if fs.is_some() {
        cfg.fs = Some(moat_vmm::config::FsConfig {
            tag: super::volumes::TAG.into(),
            socket: relative(paths.fs_socket()),
        });
        let key = format!(
            "{}={}",
            moat_proto::CMDLINE_VOLUMES_KEY,
            super::volumes::TAG
        );
        cfg.cmdline_extra = format!("{} {key}", cfg.cmdline_extra).trim().to_string();
    }
    if let Some(j) = &cfg.jail {
        use std::os::unix::fs::PermissionsExt;
        // The jailed VMM owns its directory (it creates its control socket
        // and rotates its console there); no one else but root enters it.
        std::os::unix::fs::chown(&paths.dir, Some(j.uid), Some(j.gid))
            .with_context(|| format!("chown {}", paths.dir.display()))?;
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", paths.dir.display()))?;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("VM config: {e}"))?;
    // What the VMM reads through an fd: an unprivileged VMM could not open
    // /dev/kvm, nor files only root may read.
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("opening /dev/kvm")?;
    let kernel = std::fs::File::open(&cfg.kernel)
        .with_context(|| format!("opening the kernel {}", cfg.kernel.display()))?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(
            std::fs::File::open(p)
                .with_context(|| format!("opening the initramfs {}", p.display()))?,
        ),
        None => None,
    };
    cfg.fds = InheritedFds {
        kvm: Some(VMM_KVM_FD),
        kernel: Some(VMM_KERNEL_FD),
        initrd: initrd.is_some().then_some(VMM_INITRD_FD),
        fs_socket: fs.is_some().then_some(VMM_FS_FD),
    };
    std::fs::write(paths.config(), serde_json::to_vec_pretty(&cfg)?).context("writing vm.json")?;
    let log = std::fs::File::create(paths.vmm_log()).context("creating vmm.log")?;

    let filter = std::env::var_os("MOAT_VMM_LOG");
    // Nothing of moatd's environment but the VMM's log filter.
    let env: Vec<(&str, &std::ffi::OsStr)> = filter
        .as_deref()
        .map(|f| ("MOAT_VMM_LOG", f))
        .into_iter()
        .collect();
    let mut setup = ChildSetup::new(
        &spec.vmm,
        &["--config".as_ref(), CONFIG_ARG.as_ref()],
        &paths.dir,
        &env,
    )
    .with_context(|| format!("opening {}", spec.vmm.display()))?;
    setup.netns = match netns {
        Some(ns) => Some(
            std::fs::File::open(ns.path())
                .with_context(|| format!("opening netns {}", ns.path().display()))?
                .into(),
        ),
        None => None,
    };
    let dup = |f: &std::fs::File| f.try_clone().map(OwnedFd::from);
    setup.cgroup_procs = cgroup_procs.map(dup).transpose()?;
    if let Some(t) = tap {
        setup.fds.push((dup(t)?, VMM_TAP_FD));
    }
    setup.fds.push((kvm.into(), VMM_KVM_FD));
    setup.fds.push((kernel.into(), VMM_KERNEL_FD));
    if let Some(f) = initrd {
        setup.fds.push((f.into(), VMM_INITRD_FD));
    }
    if let Some(s) = fs {
        setup.fds.push((s.try_clone()?.into(), VMM_FS_FD));
    }
    setup.jail = cfg.jail.as_ref().map(|j| (j.uid, j.gid));
    // No core dumps (they would hold guest memory) and a bound on open
    // files; a jailed VMM's uid is its own: its tasks are its threads.
    setup.rlimits = vec![(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, VMM_MAX_FILES)];
    if setup.jail.is_some() {
        setup.rlimits.push((libc::RLIMIT_NPROC, VMM_MAX_TASKS));
    }

    let mut cmd = tokio::process::Command::new(&spec.vmm);
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the setup makes only async-signal-safe syscalls between fork
    // and its exec.
    unsafe {
        cmd.pre_exec(move || Err(setup.exec()));
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {}; its log:\n{}",
            spec.vmm.display(),
            tail(&paths.vmm_log(), 5)
        )
    })?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("moat-vmm exited at once"))?;
    let start_ticks = crate::procfs::Stat::of(pid).map_or(0, |s| s.start_ticks);
    Ok((VmHandle { pid, start_ticks }, child))
}

/// The live moat-vmm processes started for the VM at `paths`: those
/// working in its directory with its config on their command line. How
/// recovery finds a VMM whose pid a crash kept out of the record.
pub fn running_vmms(paths: &VmPaths) -> Vec<VmHandle> {
    crate::procfs::pids()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--config".as_slice() && w[1] == CONFIG_ARG.as_bytes())
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == paths.dir)
        })
        .filter_map(VmHandle::live)
        .collect()
}

/// The last `n` lines of a log file, for error messages.
/// Only the file's last [`TAIL_BYTES`] are read: the guest writes the
/// console, and its size is the guest's to choose.
pub fn tail(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
            .is_ok()
        {
            let _ = f.take(TAIL_BYTES).read_to_end(&mut text);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The most of a log file [`tail`] reads.
pub const TAIL_BYTES: u64 = 64 << 10;

/// The VM runs but its agent did not answer in time (a guest that hung
/// while booting).
#[derive(Debug, thiserror::Error)]
#[error("the pod VM's agent did not answer within {secs} s (last error: {last_err}); console:\n{console}")]
pub struct AgentTimeout {
    /// The wait.
    pub secs: u64,
    /// The last connection error.
    pub last_err: String,
    /// The console's last lines.
    pub console: String,
}

/// The VMM exited before the agent answered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct VmStopped {
    /// Why moat-vmm exited, where its status says so.
    pub exit: Option<ExitCode>,
    /// The status with the VMM log's and console's last lines.
    pub message: String,
}

impl VmStopped {
    /// True when the guest itself reset before its agent answered: only
    /// moat's own kernel and agent had run, so a fresh VM may well boot.
    /// A VMM that could not start (bad config, no KVM) would fail again.
    pub fn guest_reset(&self) -> bool {
        self.exit == Some(ExitCode::GuestReset)
    }
}

/// Longest single attempt to reach a booting VM's agent.
const ATTEMPT: Duration = Duration::from_secs(10);

/// Waits until the agent answers a Ping, or the VMM dies ([`VmStopped`]),
/// or `timeout` ([`AgentTimeout`]).
pub async fn wait_for_agent(
    paths: &VmPaths,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> anyhow::Result<AgentClient<Channel>> {
    let deadline = crate::clock::deadline(timeout);
    let mut last_err = String::from("no attempt");
    loop {
        if let Some(status) = child.try_wait()? {
            let exit = status.code().and_then(ExitCode::from_code);
            let why = exit.map(|c| c.describe()).unwrap_or("killed");
            return Err(VmStopped {
                exit,
                message: format!(
                    "the pod VM stopped before its agent answered: moat-vmm {status} ({why}); vmm log:\n{}\nconsole:\n{}",
                    tail(&paths.vmm_log(), 10),
                    tail(&paths.console(), 20)
                ),
            }
            .into());
        }
        if paths.vsock().exists() {
            // One attempt may not outlast the deadline: a guest that accepted
            // the connection and then stopped must not hold RunPodSandbox.
            let limit = deadline
                .map(|d| d.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or(ATTEMPT)
                .min(ATTEMPT);
            let attempt = async {
                let mut client =
                    crate::agent::connect(paths.vsock(), moat_proto::AGENT_VSOCK_PORT).await?;
                client.ping(moat_proto::agent::PingRequest {}).await?;
                Ok::<_, anyhow::Error>(client)
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last_err = format!("{e:#}"),
                Err(_) => last_err = format!("no answer within {} s", limit.as_secs()),
            }
        }
        if crate::clock::passed(deadline) {
            return Err(AgentTimeout {
                secs: timeout.as_secs(),
                last_err,
                console: tail(&paths.console(), 20),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_only_the_end_of_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nlast but one\nlast\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(tail(&path, 2), "last but one\nlast");
        assert_eq!(tail(&dir.path().join("missing"), 2), "");
    }

    #[test]
    fn a_vmm_is_found_by_its_directory_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: dir.path().to_path_buf(),
        };
        // A shell waiting on its stdin in the VM's directory, with the
        // VMM's arguments on its command line.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read x")
            .arg("--config")
            .arg(CONFIG_ARG)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The kernel fills in a new program's command line a moment after
        // spawn() returns (close-on-exec runs first).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = running_vmms(&paths);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = running_vmms(&paths);
        }
        let other = running_vmms(&VmPaths {
            dir: dir.path().join("other"),
        });
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found.iter().map(|v| v.pid).collect::<Vec<_>>(),
            vec![child.id()]
        );
        assert!(other.is_empty());
        assert!(
            running_vmms(&paths).is_empty(),
            "a reaped process is still found"
        );
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let ticks = crate::procfs::Stat::of(pid).unwrap().start_ticks;
        assert!(VmHandle {
            pid,
            start_ticks: ticks
        }
        .is_alive());
        assert!(!VmHandle {
            pid,
            start_ticks: ticks + 1
        }
        .is_alive());
        assert!(!VmHandle {
            pid: u32::MAX - 1,
            start_ticks: 0
        }
        .is_alive());
    }
}
