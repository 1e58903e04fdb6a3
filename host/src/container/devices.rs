//! CRI `devices` of a container: what kubelet passes for a pod's raw block
//! volumes (`volumeDevices`), a host block device or file each. moatd
//! attaches each to a virtio-blk slot of its own (read-only unless the
//! permissions say `w`, which the VM then enforces) and the agent makes it
//! a device node at the container path. Other host devices (character
//! devices: GPUs, `/dev/fuse`, ...) have no meaning inside a VM and are
//! refused.

use super::ContainerError;
use moat_proto::cri::ContainerConfig;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// One block volume of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlockVolume {
    /// The host block device or file.
    pub host_path: PathBuf,
    /// Where the device node appears in the container.
    pub container_path: String,
    /// Attached read-only (no `w` in the permissions).
    pub read_only: bool,
}

/// The container's block volumes, each checked: an absolute container path
/// under `/dev/` used once, a host path that is a block device or a regular
/// file, permissions of `r`, `w` and `m` only.
pub(super) fn block_volumes(c: &ContainerConfig) -> Result<Vec<BlockVolume>, ContainerError> {
    let mut out: Vec<BlockVolume> = Vec::new();
    for (i, d) in c.devices.iter().enumerate() {
        let field = format!("config.devices[{i}]");
        let bad =
            |what: &str, msg: String| ContainerError::Invalid(format!("{field}.{what}: {msg}"));
        let target = Path::new(&d.container_path);
        if !target.starts_with("/dev/") || target.components().any(|c| c == Component::ParentDir) {
            return Err(bad(
                "container_path",
                format!(
                    "{:?} must be a path under /dev/ without '..'",
                    d.container_path
                ),
            ));
        }
        if out.iter().any(|v| v.container_path == d.container_path) {
            return Err(bad(
                "container_path",
                format!("{:?} is given twice", d.container_path),
            ));
        }
        if !d.permissions.chars().all(|p| matches!(p, 'r' | 'w' | 'm')) {
            return Err(bad(
                "permissions",
                format!("{:?} may hold only r, w and m", d.permissions),
            ));
        }
        let host = PathBuf::from(&d.host_path);
        let kind = std::fs::metadata(&host)
            .map_err(|e| bad("host_path", format!("{}: {e}", host.display())))?
            .file_type();
        if !(kind.is_block_device() || kind.is_file()) {
            return Err(bad(
                "host_path",
                format!(
                    "{} is not a block device or a file: only raw block volumes can be \
                     passed into a pod VM",
                    host.display()
                ),
            ));
        }
        out.push(BlockVolume {
            host_path: host,
            container_path: d.container_path.clone(),
            read_only: !d.permissions.is_empty() && !d.permissions.contains('w'),
        });
    }
    Ok(out)
}

/// A native pod's block volumes: device nodes the OCI runtime creates from
/// the host device's numbers, allowed in the device cgroup (without write
/// access when read-only), as runc-based runtimes pass `devices`.
pub(super) fn add_host_devices(
    spec: &mut oci_spec::runtime::Spec,
    volumes: &[BlockVolume],
) -> Result<(), ContainerError> {
    use std::os::unix::fs::MetadataExt;
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for v in volumes {
        let meta = std::fs::metadata(&v.host_path).map_err(|e| {
            ContainerError::Invalid(format!("config.devices: {}: {e}", v.host_path.display()))
        })?;
        if !meta.file_type().is_block_device() {
            return Err(ContainerError::Invalid(format!(
                "config.devices: {} is not a block device: a native pod's devices are the \
                 host's device nodes",
                v.host_path.display()
            )));
        }
        let (major, minor) = (
            i64::from(nix::sys::stat::major(meta.rdev()) as u32),
            i64::from(nix::sys::stat::minor(meta.rdev()) as u32),
        );
        let access = if v.read_only { "rm" } else { "rwm" };
        let node: oci_spec::runtime::LinuxDevice = serde_json::from_value(serde_json::json!({
            "path": v.container_path, "type": "b", "major": major, "minor": minor,
            "fileMode": 0o660, "uid": 0, "gid": 0
        }))
        .map_err(ContainerError::caused("a device entry"))?;
        let rule: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_value(serde_json::json!({
                "allow": true, "type": "b", "major": major, "minor": minor, "access": access
            }))
            .map_err(ContainerError::caused("a device rule"))?;
        nodes.push(node);
        rules.push(rule);
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut all = linux.devices().clone().unwrap_or_default();
    all.extend(nodes);
    linux.set_devices(Some(all));
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut allowed = res.devices().clone().unwrap_or_default();
    allowed.extend(rules);
    res.set_devices(Some(allowed));
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::Device;

    fn device(host: &str, container: &str, perms: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: perms.into(),
        }
    }

    fn config(devices: Vec<Device>) -> ContainerConfig {
        ContainerConfig {
            devices,
            ..Default::default()
        }
    }

    #[test]
    fn files_and_block_devices_pass_and_the_rest_is_refused() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let disk = disk.path().to_str().unwrap().to_string();
        let v = block_volumes(&config(vec![
            device(&disk, "/dev/xvda", "rwm"),
            device(&disk, "/dev/xvdb", "r"),
        ]))
        .unwrap();
        assert!(!v[0].read_only);
        assert!(v[1].read_only);
        for (d, want) in [
            (device("/dev/null", "/dev/x", "rwm"), "host_path"),
            (device("/nonexistent", "/dev/x", "rwm"), "host_path"),
            (device(&disk, "/data/x", "rwm"), "container_path"),
            (device(&disk, "/dev/../etc/x", "rwm"), "container_path"),
            (device(&disk, "/dev/x", "rwx"), "permissions"),
        ] {
            let e = block_volumes(&config(vec![d])).unwrap_err().to_string();
            assert!(e.contains(&format!("config.devices[0].{want}")), "{e}");
        }
        let twice = config(vec![
            device(&disk, "/dev/x", "r"),
            device(&disk, "/dev/x", "r"),
        ]);
        let e = block_volumes(&twice).unwrap_err().to_string();
        assert!(e.contains("config.devices[1].container_path"), "{e}");
    }
}
