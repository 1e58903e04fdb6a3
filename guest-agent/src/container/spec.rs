//! OCI runtime spec → setup plan.
//!
//! The agent checks the host's spec here and turns it into a [`ContainerPlan`]:
//! plain data with every field validated, which the re-executed init stage
//! then carries out. Errors name the offending spec field.

use crate::paths::check_container_path;
use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A spec field that is invalid or not supported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("oci spec {field}: {reason}")]
pub struct SpecError {
    /// JSON path of the field, e.g. `mounts[2].source`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

pub(crate) fn spec_err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A namespace kind the engine handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsKind {
    /// Mount.
    Mount,
    /// Hostname and domain name.
    Uts,
    /// System V IPC, POSIX message queues.
    Ipc,
    /// Process ids.
    Pid,
    /// Network.
    Net,
    /// cgroup root.
    Cgroup,
}

impl NsKind {
    /// The `clone(2)` flag.
    pub fn flag(self) -> nix::sched::CloneFlags {
        use nix::sched::CloneFlags as F;
        match self {
            NsKind::Mount => F::CLONE_NEWNS,
            NsKind::Uts => F::CLONE_NEWUTS,
            NsKind::Ipc => F::CLONE_NEWIPC,
            NsKind::Pid => F::CLONE_NEWPID,
            NsKind::Net => F::CLONE_NEWNET,
            NsKind::Cgroup => F::CLONE_NEWCGROUP,
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Mount => "mnt",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Pid => "pid",
            NsKind::Net => "net",
            NsKind::Cgroup => "cgroup",
        }
    }

    /// Every kind, in the order namespaces are joined (mount last, as it
    /// changes the root the other paths are resolved in).
    pub const ALL: [NsKind; 6] = [
        NsKind::Cgroup,
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Net,
        NsKind::Pid,
        NsKind::Mount,
    ];
}

/// Which namespaces the container joins (by path) and which it creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// Existing namespaces to enter with setns.
    pub join: Vec<(NsKind, PathBuf)>,
    /// New namespaces to create with unshare.
    pub create: Vec<NsKind>,
}

impl NamespacePlan {
    /// Whether the container gets a namespace of `kind` of its own.
    pub fn creates(&self, kind: NsKind) -> bool {
        self.create.contains(&kind)
    }
}

/// One mount to perform inside the container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// Mount source (device, fs name, or bind source path).
    pub source: Option<PathBuf>,
    /// Destination inside the container (absolute, resolved in the rootfs).
    pub destination: PathBuf,
    /// Filesystem type (`None` for binds).
    pub fstype: Option<String>,
    /// `MS_*` flags (without propagation flags).
    pub flags: u64,
    /// Filesystem-specific options (`mode=755,size=...`).
    pub data: String,
    /// Propagation flags applied after mounting (`MS_PRIVATE`, ...).
    pub propagation: u64,
}

impl MountPlan {
    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags & MsFlags::MS_BIND.bits() != 0
    }
}

/// A device node to create in the container's /dev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// Absolute path in the container.
    pub path: PathBuf,
    /// `c`, `b` or `p`.
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Capability sets by canonical name (`CAP_KILL`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsPlan {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

/// The process to run and the identity and limits it runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// argv; `args[0]` is looked up in the process's `PATH` when relative.
    pub args: Vec<String>,
    /// Environment `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// umask, if set.
    pub umask: Option<u32>,
    /// Allocate a terminal.
    pub terminal: bool,
    /// Capabilities (an absent spec field means none at all).
    pub caps: CapsPlan,
    /// Set no_new_privs.
    pub no_new_privileges: bool,
    /// (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// Seccomp profile, already checked to compile.
    pub seccomp: Option<LinuxSeccomp>,
}

/// Everything the init stage does to create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// The prepared root directory (overlay mount point) in the agent's view.
    pub rootfs: PathBuf,
    /// Remount the root read-only at the end.
    pub readonly_root: bool,
    /// Propagation of the container's root (`MS_PRIVATE` by default).
    pub root_propagation: u64,
    /// Namespaces.
    pub namespaces: NamespacePlan,
    /// Hostname (needs a new UTS namespace).
    pub hostname: Option<String>,
    /// Domain name (needs a new UTS namespace).
    pub domainname: Option<String>,
    /// Mounts in spec order.
    pub mounts: Vec<MountPlan>,
    /// Device nodes to create.
    pub devices: Vec<DevicePlan>,
    /// Paths hidden from the container.
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// Sysctls as (`/proc/sys` relative path, value).
    pub sysctls: Vec<(String, String)>,
    /// The process.
    pub process: ProcessPlan,
}

/// What a spec may refer to outside its rootfs.
#[derive(Debug, Clone)]
pub struct PlanPolicy {
    /// Directories bind mount sources must be inside.
    pub bind_source_dirs: Vec<PathBuf>,
    /// Directories namespace paths must be inside (`/proc` is always allowed).
    pub namespace_dirs: Vec<PathBuf>,
}

/// Parses the spec JSON the host sent.
pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(json)
        .map_err(|e| spec_err("(document)", format!("not a valid OCI runtime spec: {e}")))
}

/// Splits mount options into `MS_*` flags, propagation flags and data.
pub fn parse_mount_options(options: &[String]) -> (u64, u64, String) {
    let mut flags = MsFlags::empty();
    let mut prop = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let (set, clear, p) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other);
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
        prop |= p;
    }
    (flags.bits(), prop.bits(), data.join(","))
}

fn propagation_of(s: &str) -> Option<u64> {
    let f = match s {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    };
    Some(f.bits())
}

fn inside_any(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| path.starts_with(d))
}

/// Builds the plan for a new container whose prepared root is `rootfs`.
pub fn container_plan(
    spec: &Spec,
    rootfs: &Path,
    policy: &PlanPolicy,
) -> Result<ContainerPlan, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| spec_err("process", "is required"))?;
    let process = process_plan(process, "process")?;
    // Not Linux::default(): that carries oci-spec's example namespaces and
    // masked paths. A spec without `linux` asks for none of them.
    let linux: oci_spec::runtime::Linux = match spec.linux() {
        Some(l) => l.clone(),
        None => serde_json::from_str("{}").map_err(|e| spec_err("linux", e.to_string()))?,
    };

    // Namespaces. A mount namespace is always created: the container's
    // mounts must never land in the agent's namespace.
    let mut ns = NamespacePlan {
        join: Vec::new(),
        create: vec![NsKind::Mount],
    };
    for (i, n) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let kind = match n.typ() {
            LinuxNamespaceType::Mount => NsKind::Mount,
            LinuxNamespaceType::Uts => NsKind::Uts,
            LinuxNamespaceType::Ipc => NsKind::Ipc,
            LinuxNamespaceType::Pid => NsKind::Pid,
            LinuxNamespaceType::Network => NsKind::Net,
            LinuxNamespaceType::Cgroup => NsKind::Cgroup,
            other => {
                return Err(spec_err(
                    format!("{field}.type"),
                    format!("{other} namespaces are not supported"),
                ))
            }
        };
        if ns.join.iter().any(|(k, _)| *k == kind)
            || (kind != NsKind::Mount && ns.create.contains(&kind))
        {
            return Err(spec_err(field, format!("{kind:?} namespace listed twice")));
        }
        match n.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                if kind == NsKind::Mount {
                    return Err(spec_err(
                        format!("{field}.path"),
                        "joining an existing mount namespace is not supported",
                    ));
                }
                check_container_path("namespace path", p)
                    .map_err(|e| spec_err(format!("{field}.path"), e.to_string()))?;
                let ok = p.starts_with("/proc") || inside_any(p, &policy.namespace_dirs);
                if !ok || p.components().any(|c| c == std::path::Component::ParentDir) {
                    return Err(spec_err(
                        format!("{field}.path"),
                        format!("{} is not a sandbox namespace or /proc path", p.display()),
                    ));
                }
                ns.join.push((kind, p.clone()));
            }
            _ => {
                if kind != NsKind::Mount {
                    ns.create.push(kind);
                }
            }
        }
    }

    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    let domainname = spec.domainname().clone().filter(|h| !h.is_empty());
    for (field, v) in [("hostname", &hostname), ("domainname", &domainname)] {
        if let Some(h) = v {
            if !ns.creates(NsKind::Uts) {
                return Err(spec_err(
                    field,
                    "needs a new UTS namespace (linux.namespaces)",
                ));
            }
            if h.len() > 64 || h.contains(['\0', '/']) {
                return Err(spec_err(field, "at most 64 bytes, no NUL or '/'"));
            }
        }
    }

    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        check_container_path("destination", m.destination())
            .map_err(|e| spec_err(format!("{field}.destination"), e.to_string()))?;
        let options = m.options().clone().unwrap_or_default();
        let (flags, propagation, data) = parse_mount_options(&options);
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = flags & MsFlags::MS_BIND.bits() != 0 || typ == "bind";
        let (flags, fstype) = if is_bind {
            (flags | MsFlags::MS_BIND.bits(), None)
        } else {
            match typ.as_str() {
                "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2" => {
                    (flags, Some(typ.clone()))
                }
                "cgroup" => (flags, Some("cgroup2".to_string())),
                "" => return Err(spec_err(format!("{field}.type"), "is required unless the mount is a bind")),
                other => {
                    return Err(spec_err(
                        format!("{field}.type"),
                        format!("{other:?} is not supported (bind, proc, sysfs, tmpfs, devpts, mqueue, cgroup2)"),
                    ))
                }
            }
        };
        if data.len() > 4096 || data.contains('\0') {
            return Err(spec_err(format!("{field}.options"), "too long or has NUL"));
        }
        let source = m.source().clone();
        if is_bind {
            let src = source.as_ref().ok_or_else(|| {
                spec_err(format!("{field}.source"), "a bind mount needs a source")
            })?;
            let ok = src.is_absolute()
                && !src
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                && inside_any(src, &policy.bind_source_dirs);
            if !ok {
                return Err(spec_err(
                    format!("{field}.source"),
                    format!(
                        "{} is outside the directories the host may bind from ({})",
                        src.display(),
                        policy
                            .bind_source_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        mounts.push(MountPlan {
            source,
            destination: m.destination().clone(),
            fstype,
            flags,
            data,
            propagation,
        });
    }

    let mut devices = Vec::new();
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        if !d.path().starts_with("/dev/")
            || d.path()
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(spec_err(format!("{field}.path"), "must be under /dev/"));
        }
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::C | oci_spec::runtime::LinuxDeviceType::U => 'c',
            oci_spec::runtime::LinuxDeviceType::B => 'b',
            oci_spec::runtime::LinuxDeviceType::P => 'p',
            oci_spec::runtime::LinuxDeviceType::A => {
                return Err(spec_err(
                    format!("{field}.type"),
                    "\"a\" is not a device node type",
                ))
            }
        };
        if d.major() < 0 || d.minor() < 0 {
            return Err(spec_err(field, "major and minor must be >= 0"));
        }
        devices.push(DevicePlan {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }

    let check_paths = |field: &str, v: &Option<Vec<String>>| -> Result<Vec<PathBuf>, SpecError> {
        let mut out = Vec::new();
        for (i, p) in v.iter().flatten().enumerate() {
            let p = PathBuf::from(p);
            check_container_path("path", &p)
                .map_err(|e| spec_err(format!("{field}[{i}]"), e.to_string()))?;
            out.push(p);
        }
        Ok(out)
    };
    let masked_paths = check_paths("linux.maskedPaths", linux.masked_paths())?;
    let readonly_paths = check_paths("linux.readonlyPaths", linux.readonly_paths())?;

    let mut sysctls = Vec::new();
    if let Some(map) = linux.sysctl() {
        let mut keys: Vec<_> = map.keys().collect();
        keys.sort();
        for k in keys {
            let rel = sysctl_path(k).map_err(|r| spec_err(format!("linux.sysctl[{k:?}]"), r))?;
            sysctls.push((rel, map[k].clone()));
        }
    }

    let root_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => (MsFlags::MS_PRIVATE | MsFlags::MS_REC).bits(),
        Some(p) => propagation_of(p).ok_or_else(|| {
            spec_err(
                "linux.rootfsPropagation",
                format!("{p:?} is not a propagation mode"),
            )
        })?,
    };

    Ok(ContainerPlan {
        rootfs: rootfs.to_path_buf(),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        root_propagation,
        namespaces: ns,
        hostname,
        domainname,
        mounts,
        devices,
        masked_paths,
        readonly_paths,
        sysctls,
        process,
    })
}

/// Checks a sysctl name and returns its path under /proc/sys.
pub fn sysctl_path(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key.split(['.', '/']).all(|c| {
            !c.is_empty()
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | ':'))
        });
    if !ok {
        return Err("not a sysctl name like net.ipv4.ip_forward".into());
    }
    Ok(key.replace('.', "/"))
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> u32 {
    use oci_spec::runtime::PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Checks a capability name list and returns canonical names.
fn cap_names(
    field: &str,
    set: &Option<oci_spec::runtime::Capabilities>,
) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        name.parse::<caps::Capability>().map_err(|_| {
            spec_err(
                field,
                format!("{name} is not a capability this agent knows"),
            )
        })?;
        out.push(name);
    }
    out.sort();
    Ok(out)
}

/// Builds the plan for a process (the container's or an exec's); `field` is
/// the JSON path prefix for error messages.
pub fn process_plan(p: &Process, field: &str) -> Result<ProcessPlan, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(spec_err(format!("{field}.args"), "must name a program"));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(spec_err(format!("{field}.args"), "must not contain NUL"));
    }
    let env = p.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(spec_err(format!("{field}.env[{i}]"), "must be KEY=value"));
        }
    }
    let cwd = if p.cwd().as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        p.cwd().clone()
    };
    check_container_path("cwd", &cwd)
        .map_err(|e| spec_err(format!("{field}.cwd"), e.to_string()))?;
    let caps = match p.capabilities() {
        Some(c) => CapsPlan {
            bounding: cap_names(&format!("{field}.capabilities.bounding"), c.bounding())?,
            effective: cap_names(&format!("{field}.capabilities.effective"), c.effective())?,
            permitted: cap_names(&format!("{field}.capabilities.permitted"), c.permitted())?,
            inheritable: cap_names(
                &format!("{field}.capabilities.inheritable"),
                c.inheritable(),
            )?,
            ambient: cap_names(&format!("{field}.capabilities.ambient"), c.ambient())?,
        },
        None => CapsPlan::default(),
    };
    let mut rlimits = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(spec_err(
                format!("{field}.rlimits[{i}]"),
                "soft limit above hard limit",
            ));
        }
        rlimits.push((rlimit_resource(r.typ()), r.soft(), r.hard()));
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(spec_err(
                format!("{field}.oomScoreAdj"),
                "must be in -1000..=1000",
            ));
        }
    }
    let user = p.user();
    if let Some(u) = user.umask() {
        if u > 0o777 {
            return Err(spec_err(format!("{field}.user.umask"), "must be <= 0777"));
        }
    }
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        terminal: p.terminal().unwrap_or(false),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        rlimits,
        oom_score_adj: p.oom_score_adj(),
        seccomp: None,
    })
}

/// What an exec'd process inherits from its container when its own
/// Process does not say otherwise: the container's capabilities (when the
/// exec names none), its seccomp profile (always: the profile belongs to the
/// container), and no_new_privs (once set for the container, always set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecDefaults {
    /// The container process's capabilities.
    pub caps: CapsPlan,
    /// The container's seccomp profile.
    pub seccomp: Option<LinuxSeccomp>,
    /// The container process's no_new_privs.
    pub no_new_privileges: bool,
}

impl ExecDefaults {
    /// The defaults a container's own process plan implies.
    pub fn from_container(p: &ProcessPlan) -> Self {
        Self {
            caps: p.caps.clone(),
            seccomp: p.seccomp.clone(),
            no_new_privileges: p.no_new_privileges,
        }
    }
}

/// Builds the plan of an exec'd process from its OCI Process and the
/// container's defaults.
pub fn exec_plan(p: &Process, defaults: &ExecDefaults) -> Result<ProcessPlan, SpecError> {
    let mut plan = process_plan(p, "process")?;
    if p.capabilities().is_none() {
        plan.caps = defaults.caps.clone();
    }
    plan.seccomp = defaults.seccomp.clone();
    plan.no_new_privileges |= defaults.no_new_privileges;
    Ok(plan)
}

/// Attaches and checks the spec's seccomp profile to a process plan.
pub fn with_seccomp(mut plan: ProcessPlan, spec: &Spec) -> Result<ProcessPlan, SpecError> {
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) {
        super::seccomp::compile(&s).map_err(|e| spec_err("linux.seccomp", e.to_string()))?;
        plan.seccomp = Some(s);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PlanPolicy {
        PlanPolicy {
            bind_source_dirs: vec!["/run/moat/shared".into()],
            namespace_dirs: vec!["/run/moat/sandbox/ns".into()],
        }
    }

    fn spec(extra: &str) -> Spec {
        let base = r#"{"ociVersion":"1.0.2","process":{"args":["/bin/sh","-c","true"],"cwd":"/","user":{"uid":1000,"gid":1000,"additionalGids":[5]},
            "env":["PATH=/bin"],"noNewPrivileges":true,"oomScoreAdj":100,
            "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]},
            "rlimits":[{"type":"RLIMIT_NOFILE","soft":1024,"hard":2048}]}"#;
        serde_json::from_str(&format!("{base}{extra}}}")).unwrap()
    }

    #[test]
    fn translates_a_typical_spec() {
        let s = spec(
            r#","root":{"path":"rootfs","readonly":true},"hostname":"web",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                      {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
                      {"destination":"/etc/hosts","type":"bind","source":"/run/moat/shared/hosts","options":["rbind","ro","rprivate"]}],
            "linux":{"namespaces":[{"type":"pid"},{"type":"uts"},{"type":"mount"},{"type":"ipc","path":"/run/moat/sandbox/ns/ipc"}],
                     "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"sysctl":{"net.ipv4.ping_group_range":"0 0"},
                     "devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]}"#,
        );
        let p = container_plan(&s, Path::new("/r"), &policy()).unwrap();
        assert!(p.readonly_root);
        assert_eq!(p.hostname.as_deref(), Some("web"));
        assert_eq!(
            p.namespaces.create,
            vec![NsKind::Mount, NsKind::Pid, NsKind::Uts]
        );
        assert_eq!(
            p.namespaces.join,
            vec![(NsKind::Ipc, PathBuf::from("/run/moat/sandbox/ns/ipc"))]
        );
        assert_eq!(p.mounts.len(), 3);
        assert_eq!(p.mounts[1].data, "mode=755,size=65536k");
        assert_eq!(
            p.mounts[1].flags,
            (MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME).bits()
        );
        assert!(p.mounts[2].is_bind());
        assert_eq!(p.mounts[2].fstype, None);
        assert_eq!(
            p.mounts[2].flags,
            (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY).bits()
        );
        assert_eq!(
            p.mounts[2].propagation,
            (MsFlags::MS_PRIVATE | MsFlags::MS_REC).bits()
        );
        assert_eq!(
            p.sysctls,
            vec![("net/ipv4/ping_group_range".into(), "0 0".into())]
        );
        assert_eq!(p.devices[0].kind, 'c');
        assert_eq!(p.process.uid, 1000);
        assert_eq!(p.process.additional_gids, vec![5]);
        assert_eq!(p.process.caps.bounding, vec!["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.process.caps.effective, vec!["CAP_KILL"]);
        assert!(p.process.no_new_privileges);
        assert_eq!(p.process.rlimits, vec![(libc::RLIMIT_NOFILE, 1024, 2048)]);
        assert_eq!(p.process.oom_score_adj, Some(100));
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let cases = [
            (
                r#","mounts":[{"destination":"/x","type":"bind","source":"/etc"}]"#,
                "mounts[0].source",
            ),
            (
                r#","mounts":[{"destination":"/x","type":"bind","source":"/run/moat/shared/../../etc"}]"#,
                "mounts[0].source",
            ),
            (
                r#","mounts":[{"destination":"rel","type":"tmpfs"}]"#,
                "mounts[0].destination",
            ),
            (
                r#","mounts":[{"destination":"/x","type":"nfs"}]"#,
                "mounts[0].type",
            ),
            (r#","hostname":"h""#, "hostname"),
            (
                r#","linux":{"namespaces":[{"type":"user"}]}"#,
                "linux.namespaces[0].type",
            ),
            (
                r#","linux":{"namespaces":[{"type":"network","path":"/etc/passwd"}]}"#,
                "linux.namespaces[0].path",
            ),
            (
                r#","linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}"#,
                "linux.namespaces[1]",
            ),
            (
                r#","linux":{"sysctl":{"../../x":"1"}}"#,
                "linux.sysctl[\"../../x\"]",
            ),
            (
                r#","linux":{"devices":[{"path":"/etc/x","type":"c","major":1,"minor":1}]}"#,
                "linux.devices[0].path",
            ),
            (
                r#","linux":{"rootfsPropagation":"weird"}"#,
                "linux.rootfsPropagation",
            ),
        ];
        for (extra, field) in cases {
            let e = container_plan(&spec(extra), Path::new("/r"), &policy()).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
        let no_args: Process =
            serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}"#).unwrap();
        assert_eq!(
            process_plan(&no_args, "process").unwrap_err().field,
            "process.args"
        );
        let bad_env: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"],"env":["NOEQUALS"]}"#,
        )
        .unwrap();
        assert_eq!(
            process_plan(&bad_env, "process").unwrap_err().field,
            "process.env[0]"
        );
        let bad_rl: Process = serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"],"rlimits":[{"type":"RLIMIT_NOFILE","soft":5,"hard":1}]}"#).unwrap();
        assert_eq!(
            process_plan(&bad_rl, "process").unwrap_err().field,
            "process.rlimits[0]"
        );
        assert!(parse_spec(b"{not json").is_err());
    }

    #[test]
    fn exec_inherits_the_containers_restrictions() {
        let s = spec(
            r#","linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}}"#,
        );
        let plan = container_plan(&s, Path::new("/r"), &policy()).unwrap();
        let proc_plan = with_seccomp(plan.process, &s).unwrap();
        let d = ExecDefaults::from_container(&proc_plan);
        let bare: Process =
            serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]}"#).unwrap();
        let e = exec_plan(&bare, &d).unwrap();
        assert_eq!(e.caps, proc_plan.caps);
        assert!(e.seccomp.is_some());
        assert!(e.no_new_privileges);
        let own: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"capabilities":{"bounding":["CAP_KILL"]}}"#,
        )
        .unwrap();
        assert_eq!(exec_plan(&own, &d).unwrap().caps.bounding, vec!["CAP_KILL"]);
    }

    #[test]
    fn mount_option_parsing() {
        let (f, p, d) = parse_mount_options(&[
            "ro".into(),
            "rw".into(),
            "nodev".into(),
            "rslave".into(),
            "size=1m".into(),
        ]);
        assert_eq!(f, MsFlags::MS_NODEV.bits());
        assert_eq!(p, (MsFlags::MS_SLAVE | MsFlags::MS_REC).bits());
        assert_eq!(d, "size=1m");
    }
}
