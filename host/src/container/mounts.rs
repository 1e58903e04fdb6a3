//! CRI mounts of host paths. A native pod's container binds the host path
//! itself ([`host_binds`]). A pod VM's container gets it live over
//! virtio-fs ([`share_live`]): the host path is bind-mounted into the pod's
//! volume share, which the pod's virtiofsd serves to the guest (see
//! [`crate::vm::volumes`]), and the container binds it from there. Writes
//! in the guest are the host's, and changes on the host reach the guest.
//! The binds of one container are its own; two containers mounting the
//! same host path (an emptyDir) both see the host directory.

use super::spec::SharedMount;
use crate::container::ContainerError;
use moat_proto::cri::Mount;
use std::path::{Component, Path};

fn invalid(i: usize, field: &str, why: impl std::fmt::Display) -> ContainerError {
    ContainerError::Invalid(format!("config.mounts[{i}].{field}: {why}"))
}

/// Checks a CRI mount's paths: both absolute, the host path without `.`
/// or `..` parts; image volumes are refused.
fn check(i: usize, m: &Mount) -> Result<(), ContainerError> {
    if !m.container_path.starts_with('/') {
        return Err(invalid(
            i,
            "container_path",
            format!("{:?} is not absolute", m.container_path),
        ));
    }
    if m.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
        return Err(invalid(i, "image", "image volumes are not supported"));
    }
    let plain = Path::new(&m.host_path)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !m.host_path.starts_with('/') || !plain {
        return Err(invalid(
            i,
            "host_path",
            format!(
                "{:?} is not an absolute path without `.` or `..` parts",
                m.host_path
            ),
        ));
    }
    Ok(())
}

/// Mount `i`'s host path, checked, and created as a directory when it is
/// missing, as runc-based runtimes do.
fn host_path(i: usize, m: &Mount) -> Result<&Path, ContainerError> {
    check(i, m)?;
    let host = Path::new(&m.host_path);
    if !host.exists() {
        std::fs::create_dir_all(host)
            .map_err(|e| invalid(i, "host_path", format!("creating it: {e}")))?;
    }
    Ok(host)
}

/// A native pod's mounts: the host paths themselves, bind-mounted live
/// with the propagation each asks for.
pub fn host_binds(mounts: &[Mount]) -> Result<Vec<SharedMount>, ContainerError> {
    use moat_proto::cri::MountPropagation;
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let host = host_path(i, m)?;
        let (shared, slave) = mount_propagation(host);
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => "rprivate",
            // As containerd: the host side must propagate, or the mode
            // would silently do nothing.
            Ok(MountPropagation::PropagationHostToContainer) if shared || slave => "rslave",
            Ok(MountPropagation::PropagationBidirectional) if shared => "rshared",
            Ok(MountPropagation::PropagationHostToContainer) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!(
                    "HOST_TO_CONTAINER needs {} on a shared or slave mount; it is on a private one",
                    m.host_path
                ),
                ))
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!(
                        "BIDIRECTIONAL needs {} on a shared mount; it is on a {} one",
                        m.host_path,
                        if slave { "slave" } else { "private" }
                    ),
                ))
            }
            Err(_) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!("unknown mode {}", m.propagation),
                ))
            }
        };
        out.push(SharedMount {
            container_path: m.container_path.clone(),
            guest_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation,
        });
    }
    Ok(out)
}

/// The binds [`share_live`] made for one container: undone when dropped
/// unless [`LiveBinds::keep`] was called (a create that fails after them
/// leaves nothing).
pub struct LiveBinds<'a> {
    paths: &'a crate::vm::VmPaths,
    id: String,
    keep: bool,
}

impl LiveBinds<'_> {
    /// The container was created: its binds stay until it is removed.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for LiveBinds<'_> {
    fn drop(&mut self) {
        if !self.keep {
            crate::vm::volumes::unbind_container(self.paths, &self.id);
        }
    }
}

/// A pod VM's mounts: each host path bind-mounted into the pod's volume
/// share (served live to the guest by its virtiofsd) as a volume of
/// container `id`'s own, read-only when the mount says so. A missing host
/// path is created as a directory, as containerd does. Propagation:
/// PRIVATE as asked; HOST_TO_CONTAINER where the host path is on a shared
/// or slave mount (what is mounted under it later reaches the guest through
/// the daemon); BIDIRECTIONAL is refused, as a mount made in the guest
/// cannot reach the host.
pub fn share_live<'a>(
    paths: &'a crate::vm::VmPaths,
    id: &str,
    mounts: &[Mount],
) -> Result<(Vec<SharedMount>, LiveBinds<'a>), ContainerError> {
    use moat_proto::cri::MountPropagation;
    let binds = LiveBinds {
        paths,
        id: id.to_string(),
        keep: false,
    };
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let host = host_path(i, m)?;
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => "rprivate",
            Ok(MountPropagation::PropagationHostToContainer) => {
                let (shared, slave) = mount_propagation(host);
                if !(shared || slave) {
                    return Err(invalid(
                        i,
                        "propagation",
                        format!(
                            "HOST_TO_CONTAINER needs {} on a shared or slave mount; it is on a private one",
                            m.host_path
                        ),
                    ));
                }
                "rslave"
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                return Err(invalid(
                    i,
                    "propagation",
                    "BIDIRECTIONAL: a mount made inside a pod VM cannot reach the host; \
                     run the pod natively (a RuntimeClass of the oci kind) for that",
                ))
            }
            Err(_) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!("unknown mode {}", m.propagation),
                ))
            }
        };
        let name = crate::vm::volumes::volume_name(id, i);
        let guest_path = crate::vm::volumes::bind(paths, &name, host, m.readonly)
            .map_err(|e| invalid(i, "host_path", format!("{e:#}")))?;
        out.push(SharedMount {
            container_path: m.container_path.clone(),
            guest_path,
            readonly: m.readonly,
            propagation,
        });
    }
    Ok((out, binds))
}

/// Whether the mount holding `path` is shared and whether it is a slave,
/// from this process's mountinfo (`shared:N`, `master:N`).
fn mount_propagation(path: &Path) -> (bool, bool) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, bool, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = point.replace("\\040", " ");
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let (mut shared, mut slave) = (false, false);
        for f in optional {
            shared |= f.starts_with("shared:");
            slave |= f.starts_with("master:");
        }
        // The last of equally deep mounts is the one on top.
        if best.is_none_or(|(len, _, _)| point.len() >= len) {
            best = Some((point.len(), shared, slave));
        }
    }
    best.map_or((false, false), |(_, s, m)| (s, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::MountPropagation;

    fn mount(host: &str, propagation: MountPropagation) -> Mount {
        Mount {
            container_path: "/data".into(),
            host_path: host.into(),
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_vm_refuses_bidirectional_and_bad_paths_before_binding() {
        let t = tempfile::tempdir().unwrap();
        let paths = crate::vm::VmPaths {
            dir: t.path().join("vm"),
        };
        let host = t.path().display().to_string();
        let bidi = mount(&host, MountPropagation::PropagationBidirectional);
        let e = share_live(&paths, "c", &[bidi]).err().unwrap().to_string();
        assert!(
            e.contains("config.mounts[0].propagation: BIDIRECTIONAL"),
            "{e}"
        );
        let dotdot = mount("/tmp/../etc", MountPropagation::PropagationPrivate);
        let e = share_live(&paths, "c", &[dotdot])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("config.mounts[0].host_path"), "{e}");
        // Nothing was bound.
        assert!(!paths.volumes().exists());
    }
}
