//! The container's namespaces within the pod's guest.

use super::{bad, SpecError};
use crate::pod::record::GuestSandbox;
use moat_proto::cri::{LinuxContainerSecurityContext, NamespaceMode};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use std::path::PathBuf;

fn ns(typ: LinuxNamespaceType, path: Option<&String>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path.map(PathBuf::from));
    n
}

/// The namespaces: new mount and cgroup namespaces; PID, IPC and UTS joined
/// from the pod (or new, as the CRI namespace options say). The network
/// namespace is the one the agent runs in: the VM's (the whole VM is the
/// pod), or a native pod's. Only a `native` pod may have the node's
/// namespaces, by having none of that kind in the spec: its agent runs in
/// the node's (and, for a hostNetwork pod, which has no UTS namespace of
/// its own, in the node's UTS namespace too).
pub(super) fn namespaces(
    sc: Option<&LinuxContainerSecurityContext>,
    guest: &GuestSandbox,
    native: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let opts = sc.and_then(|s| s.namespace_options.clone());
    let pid_mode = opts.as_ref().map(|o| o.pid).unwrap_or(0);
    let ipc_mode = opts
        .as_ref()
        .map(|o| o.ipc)
        .unwrap_or(NamespaceMode::Pod as i32);
    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    let mode = |m: i32, kind: &str| -> Result<NamespaceMode, SpecError> {
        match NamespaceMode::try_from(m) {
            Ok(NamespaceMode::Target) => Err(bad(
                &format!("security_context.namespace_options.{kind}"),
                "TARGET namespaces are not supported",
            )),
            Ok(NamespaceMode::Node) if native => Ok(NamespaceMode::Node),
            Ok(NamespaceMode::Node) => Err(bad(
                &format!("security_context.namespace_options.{kind}"),
                "NODE: a container in a microVM pod cannot have the node's namespace \
                 (the VM's own is not the node's)",
            )),
            Ok(m) => Ok(m),
            Err(_) => Err(bad(
                &format!("security_context.namespace_options.{kind}"),
                format!("unknown mode {m}"),
            )),
        }
    };
    match mode(pid_mode, "pid")? {
        NamespaceMode::Node => {}
        NamespaceMode::Pod if guest.namespace_paths.contains_key("pid") => out.push(ns(
            LinuxNamespaceType::Pid,
            guest.namespace_paths.get("pid"),
        )),
        _ => out.push(ns(LinuxNamespaceType::Pid, None)),
    }
    match mode(ipc_mode, "ipc")? {
        NamespaceMode::Node => {}
        NamespaceMode::Pod if guest.namespace_paths.contains_key("ipc") => out.push(ns(
            LinuxNamespaceType::Ipc,
            guest.namespace_paths.get("ipc"),
        )),
        _ => out.push(ns(LinuxNamespaceType::Ipc, None)),
    }
    if !native || guest.namespace_paths.contains_key("uts") {
        out.push(ns(
            LinuxNamespaceType::Uts,
            guest.namespace_paths.get("uts"),
        ));
    }
    // Its own cgroup namespace: /sys/fs/cgroup shows the container's cgroup
    // as the root, as containerd does on cgroup v2.
    out.push(ns(LinuxNamespaceType::Cgroup, None));
    Ok(out)
}
