//! The checks a RunPodSandbox request passes before anything is made, and
//! the pod's hostname as kubelet derives it.

use super::manager::PodError;
use crate::network::capability_args::capability_args;
use moat_proto::cri::{NamespaceMode, PodSandboxConfig};

pub(super) fn validate(config: &PodSandboxConfig) -> Result<(), PodError> {
    let Some(md) = &config.metadata else {
        return Err(PodError::Invalid("config.metadata: required".into()));
    };
    for (field, value) in [
        ("name", &md.name),
        ("namespace", &md.namespace),
        ("uid", &md.uid),
    ] {
        if value.trim().is_empty() {
            return Err(PodError::Invalid(format!(
                "config.metadata.{field}: required"
            )));
        }
        crate::network::cni::check_cni_arg(&format!("config.metadata.{field}"), value)
            .map_err(PodError::Invalid)?;
    }
    pod_hostname(config)?;
    crate::logs::location::check_log_directory(&config.log_directory).map_err(PodError::Invalid)?;
    run_as_group_needs_user(config)?;
    capability_args(config, &[]).map_err(PodError::Invalid)?;
    for key in config.linux.iter().flat_map(|l| l.sysctls.keys()) {
        if moat_proto::sysctl_namespace(key).is_none() {
            return Err(PodError::Invalid(format!(
                "config.linux.sysctls[{key:?}]: not a namespaced sysctl; a pod may set \
                 kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, kernel.hostname, \
                 kernel.domainname and net.*"
            )));
        }
    }
    Ok(())
}

/// The pod's hostname: `config.hostname`, or, when empty, the pod name cut
/// to 63 characters with trailing `-` and `.` trimmed, as kubelet derives
/// it. Either must be an RFC 1123 hostname of 1..=64 bytes.
pub(crate) fn pod_hostname(config: &PodSandboxConfig) -> Result<String, PodError> {
    let (field, hostname) = if config.hostname.is_empty() {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        let cut: String = name.chars().take(63).collect();
        (
            "config.metadata.name (the hostname when config.hostname is empty)",
            cut.trim_end_matches(['-', '.']).to_string(),
        )
    } else {
        ("config.hostname", config.hostname.clone())
    };
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(PodError::Invalid(format!(
            "{field}: {hostname:?} must be 1..=64 bytes"
        )));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !hostname.split('.').all(label_ok) {
        return Err(PodError::Invalid(format!(
            "{field}: {hostname:?} is not an RFC 1123 hostname"
        )));
    }
    Ok(hostname)
}

/// CRI: `run_as_group` may only be set together with `run_as_user` or
/// `run_as_username`.
fn run_as_group_needs_user(config: &PodSandboxConfig) -> Result<(), PodError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if let Some(sc) = sc {
        if sc.run_as_group.is_some() && sc.run_as_user.is_none() {
            return Err(PodError::Invalid(
                "config.linux.security_context.run_as_group: only allowed together with run_as_user"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Every pod runs in a microVM, whose namespaces are its own: a pod that
/// asks for the node's network, PID or IPC namespace (hostNetwork, hostPID,
/// hostIPC) is refused rather than given a VM that lacks what it asked for.
/// Whether the pod asks for the node's namespace of `kind` (`network`,
/// `pid`, `ipc`).
pub(super) fn uses_host(config: &PodSandboxConfig, kind: &str) -> bool {
    let Some(n) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    else {
        return false;
    };
    let mode = match kind {
        "network" => n.network,
        "pid" => n.pid,
        _ => n.ipc,
    };
    mode == NamespaceMode::Node as i32
}

/// A native pod's sysctls must not reach the node: none for a namespace
/// the pod shares with the node.
pub(super) fn native_sysctls(config: &PodSandboxConfig) -> Result<(), PodError> {
    for key in config.linux.iter().flat_map(|l| l.sysctls.keys()) {
        let host = match moat_proto::sysctl_namespace(key) {
            Some("net") => uses_host(config, "network").then_some("hostNetwork"),
            Some("ipc") => uses_host(config, "ipc").then_some("hostIPC"),
            _ => None,
        };
        if let Some(field) = host {
            return Err(PodError::Invalid(format!(
                "config.linux.sysctls[{key:?}]: the pod uses the node's namespace                  ({field}): setting it would change the node"
            )));
        }
    }
    Ok(())
}

/// Why a microVM pod's container may not be privileged (the handler may
/// allow it: `guest_privileged`).
pub const VM_PRIVILEGED: &str = "a container in a microVM pod cannot be privileged on the node: \
     its privileges would reach only its own guest. Run it with a native handler (the \
     built-in `runc`), or set `guest_privileged = true` on the microVM handler to allow \
     privileges over the guest";

/// A privileged pod in a microVM is refused unless its handler allows
/// privileges over the guest (kubelet marks the pod privileged when any of
/// its containers is).
pub(super) fn no_privileged(config: &PodSandboxConfig) -> Result<(), PodError> {
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged {
        return Err(PodError::Invalid(format!(
            "config.linux.security_context.privileged: {VM_PRIVILEGED}"
        )));
    }
    Ok(())
}

/// A pod in a microVM gets no node namespace (its VM's are its own).
pub(super) fn no_host_namespaces(config: &PodSandboxConfig) -> Result<(), PodError> {
    for (kind, field) in [
        ("network", "hostNetwork"),
        ("pid", "hostPID"),
        ("ipc", "hostIPC"),
    ] {
        if uses_host(config, kind) {
            return Err(PodError::Invalid(format!(
                "config.linux.security_context.namespace_options.{kind}: NODE ({field}) \
                 cannot be given to a pod in a microVM, whose {kind} namespace is its own, \
                 never the node's"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks a microVM pod gets.
    fn checked(c: &PodSandboxConfig) -> Result<(), PodError> {
        validate(c)?;
        no_host_namespaces(c)
    }
    use moat_proto::cri::PodSandboxMetadata;

    #[test]
    fn metadata_fields_are_required() {
        let mut c = PodSandboxConfig::default();
        assert!(checked(&c)
            .unwrap_err()
            .to_string()
            .contains("config.metadata"));
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "".into(),
            attempt: 0,
        });
        assert!(checked(&c)
            .unwrap_err()
            .to_string()
            .contains("config.metadata.uid"));
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        assert!(checked(&c).is_ok());
        // Names go into CNI_ARGS, which cannot escape `;` or `=`.
        c.metadata = Some(PodSandboxMetadata {
            name: "web;IP=10.0.0.9".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        let e = checked(&c).unwrap_err().to_string();
        assert!(
            e.contains("config.metadata.name") && e.contains("CNI_ARGS"),
            "{e}"
        );
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        c.log_directory = "/var/log/pods/../../../run".into();
        let e = checked(&c).unwrap_err().to_string();
        assert!(e.contains("config.log_directory"), "{e}");
    }

    #[test]
    fn host_namespaces_are_refused_naming_the_field() {
        use moat_proto::cri::{
            LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption,
        };
        for (kind, field) in [
            ("network", "hostNetwork"),
            ("pid", "hostPID"),
            ("ipc", "hostIPC"),
        ] {
            let mut ns = NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: NamespaceMode::Pod as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            };
            match kind {
                "network" => ns.network = NamespaceMode::Node as i32,
                "pid" => ns.pid = NamespaceMode::Node as i32,
                _ => ns.ipc = NamespaceMode::Node as i32,
            }
            let c = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "a".into(),
                    namespace: "b".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                linux: Some(LinuxPodSandboxConfig {
                    security_context: Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(ns),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let e = checked(&c).unwrap_err();
            assert!(matches!(e, PodError::Invalid(_)), "{e}");
            let want = format!("namespace_options.{kind}: NODE ({field})");
            assert!(e.to_string().contains(&want), "{e}");
            // A native pod may have them, but no sysctl that would reach
            // the node through them.
            assert!(validate(&c).is_ok());
            assert!(uses_host(&c, kind));
            let mut c = c;
            let key = if kind == "ipc" {
                "kernel.shmmax"
            } else {
                "net.ipv4.ip_forward"
            };
            if let Some(l) = c.linux.as_mut() {
                l.sysctls.insert(key.into(), "1".into());
            }
            match kind {
                "pid" => assert!(native_sysctls(&c).is_ok()),
                _ => {
                    let e = native_sysctls(&c).unwrap_err().to_string();
                    assert!(e.contains(key) && e.contains(field), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_privileged_pod_is_refused_naming_the_field() {
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "a".into(),
                namespace: "b".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        assert!(no_privileged(&c).is_ok());
        c.linux = Some(moat_proto::cri::LinuxPodSandboxConfig {
            security_context: Some(moat_proto::cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = no_privileged(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("config.linux.security_context.privileged: ") && e.contains("runc"),
            "{e}"
        );
        assert!(validate(&c).is_ok(), "a native pod may be privileged");
    }

    #[test]
    fn hostname_defaults_to_the_pod_name_as_kubelet_cuts_it() {
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("{}-{}", "a".repeat(62), "b".repeat(40)),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        // 63 characters end in '-': trimmed, as kubelet does.
        assert_eq!(pod_hostname(&c).unwrap(), "a".repeat(62));
        assert!(checked(&c).is_ok());
        c.hostname = "web-0".into();
        assert_eq!(pod_hostname(&c).unwrap(), "web-0");
        c.hostname = "x".repeat(65);
        assert!(checked(&c)
            .unwrap_err()
            .to_string()
            .contains("config.hostname"));
        c.hostname = "bad_name".into();
        assert!(checked(&c).unwrap_err().to_string().contains("RFC 1123"));
    }

    #[test]
    fn run_as_group_alone_is_refused() {
        use moat_proto::cri::{Int64Value, LinuxPodSandboxConfig, LinuxSandboxSecurityContext};
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "p".into(),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    run_as_group: Some(Int64Value { value: 5 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(checked(&c)
            .unwrap_err()
            .to_string()
            .contains("run_as_group"));
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(Int64Value { value: 5 });
        }
        if let Some(l) = c.linux.as_mut() {
            l.sysctls.insert("kernel.pid_max".into(), "1000".into());
        }
        assert!(checked(&c)
            .unwrap_err()
            .to_string()
            .contains("kernel.pid_max"));
        if let Some(l) = c.linux.as_mut() {
            l.sysctls.clear();
            l.sysctls
                .insert("kernel.shm_rmid_forced".into(), "1".into());
        }
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(Int64Value { value: 5 });
        }
        assert!(checked(&c).is_ok());
    }
}
