//! The `RuntimeDefault` profile, built in Docker's format: the
//! unconditional allow-list, `personality` and `socket` (never `AF_VSOCK`)
//! by argument, the syscalls each capability unlocks, `clone` without
//! namespace flags and `clone3` answered ENOSYS unless CAP_SYS_ADMIN.

use super::default_allowed::DEFAULT_ALLOWED;
use super::docker_profile::{DockerProfile, DockerSyscall};

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
pub(super) fn runtime_default() -> DockerProfile {
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
