//! The init stage: the agent binary re-executed with [`INIT_ARG`] as a fresh
//! single-threaded process, so namespace, mount and credential changes never
//! run after fork() in the multi-threaded agent. It reads an
//! [`InitRequest`] from fd [`INIT_SYNC_FD`], enters or creates namespaces,
//! forks the process that becomes the container (PID 1 of a new PID
//! namespace when asked), reports its pid and exits; that child builds the
//! root, drops privileges and execs the container program.
//!
//! Errors travel back over the channel; stdout/stderr belong to the
//! container and are never written here.

use super::spec::{ContainerPlan, NsKind, ProcessPlan};
use super::sync::{Channel, Control, InitReport, InitRequest, INIT_SYNC_FD};
use super::{capabilities, namespaces, rootfs, seccomp};
use anyhow::{bail, Context};
use nix::unistd::{fork, ForkResult};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use super::sync::INIT_ARG;

/// Entry point of the init stage. Never returns.
pub fn main() -> ! {
    // SAFETY: the agent passes the channel as fd 3 and nothing else in this
    // fresh process owns it.
    let chan = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(INIT_SYNC_FD) });
    let req = match chan.recv::<InitRequest>(Some(std::time::Duration::from_secs(30))) {
        Ok(r) => r,
        Err(e) => {
            let _ = chan.send(&InitReport::Error(format!("reading the request: {e}")));
            std::process::exit(1);
        }
    };
    let result = match req {
        InitRequest::Create(plan) => create(&plan, &chan),
        InitRequest::Exec {
            target_pid,
            process,
        } => exec(target_pid, &process, &chan),
        InitRequest::Holder {
            ipc,
            uts,
            pid,
            hostname,
            sysctls,
        } => holder(ipc, uts, pid, hostname.as_deref(), &sysctls, &chan),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = chan.send(&InitReport::Error(format!("{e:#}")));
            std::process::exit(1);
        }
    }
}

/// Forks; the parent reports the child's pid and returns `Ok(None)`, the
/// child returns `Ok(Some(()))`.
fn fork_child(chan: &Channel) -> anyhow::Result<Option<()>> {
    // SAFETY: this process is single-threaded (freshly exec'd).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            chan.send(&InitReport::Pid(child.as_raw()))?;
            Ok(None)
        }
        ForkResult::Child => Ok(Some(())),
    }
}

/// Runs `f` in the forked child, turning its error into a report and an
/// exit status; never returns from the child.
fn in_child(chan: &Channel, f: impl FnOnce() -> anyhow::Result<()>) -> ! {
    let code = match f() {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&InitReport::Error(format!("{e:#}")));
            1
        }
    };
    // SAFETY: leaving the child without running the parent's atexit hooks.
    unsafe { libc::_exit(code) }
}

fn create(plan: &ContainerPlan, chan: &Channel) -> anyhow::Result<()> {
    namespaces::join(&plan.namespaces.join)?;
    namespaces::create(&plan.namespaces.create)?;
    if fork_child(chan)?.is_none() {
        return Ok(());
    }
    in_child(chan, || {
        nix::unistd::setsid().context("setsid")?;
        rootfs::setup(plan)?;
        if plan.process.terminal {
            open_console(chan)?;
        }
        if plan.namespaces.creates(NsKind::Uts) {
            if let Some(h) = &plan.hostname {
                nix::unistd::sethostname(h).context("sethostname")?;
            }
            if let Some(d) = &plan.domainname {
                // SAFETY: plain syscall with a valid buffer.
                if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setdomainname");
                }
            }
        }
        for (key, value) in &plan.sysctls {
            std::fs::write(Path::new("/proc/sys").join(key), value)
                .with_context(|| format!("sysctl {key}"))?;
        }
        finish_process(&plan.process, chan, true)
    })
}

fn exec(target_pid: i32, process: &ProcessPlan, chan: &Channel) -> anyhow::Result<()> {
    let targets = namespaces::of_process(target_pid);
    if targets.is_empty() {
        bail!("process {target_pid} has no namespaces of its own (has it exited?)");
    }
    // setns(CLONE_NEWNS) moves us to the namespace's root mount, which is
    // not the container's root when that was set by chroot (MS_MOVE
    // fallback) or when the agent itself runs chrooted: take the target's
    // root directly, like nsenter --root.
    let root = std::fs::File::open(format!("/proc/{target_pid}/root"))
        .with_context(|| format!("opening the root of process {target_pid}"))?;
    namespaces::join(&targets)?;
    nix::unistd::fchdir(&root).context("fchdir to the container root")?;
    nix::unistd::chroot(".").context("chroot to the container root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    if fork_child(chan)?.is_none() {
        return Ok(());
    }
    in_child(chan, || {
        nix::unistd::setsid().context("setsid")?;
        if process.terminal {
            open_console(chan)?;
        }
        finish_process(process, chan, false)
    })
}

fn holder(
    ipc: bool,
    uts: bool,
    pid: bool,
    hostname: Option<&str>,
    sysctls: &[(String, String)],
    chan: &Channel,
) -> anyhow::Result<()> {
    let mut kinds = Vec::new();
    for (on, k) in [(ipc, NsKind::Ipc), (uts, NsKind::Uts), (pid, NsKind::Pid)] {
        if on {
            kinds.push(k);
        }
    }
    namespaces::create(&kinds)?;
    if uts {
        if let Some(h) = hostname {
            nix::unistd::sethostname(h).context("sethostname")?;
        }
    }
    // After unshare: /proc/sys/kernel/{shm,msg,sem}*, fs/mqueue and the
    // UTS names resolve to this process's new namespaces.
    for (key, value) in sysctls {
        std::fs::write(Path::new("/proc/sys").join(key), value)
            .with_context(|| format!("sysctl {key}"))?;
    }
    if fork_child(chan)?.is_none() {
        return Ok(());
    }
    in_child(chan, || {
        nix::unistd::setsid().context("setsid")?;
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGCHLD);
        set.thread_block().context("blocking SIGCHLD")?;
        confine_holder()?;
        chan.send(&InitReport::Ready)?;
        // PID 1 of the pod's namespace: reap whatever is re-parented here.
        loop {
            if set.wait().is_err() {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            while let Ok(st) =
                nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                if st == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
            }
        }
    })
}

/// The uid and gid the holder runs as: those of Kubernetes' pause image.
const HOLDER_ID: u32 = 65535;

/// Strips the holder of everything it does not need to hold namespaces and
/// reap: no capabilities (bounding set emptied, then the ids of the pause
/// image, whose change from root clears every other set, ambient too), no supplementary groups, no_new_privs,
/// and a seccomp filter allowing only waiting for and reaping children,
/// sleeping, reporting on the channel and exiting. Stricter than
/// containerd's pause container, which keeps the runtime's default
/// capabilities.
fn confine_holder() -> anyhow::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    capabilities::drop_bounding(&Default::default()).context("emptying the bounding set")?;
    setgroups(&[]).context("setgroups")?;
    let (g, u) = (Gid::from_raw(HOLDER_ID), Uid::from_raw(HOLDER_ID));
    setresgid(g, g, g).context("setresgid")?;
    setresuid(u, u, u).context("setresuid")?;
    nix::unistd::chdir("/").context("chdir /")?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
    }
    let filter = seccomp::allow_only(&[
        "rt_sigtimedwait",
        "rt_sigprocmask",
        "rt_sigreturn",
        "restart_syscall",
        "wait4",
        "waitid",
        "nanosleep",
        "clock_nanosleep",
        "write",
        "sendmsg",
        "sendto",
        "close",
        "brk",
        "mmap",
        "munmap",
        "futex",
        "exit",
        "exit_group",
    ])?;
    seccomp::install(&[filter]).context("installing the holder's seccomp filter")?;
    Ok(())
}

/// Allocates the process's terminal from the container's own devpts (so
/// `tty` and ttyname() resolve inside), makes the slave fds 0-2 and the
/// controlling terminal, and hands the master to the agent.
fn open_console(chan: &Channel) -> anyhow::Result<()> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsRawFd;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("opening /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {name}"))?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard fds of this single-threaded process.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error()).context("dup2 of the pty slave");
        }
    }
    drop(slave);
    // SAFETY: ioctl on fd 0 with an integer argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSCTTY");
    }
    chan.send_with_fd(&InitReport::Console, master.as_raw_fd())?;
    Ok(())
}

/// Limits, identity, capabilities, seccomp and exec: the steps shared by a
/// container's process and an exec'd one.
fn finish_process(p: &ProcessPlan, chan: &Channel, wait_for_start: bool) -> anyhow::Result<()> {
    for (res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(*res as _, &raw const lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("setrlimit({res})"));
        }
    }
    if let Some(adj) = p.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).context("oom_score_adj")?;
    }
    let filters = match &p.seccomp {
        Some(s) => seccomp::compile(s)?,
        None => Vec::new(),
    };
    // Capabilities are always set from the plan: an empty plan means none.
    capabilities::drop_bounding(&p.caps).context("dropping bounding capabilities")?;
    if !p.no_new_privileges {
        // Without no_new_privs, seccomp needs CAP_SYS_ADMIN: install now.
        seccomp::install(&filters).context("installing seccomp filter")?;
    }
    if let Some(mask) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    set_identity(p)?;
    capabilities::apply_sets(&p.caps).context("setting capabilities")?;
    let program = find_program(p)?;
    nix::unistd::chdir(&p.cwd).with_context(|| format!("chdir to {}", p.cwd.display()))?;
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
        }
    }
    chan.send(&InitReport::Ready)?;
    if wait_for_start {
        match chan.recv::<Control>(None) {
            Ok(Control::Start) => {}
            Err(_) => {
                // The agent gave up on this container.
                // SAFETY: plain exit.
                unsafe { libc::_exit(1) }
            }
        }
    }
    let args: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("args")?;
    let env: Vec<CString> = p
        .env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("env")?;
    let prog = CString::new(program.as_os_str().as_encoded_bytes()).context("program path")?;
    // The channel closes on a successful exec: that is the agent's signal.
    nix::fcntl::fcntl(
        chan.fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("FD_CLOEXEC on the channel")?;
    reset_signals();
    if p.no_new_privileges {
        seccomp::install(&filters).context("installing seccomp filter")?;
    }
    let e = nix::unistd::execve(&prog, &args, &env).unwrap_err();
    bail!("exec {}: {e}", program.display())
}

/// Gives the container program default signal dispositions and an empty
/// signal mask. The Rust runtime of this stage ignores SIGPIPE, and ignored
/// dispositions survive exec: without this, `yes | head` would never end.
fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code.
        let _ = unsafe { sigaction(sig, &default) };
    }
    // Real-time signals (glibc's wrapper refuses its internal 32 and 33):
    // the raw syscall with a kernel sigaction of SIG_DFL, no flags, no mask.
    for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        let act: [libc::c_ulong; 4] = [libc::SIG_DFL as libc::c_ulong, 0, 0, 0];
        // SAFETY: rt_sigaction with a valid kernel sigaction and no old-action pointer.
        unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), 0usize, 8usize) };
    }
    for sig in 32..libc::SIGRTMIN() {
        let act: [libc::c_ulong; 4] = [libc::SIG_DFL as libc::c_ulong, 0, 0, 0];
        // SAFETY: as above, for glibc's reserved signals.
        unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), 0usize, 8usize) };
    }
    let _ = SigSet::empty().thread_set_mask();
}

fn set_identity(p: &ProcessPlan) -> anyhow::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).context("setgroups")?;
    let gid = Gid::from_raw(p.gid);
    setresgid(gid, gid, gid).context("setresgid")?;
    // Keep the permitted set across the uid change; capabilities::apply_sets
    // then trims it to the spec.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_KEEPCAPS");
    }
    let uid = Uid::from_raw(p.uid);
    setresuid(uid, uid, uid).context("setresuid")?;
    Ok(())
}

/// Resolves `args[0]`: a path with a '/' is used as it is (relative to
/// cwd), otherwise it is searched in the process's own `PATH`.
pub fn find_program(p: &ProcessPlan) -> anyhow::Result<PathBuf> {
    let name = &p.args[0];
    if name.contains('/') {
        let path = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            p.cwd.join(name)
        };
        return Ok(path);
    }
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(name);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    bail!("{name:?}: executable file not found in $PATH ({path_var})")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_uses_the_process_path() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("hello");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("noexec"), "").unwrap();
        let mut p = super::super::spec::process_plan(
            &serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["hello"]}"#)
                .unwrap(),
            "process",
        )
        .unwrap();
        p.env = vec![format!("PATH=/nonexistent:{}", bin.display())];
        assert_eq!(find_program(&p).unwrap(), prog);
        p.args[0] = "noexec".into();
        assert!(find_program(&p)
            .unwrap_err()
            .to_string()
            .contains("not found"));
        p.args[0] = "/abs/x".into();
        assert_eq!(find_program(&p).unwrap(), PathBuf::from("/abs/x"));
    }
}
