//! Which seccomp profile a container gets, as CRI and containerd define it:
//!
//! - the `seccomp` [`SecurityProfile`] when set, else the deprecated
//!   `seccomp_profile_path` string (`""`/`unconfined`, `runtime/default`,
//!   `docker/default`, `localhost/<absolute path>`; anything else is
//!   refused); neither set means unconfined (kubelet applies its own
//!   `seccompDefault`); a privileged container is never filtered;
//! - `RuntimeDefault` is an allow-list equivalent to containerd's and
//!   Docker's default profile: errno EPERM for anything not listed, the
//!   capability-gated syscalls allowed only with their capability, `clone`
//!   without namespace flags, `clone3` answered ENOSYS (so libcs fall back to
//!   `clone`), and `socket(AF_VSOCK)` refused, since vsock is the pod VM's
//!   channel to its host;
//! - `Localhost` profiles are read in the Docker/OCI JSON format
//!   (`defaultAction`, `defaultErrnoRet`, `architectures`, `archMap`,
//!   `flags`, `syscalls` with `names` or `name`, `action`, `errnoRet`,
//!   `args`, and `includes`/`excludes` by capability, architecture and
//!   minimum kernel) and enforced as written; unknown keys are refused.
//!
//! The result is an OCI [`LinuxSeccomp`] the guest agent compiles to BPF.

use super::spec::SpecError;
use moat_proto::cri::security_profile::ProfileType;
use moat_proto::cri::LinuxContainerSecurityContext;
use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use std::path::PathBuf;

/// The profile a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    /// No filter.
    Unconfined,
    /// moat's default allow-list.
    RuntimeDefault,
    /// A profile file on the host, by absolute path.
    Localhost(PathBuf),
}

fn bad(field: &str, why: impl std::fmt::Display) -> SpecError {
    SpecError(format!("{field}: {why}"))
}

/// Decides the profile from the security context (see the module doc).
pub fn choice(sc: Option<&LinuxContainerSecurityContext>) -> Result<SeccompChoice, SpecError> {
    let Some(sc) = sc else {
        return Ok(SeccompChoice::Unconfined);
    };
    if sc.privileged {
        return Ok(SeccompChoice::Unconfined);
    }
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(SeccompChoice::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(SeccompChoice::Unconfined),
            Ok(ProfileType::Localhost) => {
                let path = p
                    .localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&p.localhost_ref);
                localhost(path, "security_context.seccomp.localhost_ref")
            }
            Err(_) => Err(bad(
                "security_context.seccomp.profile_type",
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    match legacy {
        "" | "unconfined" => Ok(SeccompChoice::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path, "security_context.seccomp_profile_path"),
            None => Err(bad(
                "security_context.seccomp_profile_path",
                format!(
                    "{other:?} is not a profile (\"\", unconfined, runtime/default, \
                     docker/default or localhost/<absolute path>)"
                ),
            )),
        },
    }
}

fn localhost(path: &str, field: &str) -> Result<SeccompChoice, SpecError> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(bad(
            field,
            format!("{path:?} is not an absolute path without \"..\""),
        ));
    }
    Ok(SeccompChoice::Localhost(PathBuf::from(path)))
}

/// The OCI profile for `choice`; `caps` are the container's bounding
/// capabilities (`CAP_…` names) and `localhost` the text of a `Localhost`
/// profile, read by the caller.
pub fn profile(
    choice: &SeccompChoice,
    caps: &[String],
    localhost: Option<&str>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let field = "security_context.seccomp";
    let docker = match choice {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::RuntimeDefault => runtime_default(),
        SeccompChoice::Localhost(path) => {
            let Some(text) = localhost else {
                return Err(bad(field, format!("{}: not read", path.display())));
            };
            serde_json::from_str::<DockerProfile>(text).map_err(|e| {
                bad(
                    field,
                    format!("{}: not a seccomp profile: {e}", path.display()),
                )
            })?
        }
    };
    docker.resolve(caps).map(Some).map_err(|e| match choice {
        SeccompChoice::Localhost(path) => bad(field, format!("{}: {}", path.display(), e.0)),
        _ => e,
    })
}

/// A profile in Docker's JSON format (a superset of OCI's `linux.seccomp`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    /// Accepted for Docker compatibility; only x86_64 is filtered.
    #[serde(default)]
    #[allow(dead_code)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: String,
    #[serde(default)]
    listener_metadata: String,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: String,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<serde_json::Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: String,
}

/// The guest kernel's version: rules needing a newer kernel are skipped.
const GUEST_KERNEL: (u32, u32) = (6, 1);

fn native_arch(a: &str) -> bool {
    matches!(a, "amd64" | "x86_64" | "SCMP_ARCH_X86_64")
}

fn kernel_at_least(v: &str) -> Result<bool, String> {
    let mut it = v.split('.');
    let major = it.next().and_then(|s| s.parse::<u32>().ok());
    let minor = it.next().map(|s| s.parse::<u32>().ok()).unwrap_or(Some(0));
    match (major, minor) {
        (Some(a), Some(b)) => Ok(GUEST_KERNEL >= (a, b)),
        _ => Err(format!("minKernel {v:?} is not a kernel version like 5.8")),
    }
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

impl DockerSyscall {
    /// Whether the rule applies to this container (Docker's semantics:
    /// every included capability present, no excluded one; the native
    /// architecture included and not excluded; a new enough kernel).
    fn applies(&self, caps: &[String], field: &str) -> Result<bool, SpecError> {
        let has = |c: &String| caps.contains(&cap_name(c));
        if !self.includes.caps.iter().all(has) || self.excludes.caps.iter().any(has) {
            return Ok(false);
        }
        if !self.includes.arches.is_empty() && !self.includes.arches.iter().any(|a| native_arch(a))
        {
            return Ok(false);
        }
        if self.excludes.arches.iter().any(|a| native_arch(a)) {
            return Ok(false);
        }
        if !self.includes.min_kernel.is_empty()
            && !kernel_at_least(&self.includes.min_kernel)
                .map_err(|e| bad(&format!("{field}.includes"), e))?
        {
            return Ok(false);
        }
        if !self.excludes.min_kernel.is_empty()
            && kernel_at_least(&self.excludes.min_kernel)
                .map_err(|e| bad(&format!("{field}.excludes"), e))?
        {
            return Ok(false);
        }
        Ok(true)
    }
}

impl DockerProfile {
    /// The OCI profile for a container with `caps`.
    fn resolve(self, caps: &[String]) -> Result<LinuxSeccomp, SpecError> {
        if !self.listener_path.is_empty() || !self.listener_metadata.is_empty() {
            return Err(bad(
                "listenerPath",
                "seccomp user notification is not supported in a pod VM",
            ));
        }
        let mut syscalls = Vec::new();
        for (i, sc) in self.syscalls.iter().enumerate() {
            let field = format!("syscalls[{i}]");
            let mut names = sc.names.clone();
            if !sc.name.is_empty() {
                names.push(sc.name.clone());
            }
            if names.is_empty() {
                return Err(bad(&field, "names: required"));
            }
            if !sc.applies(caps, &field)? {
                continue;
            }
            let mut rule = serde_json::json!({"names": names, "action": sc.action});
            if let Some(e) = sc.errno_ret {
                rule["errnoRet"] = e.into();
            }
            if !sc.args.is_empty() {
                rule["args"] = sc.args.clone().into();
            }
            syscalls.push(rule);
        }
        let mut v = serde_json::json!({
            "defaultAction": self.default_action,
            "architectures": self.architectures,
            "syscalls": syscalls,
        });
        if let Some(e) = self.default_errno_ret {
            v["defaultErrnoRet"] = e.into();
        }
        if !self.flags.is_empty() {
            v["flags"] = self.flags.into();
        }
        serde_json::from_value(v).map_err(|e| SpecError(format!("not a seccomp profile: {e}")))
    }
}

/// Syscalls the default profile allows whatever the capabilities
/// (containerd's and Docker's list for x86_64).
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Syscalls the default profile allows only with a capability.
const DEFAULT_BY_CAP: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags plain `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The RuntimeDefault profile in Docker's format (resolved per container).
fn runtime_default() -> DockerProfile {
    let rule = |names: &[&str], action: &str| DockerSyscall {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: action.into(),
        ..Default::default()
    };
    let arg = |index: u32, value: u64, op: &str| serde_json::json!({"index": index, "value": value, "valueTwo": 0, "op": op});
    let mut syscalls = vec![rule(DEFAULT_ALLOWED, "SCMP_ACT_ALLOW")];
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        let mut r = rule(&["personality"], "SCMP_ACT_ALLOW");
        r.args = vec![arg(0, persona, "SCMP_CMP_EQ")];
        syscalls.push(r);
    }
    // Every socket family but AF_VSOCK.
    let mut socket = rule(&["socket"], "SCMP_ACT_ALLOW");
    socket.args = vec![arg(0, libc::AF_VSOCK as u64, "SCMP_CMP_NE")];
    syscalls.push(socket);
    for (cap, names) in DEFAULT_BY_CAP {
        let mut r = rule(names, "SCMP_ACT_ALLOW");
        r.includes.caps = vec![cap.to_string()];
        syscalls.push(r);
    }
    let mut clone = rule(&["clone"], "SCMP_ACT_ALLOW");
    clone.args = vec![serde_json::json!({
        "index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"
    })];
    clone.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(clone);
    let mut clone3 = rule(&["clone3"], "SCMP_ACT_ERRNO");
    clone3.errno_ret = Some(libc::ENOSYS as u32);
    clone3.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(clone3);
    DockerProfile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: vec![
            "SCMP_ARCH_X86_64".into(),
            "SCMP_ARCH_X86".into(),
            "SCMP_ARCH_X32".into(),
        ],
        arch_map: Vec::new(),
        flags: Vec::new(),
        listener_path: String::new(),
        listener_metadata: String::new(),
        syscalls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::SecurityProfile;

    fn sc(seccomp: Option<SecurityProfile>, path: &str) -> LinuxContainerSecurityContext {
        #[allow(deprecated)]
        LinuxContainerSecurityContext {
            seccomp,
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    fn names(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.args().as_ref().is_none_or(|a| a.is_empty()))
            .filter(|s| s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn choice_follows_cri() {
        use SeccompChoice::*;
        let prof = |t: ProfileType, r: &str| {
            Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            })
        };
        assert_eq!(choice(None).unwrap(), Unconfined);
        assert_eq!(choice(Some(&sc(None, ""))).unwrap(), Unconfined);
        assert_eq!(choice(Some(&sc(None, "unconfined"))).unwrap(), Unconfined);
        assert_eq!(
            choice(Some(&sc(None, "runtime/default"))).unwrap(),
            RuntimeDefault
        );
        assert_eq!(
            choice(Some(&sc(None, "docker/default"))).unwrap(),
            RuntimeDefault
        );
        assert_eq!(
            choice(Some(&sc(None, "localhost//etc/p.json"))).unwrap(),
            Localhost("/etc/p.json".into())
        );
        let e = choice(Some(&sc(None, "localhost/rel.json"))).unwrap_err();
        assert!(e.0.contains("seccomp_profile_path"), "{e}");
        let e = choice(Some(&sc(None, "bogus"))).unwrap_err();
        assert!(e.0.contains("seccomp_profile_path"), "{e}");
        // The SecurityProfile wins over the string.
        let s = sc(prof(ProfileType::RuntimeDefault, ""), "unconfined");
        assert_eq!(choice(Some(&s)).unwrap(), RuntimeDefault);
        let s = sc(prof(ProfileType::Unconfined, ""), "runtime/default");
        assert_eq!(choice(Some(&s)).unwrap(), Unconfined);
        let s = sc(prof(ProfileType::Localhost, "/p.json"), "");
        assert_eq!(choice(Some(&s)).unwrap(), Localhost("/p.json".into()));
        let s = sc(prof(ProfileType::Localhost, "p.json"), "");
        assert!(choice(Some(&s)).unwrap_err().0.contains("localhost_ref"));
        let mut s = sc(prof(ProfileType::RuntimeDefault, ""), "");
        s.privileged = true;
        assert_eq!(choice(Some(&s)).unwrap(), Unconfined);
    }

    #[test]
    fn runtime_default_is_an_allow_list_gated_by_capabilities() {
        let plain = profile(&SeccompChoice::RuntimeDefault, &["CAP_CHOWN".into()], None)
            .unwrap()
            .unwrap();
        assert_eq!(
            plain.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let allowed = names(&plain);
        assert!(allowed.contains(&"read".to_string()));
        for denied in [
            "mount", "unshare", "setns", "ptrace", "keyctl", "add_key", "reboot",
        ] {
            assert!(!allowed.contains(&denied.to_string()), "{denied}");
        }
        let admin = profile(
            &SeccompChoice::RuntimeDefault,
            &["CAP_SYS_ADMIN".into()],
            None,
        )
        .unwrap()
        .unwrap();
        let allowed = names(&admin);
        assert!(allowed.contains(&"mount".to_string()));
        assert!(allowed.contains(&"unshare".to_string()));
        // clone3 answers ENOSYS without CAP_SYS_ADMIN only.
        let clone3 = |p: &LinuxSeccomp| {
            p.syscalls()
                .iter()
                .flatten()
                .any(|s| s.names().contains(&"clone3".to_string()) && s.errno_ret() == Some(38))
        };
        assert!(clone3(&plain) && !clone3(&admin));
    }

    #[test]
    fn localhost_profiles_in_docker_format_resolve_includes() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"names": ["sethostname", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "comment": "old form"},
                {"names": ["chown"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
                {"names": ["rename"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "9.0"}}
            ]}"#;
        let c = SeccompChoice::Localhost("/p.json".into());
        let p = profile(&c, &["CAP_CHOWN".into()], Some(text))
            .unwrap()
            .unwrap();
        let all: Vec<String> = p
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect();
        assert_eq!(all, ["sethostname", "chmod", "mkdir"]);
        let e = profile(
            &c,
            &[],
            Some(r#"{"defaultAction":"SCMP_ACT_ALLOW","bogus":1}"#),
        )
        .unwrap_err();
        assert!(e.0.contains("/p.json") && e.0.contains("bogus"), "{e}");
        let e = profile(&c, &[], Some(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#)).unwrap_err();
        assert!(e.0.contains("/p.json"), "{e}");
    }
}
