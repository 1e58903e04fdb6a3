//! OCI runtime spec → setup plan.
//!
//! The agent checks the host's spec here and turns it into a [`ContainerPlan`]:
//! plain data with every field validated, which the re-executed init stage
//! then carries out. Errors name the offending spec field.
//!
//! One module per concern: `namespaces`, `mounts` (mounts, devices, mount
//! options), `process` (arguments, user, capabilities, rlimits, seccomp, and
//! exec'd processes); this file checks a whole spec into a [`ContainerPlan`].

mod mounts;
mod namespaces;
mod process;

use mounts::propagation_of;
pub use mounts::{parse_mount_options, DevicePlan, MountPlan};
pub use namespaces::{NamespacePlan, NsKind};
pub use process::{exec_plan, process_plan, with_seccomp, CapsPlan, ExecDefaults, ProcessPlan};

use crate::paths::check_container_path;
use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
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

#[cfg(test)]
mod tests;
