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
//!
//! Files: this one decides which profile a container gets and builds it;
//! `docker_profile.rs` holds the Docker/OCI JSON format (what `Localhost`
//! profiles are written in) and its resolution for a container's
//! capabilities; `default_profile.rs` builds `RuntimeDefault` in that format
//! from its capability-gated tables, and `default_allowed.rs` holds the
//! syscalls it allows unconditionally.

mod default_allowed;
mod default_profile;
mod docker_profile;
#[cfg(test)]
mod tests;

use super::spec::SpecError;
use moat_proto::cri::security_profile::ProfileType;
use moat_proto::cri::LinuxContainerSecurityContext;
use oci_spec::runtime::LinuxSeccomp;
use std::path::PathBuf;

use default_profile::runtime_default;
use docker_profile::DockerProfile;

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
