//! The process: arguments, identity, capabilities, limits and seccomp, for a
//! container's own process and for exec'd ones.

use super::{spec_err, SpecError};
use crate::paths::check_container_path;
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
        crate::container::seccomp::compile(&s)
            .map_err(|e| spec_err("linux.seccomp", e.to_string()))?;
        plan.seccomp = Some(s);
    }
    Ok(plan)
}
