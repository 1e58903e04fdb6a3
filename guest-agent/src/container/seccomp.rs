//! OCI seccomp profile → BPF programs (with `seccompiler`).
//!
//! An OCI profile has one default action and syscall rules that each carry
//! their own action, while a seccompiler filter has one match action and one
//! mismatch action. The profile is therefore compiled into a stack of
//! filters, relying on the kernel running every installed filter and taking
//! the most restrictive result:
//!
//! * a base filter: syscalls named by any rule → ALLOW, others → default;
//! * for each other action A used by rules: matching calls → A, others →
//!   ALLOW.
//!
//! A call matching an ALLOW rule is allowed by every filter; one matching an
//! A rule gets A; one matching nothing gets the default. Syscall names the
//! x86_64 table does not know are skipped, as libseccomp does.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::str::FromStr;

/// A profile that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action or operator that has no BPF equivalent here.
    #[error("{field}: {reason}")]
    Unsupported {
        /// Profile field.
        field: String,
        /// Why.
        reason: String,
    },
    /// seccompiler refused the filter.
    #[error("building the filter: {0}")]
    Build(#[from] seccompiler::BackendError),
}

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    field: &str,
) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported {
                field: field.to_string(),
                reason: "SCMP_ACT_NOTIFY (user notification) is not supported".into(),
            })
        }
    })
}

fn condition(
    arg: &oci_spec::runtime::LinuxSeccompArg,
    field: &str,
) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| SeccompError::Unsupported {
            field: format!("{field}.index"),
            reason: "must be 0..=5".into(),
        })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// Rules of one action: syscall number → rules (an empty list matches the
/// syscall whatever its arguments).
type RuleMap = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(map: &mut RuleMap, nr: i64, rule: Option<SeccompRule>) {
    let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        // Already unconditional: stays so.
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(v), Some(r)) => v.push(r),
    }
}

fn finish(map: RuleMap) -> BTreeMap<i64, Vec<SeccompRule>> {
    map.into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

/// Compiles `profile` into BPF programs to install in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let mut all: RuleMap = BTreeMap::new();
    // Keyed by the action's BPF return value so equal actions share a filter.
    let mut by_action: BTreeMap<u32, (SeccompAction, RuleMap)> = BTreeMap::new();
    for (i, sc) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
        let rule = match sc.args() {
            Some(args) if !args.is_empty() => {
                let conds = args
                    .iter()
                    .enumerate()
                    .map(|(j, a)| condition(a, &format!("{field}.args[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(SeccompRule::new(conds)?)
            }
            _ => None,
        };
        for name in sc.names() {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            let nr = i64::from(sysno.id());
            add_rule(&mut all, nr, rule.clone());
            if act != SeccompAction::Allow {
                let key = u32::from(act.clone());
                let (_, map) = by_action
                    .entry(key)
                    .or_insert_with(|| (act.clone(), BTreeMap::new()));
                add_rule(map, nr, rule.clone());
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        let f = SeccompFilter::new(
            finish(all),
            default,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        programs.push(BpfProgram::try_from(f)?);
    }
    for (_, (act, map)) in by_action {
        let f = SeccompFilter::new(finish(map), SeccompAction::Allow, act, TargetArch::x86_64)?;
        programs.push(BpfProgram::try_from(f)?);
    }
    Ok(programs)
}

/// A program allowing only the syscalls `names`; any other fails with
/// EPERM (an error, not a kill, so a call this list forgot cannot take down
/// the process holding a pod's namespaces).
pub fn allow_only(names: &[&str]) -> Result<BpfProgram, SeccompError> {
    let mut rules = BTreeMap::new();
    for name in names {
        if let Ok(sysno) = syscalls::Sysno::from_str(name) {
            rules.insert(i64::from(sysno.id()), Vec::new());
        }
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(BpfProgram::try_from(f)?)
}

/// Installs compiled programs on the calling thread (needs no_new_privs or
/// CAP_SYS_ADMIN).
pub fn install(programs: &[BpfProgram]) -> Result<(), seccompiler::Error> {
    for p in programs {
        seccompiler::apply_filter(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allowlist_profile_is_one_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "syscalls":[{"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 1);
        assert!(!progs[0].is_empty());
    }

    #[test]
    fn denylist_profile_has_a_filter_per_action() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},
                            {"names":["chmod"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                            {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                            {"names":["clone"],"action":"SCMP_ACT_KILL_PROCESS",
                             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        // EPERM, EACCES and KILL_PROCESS: three filters, no base filter.
        assert_eq!(compile(&p).unwrap().len(), 3);
    }

    #[test]
    fn unsupported_parts_are_named() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&p)
            .unwrap_err()
            .to_string()
            .contains("defaultAction"));
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("syscalls[0].args[0].index"), "{e}");
    }

    #[test]
    fn filter_denies_in_a_child_process() {
        // Install a profile in a forked child and check a denied syscall
        // returns the errno while an unlisted one works.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":77}]}"#,
        );
        let progs = compile(&p).unwrap();
        let _g = crate::FORK_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // SAFETY: the child only calls async-signal-safe functions (prctl,
        // seccomp via syscall, getcwd, getpid, _exit) before exiting.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: raw syscalls on values owned by this frame (the
                // filter programs outlive the seccomp call, `buf` the
                // getcwd); errno is this thread's.
                let code = unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        libc::_exit(10);
                    }
                    for prog in &progs {
                        let fprog = libc::sock_fprog {
                            len: prog.len() as u16,
                            filter: prog.as_ptr() as *mut libc::sock_filter,
                        };
                        if libc::syscall(
                            libc::SYS_seccomp,
                            libc::SECCOMP_SET_MODE_FILTER,
                            0,
                            &raw const fprog,
                        ) != 0
                        {
                            libc::_exit(11);
                        }
                    }
                    let mut buf = [0u8; 256];
                    let r = libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len());
                    let errno = *libc::__errno_location();
                    if r == -1 && errno == 77 && libc::getpid() > 0 {
                        0
                    } else {
                        12
                    }
                };
                // SAFETY: ends the forked child without running the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
