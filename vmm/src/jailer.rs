//! Starting moat-vmm without privilege (the launcher's side of the jail,
//! as Firecracker's jailer): what the launcher's child does as root between
//! fork and exec, to hand moat-vmm everything privileged it needs and then
//! start it unprivileged. moatd starts every pod's VMM this way; the boot
//! benchmark too.
//!
//! Everything is prepared in the parent ([`ChildSetup::new`]: paths and
//! argument lists as C strings, fds open) so the child only makes
//! async-signal-safe syscalls. In order, the child:
//! 1. joins the VMM's cgroup (before any guest memory exists);
//! 2. enters the pod's network namespace;
//! 3. places the inherited files at their fixed numbers (TAP, `/dev/kvm`,
//!    kernel, initramfs: [`crate::config::InheritedFds`]);
//! 4. works in the VM's directory, in a session of its own, with its
//!    rlimits;
//! 5. jailed: empties the capability bounding set, takes the jail's gid
//!    (no other group) and uid, and keeps one capability, CAP_SYS_CHROOT,
//!    as ambient for the VMM's chroot into its directory
//!    ([`crate::confine`]), which drops it;
//! 6. sets no_new_privs and execs moat-vmm from an fd (`execveat`), so the
//!    jail's uid needs no access to the path of the binary.
//!
//! A failing step writes its name to the VMM's log (the child's stderr)
//! and the child exits with its errno.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// CAP_SYS_CHROOT's number (linux/capability.h).
const CAP_SYS_CHROOT: u32 = 18;

/// capget/capset's header, version 3 (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One 32-capability half of capget/capset's data.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Where the child starts looking for free fd numbers when it moves the
/// inherited files out of the way of their targets.
const SCRATCH_FD: libc::c_int = 100;

/// Most files a child may place (the VMM inherits four).
const MAX_INHERITED: usize = 8;

/// An rlimit the VMM runs with (both soft and hard).
pub type Rlimit = (libc::__rlimit_resource_t, libc::rlim_t);

/// Everything the child needs, ready before the fork.
pub struct ChildSetup {
    /// The cgroup's `cgroup.procs`, open for writing.
    pub cgroup_procs: Option<OwnedFd>,
    /// The pod's network namespace.
    pub netns: Option<OwnedFd>,
    /// (file, the fd number moat-vmm finds it at).
    pub fds: Vec<(OwnedFd, libc::c_int)>,
    /// The jail's (uid, gid), if the VMM is jailed.
    pub jail: Option<(u32, u32)>,
    /// rlimits to set.
    pub rlimits: Vec<Rlimit>,
    dir: CString,
    vmm: OwnedFd,
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into `_args` and `_env`, owned by the same
// value and never changed after `new`; the child only reads them.
unsafe impl Send for ChildSetup {}
// SAFETY: as above; nothing is mutated through a shared reference.
unsafe impl Sync for ChildSetup {}

fn cstring(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(std::io::Error::other)
}

impl ChildSetup {
    /// Prepares the start of `vmm` (opened here) with `args`, in `dir`,
    /// with the environment `env`.
    pub fn new(
        vmm: &Path,
        args: &[&OsStr],
        dir: &Path,
        env: &[(&str, &OsStr)],
    ) -> std::io::Result<Self> {
        let vmm_file = std::fs::File::open(vmm)?;
        let mut all_args = vec![cstring(vmm.as_os_str())?];
        for a in args {
            all_args.push(cstring(a)?);
        }
        let env = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(std::io::Error::other)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let pointers = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        Ok(Self {
            cgroup_procs: None,
            netns: None,
            fds: Vec::new(),
            jail: None,
            rlimits: Vec::new(),
            dir: cstring(dir.as_os_str())?,
            vmm: vmm_file.into(),
            argv: pointers(&all_args),
            envp: pointers(&env),
            _args: all_args,
            _env: env,
        })
    }

    /// Runs in the child after fork: returns only on failure (the exec
    /// replaces the process).
    ///
    /// # Safety
    /// Only between fork and exec (it changes the calling process's
    /// credentials, namespaces and fds).
    pub unsafe fn exec(&self) -> std::io::Error {
        match self.steps() {
            Ok(()) => std::io::Error::other("execveat returned"),
            Err((step, e)) => {
                // The VMM's log is the child's stderr.
                let msg = b"moatd: starting moat-vmm failed at: ";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::write(2, step.as_ptr().cast(), step.len());
                libc::write(2, b"\n".as_ptr().cast(), 1);
                e
            }
        }
    }

    unsafe fn steps(&self) -> Result<(), StepError> {
        let last = std::io::Error::last_os_error;
        // "0" is the writer itself: the VMM, before any guest memory.
        if let Some(fd) = &self.cgroup_procs {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(("joining the cgroup", last()));
            }
        }
        if let Some(fd) = &self.netns {
            check(
                libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET).into(),
                "setns",
            )?;
        }
        // Out of the way of every target first (the binary's fd too, which
        // may have one's number), then to the targets (dup2 clears
        // close-on-exec on the copy).
        let vmm = libc::fcntl(self.vmm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SCRATCH_FD);
        check(vmm.into(), "moving the binary's fd")?;
        let mut moved = [(0, 0); MAX_INHERITED];
        if self.fds.len() > MAX_INHERITED {
            return Err((
                "placing inherited fds",
                std::io::Error::from_raw_os_error(libc::E2BIG),
            ));
        }
        for (i, (file, target)) in self.fds.iter().enumerate() {
            let scratch = libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SCRATCH_FD);
            check(scratch.into(), "moving an inherited fd")?;
            moved[i] = (scratch, *target);
        }
        for &(scratch, target) in moved.iter().take(self.fds.len()) {
            check(
                libc::dup2(scratch, target).into(),
                "placing an inherited fd",
            )?;
        }
        check(libc::chdir(self.dir.as_ptr()).into(), "chdir")?;
        check(libc::setsid().into(), "setsid")?;
        for &(resource, limit) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            check(
                libc::setrlimit(resource, &raw const lim).into(),
                "setrlimit",
            )?;
        }
        if let Some((uid, gid)) = self.jail {
            drop_to(uid, gid)?;
        }
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            "no_new_privs",
        )?;
        check(
            libc::syscall(
                libc::SYS_execveat,
                vmm,
                c"".as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            ),
            "execveat",
        )
    }
}

/// A failed step: its name and errno.
type StepError = (&'static str, std::io::Error);

/// `r` as a step's outcome (negative: failed with errno).
fn check(r: libc::c_long, step: &'static str) -> Result<(), StepError> {
    if r < 0 {
        Err((step, std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Takes `uid` and `gid` (and no other group) keeping only CAP_SYS_CHROOT,
/// ambient so that it survives the exec; the bounding set ends empty.
unsafe fn drop_to(uid: u32, gid: u32) -> Result<(), StepError> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    check(
        libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
        "capget",
    )?;
    // Inheritable while the bounding set still holds it (capset refuses
    // an inheritable capability outside it).
    data[0].inheritable |= 1 << CAP_SYS_CHROOT;
    check(
        libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
        "capset (inheritable)",
    )?;
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
            // EINVAL past the last capability the kernel knows.
            break;
        }
    }
    check(
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into(),
        "keepcaps",
    )?;
    check(libc::setgroups(0, std::ptr::null()).into(), "setgroups")?;
    check(libc::setresgid(gid, gid, gid).into(), "setresgid")?;
    check(libc::setresuid(uid, uid, uid).into(), "setresuid")?;
    let chroot_only = CapData {
        effective: 1 << CAP_SYS_CHROOT,
        permitted: 1 << CAP_SYS_CHROOT,
        inheritable: 1 << CAP_SYS_CHROOT,
    };
    let data = [chroot_only, CapData::default()];
    check(
        libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
        "capset",
    )?;
    check(
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            libc::c_ulong::from(CAP_SYS_CHROOT),
            0,
            0,
        )
        .into(),
        "ambient CAP_SYS_CHROOT",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A jail uid far from any real user.
    const UID: u32 = 1_499_999_000;

    #[test]
    fn the_child_runs_as_the_jail_in_its_directory_with_its_files() {
        // SAFETY: a plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing uids needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(UID), Some(UID)).unwrap();
        let file = dir.path().join("kernel");
        std::fs::write(&file, "kernel bytes").unwrap();
        let script = "exec > out; id -u; id -G; pwd; cat /proc/self/fd/50; echo; \
             tr '\\0' ' ' < /proc/$$/environ; echo; \
             grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status";
        let mut setup = ChildSetup::new(
            Path::new("/bin/sh"),
            &["-c".as_ref(), script.as_ref()],
            dir.path(),
            &[("ONLY", "this".as_ref())],
        )
        .unwrap();
        // The parent holds the binary at the number the file goes to:
        // placing the file must not lose the binary.
        // SAFETY: dup2 onto a number no other open file here uses; the
        // copy is owned from here on.
        setup.vmm =
            unsafe { std::os::fd::FromRawFd::from_raw_fd(libc::dup2(setup.vmm.as_raw_fd(), 50)) };
        setup
            .fds
            .push((std::fs::File::open(&file).unwrap().into(), 50));
        setup.jail = Some((UID, UID));
        setup.rlimits = vec![(libc::RLIMIT_CORE, 0)];
        let mut cmd = std::process::Command::new("/nonexistent");
        // SAFETY: the setup makes only async-signal-safe syscalls.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || Err(setup.exec()));
        }
        assert!(cmd.status().unwrap().success());
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], UID.to_string(), "{out}");
        assert_eq!(lines[1], UID.to_string(), "no other group: {out}");
        assert_eq!(lines[2], dir.path().display().to_string());
        assert_eq!(lines[3], "kernel bytes");
        assert_eq!(lines[4].trim(), "ONLY=this", "{out}");
        // CAP_SYS_CHROOT (bit 18) and nothing else; no bounding set.
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert!(
                out.contains(&format!("{set}:\t0000000000040000")),
                "{set}: {out}"
            );
        }
        assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    }

    #[test]
    fn a_failing_step_is_named_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let setup = ChildSetup::new(
            Path::new("/bin/true"),
            &[],
            &dir.path().join("missing"),
            &[],
        )
        .unwrap();
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.stderr(log);
        // SAFETY: as above.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || Err(setup.exec()));
        }
        let e = cmd.status().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(text, "moatd: starting moat-vmm failed at: chdir\n");
    }
}
