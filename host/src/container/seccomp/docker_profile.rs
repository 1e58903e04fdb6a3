//! Seccomp profiles in Docker's JSON format (a superset of OCI's
//! `linux.seccomp`, and what `Localhost` profiles are written in): the
//! serde types, with unknown keys refused, and their resolution for one
//! container — `includes`/`excludes` by capability, architecture and
//! minimum guest kernel — into an OCI [`LinuxSeccomp`].

use super::bad;
use crate::container::spec::SpecError;
use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;

/// A profile in Docker's JSON format (a superset of OCI's `linux.seccomp`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DockerProfile {
    pub(super) default_action: String,
    #[serde(default)]
    pub(super) default_errno_ret: Option<u32>,
    #[serde(default)]
    pub(super) architectures: Vec<String>,
    /// Accepted for Docker compatibility; only x86_64 is filtered.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub(super) flags: Vec<String>,
    #[serde(default)]
    pub(super) listener_path: String,
    #[serde(default)]
    pub(super) listener_metadata: String,
    #[serde(default)]
    pub(super) syscalls: Vec<DockerSyscall>,
}

/// One `archMap` entry (accepted, not used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

/// One `syscalls` rule.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DockerSyscall {
    #[serde(default)]
    pub(super) names: Vec<String>,
    #[serde(default)]
    pub(super) name: String,
    pub(super) action: String,
    #[serde(default)]
    pub(super) errno_ret: Option<u32>,
    #[serde(default)]
    pub(super) args: Vec<serde_json::Value>,
    #[serde(default)]
    pub(super) includes: Filter,
    #[serde(default)]
    pub(super) excludes: Filter,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) comment: String,
}

/// A rule's `includes` or `excludes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Filter {
    #[serde(default)]
    pub(super) caps: Vec<String>,
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
    pub(super) fn resolve(self, caps: &[String]) -> Result<LinuxSeccomp, SpecError> {
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
