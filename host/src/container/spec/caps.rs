//! Capabilities: docker's default set, all of them when privileged, plus the
//! request's adds minus its drops.

use super::{bad, SpecError};
use moat_proto::cri::LinuxContainerSecurityContext;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use std::str::FromStr;

/// The capabilities a container gets unless it asks otherwise (docker's and
/// containerd's default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux 6.1 knows (privileged containers get them all).
pub(super) const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn parse_cap(name: &str, field: &str) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(short).map_err(|_| bad(field, format!("unknown capability {name:?}")))
}

/// The capability set: the default (or all, if privileged) plus adds minus
/// drops, "ALL" meaning every capability.
pub fn capabilities(
    sc: Option<&LinuxContainerSecurityContext>,
) -> Result<LinuxCapabilities, SpecError> {
    let privileged = sc.is_some_and(|s| s.privileged);
    let base: &[&str] = if privileged { &ALL_CAPS } else { &DEFAULT_CAPS };
    let mut set = Capabilities::new();
    for c in base {
        set.insert(parse_cap(c, "capabilities")?);
    }
    let mut ambient = Capabilities::new();
    if let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) {
        for c in &caps.add_capabilities {
            if c.eq_ignore_ascii_case("ALL") {
                for a in ALL_CAPS {
                    set.insert(parse_cap(a, "capabilities")?);
                }
            } else {
                set.insert(parse_cap(c, "capabilities.add_capabilities")?);
            }
        }
        for c in &caps.drop_capabilities {
            if c.eq_ignore_ascii_case("ALL") {
                set.clear();
            } else {
                set.remove(&parse_cap(c, "capabilities.drop_capabilities")?);
            }
        }
        for c in &caps.add_ambient_capabilities {
            let cap = parse_cap(c, "capabilities.add_ambient_capabilities")?;
            set.insert(cap);
            ambient.insert(cap);
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set.clone()))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(caps)
}
