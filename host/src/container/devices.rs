//! CRI `devices` of a container. In a pod VM they are what kubelet passes
//! for a pod's raw block volumes (`volumeDevices`), a host block device or
//! file each: moatd attaches each to a virtio-blk slot of its own
//! (read-only unless the permissions say `w`, which the VM then enforces)
//! and the agent makes it a device node at the container path; character
//! devices (GPUs, `/dev/fuse`, ...) have no meaning inside a VM and are
//! refused. A native pod gets the host's device nodes themselves, block or
//! character, as runc-based runtimes pass them.

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

/// Checks what every `devices` entry must satisfy whatever the handler: an
/// absolute container path under `/dev/` without `..`, used once, and
/// permissions of `r`, `w` and `m` only. Returns the entry's field name for
/// errors.
fn check_entry(
    c: &ContainerConfig,
    i: usize,
) -> Result<(String, &moat_proto::cri::Device), ContainerError> {
    let d = &c.devices[i];
    let field = format!("config.devices[{i}]");
    let bad = |what: &str, msg: String| ContainerError::Invalid(format!("{field}.{what}: {msg}"));
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
    if c.devices[..i]
        .iter()
        .any(|o| o.container_path == d.container_path)
    {
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
    Ok((field, d))
}

/// The container's block volumes for a pod VM, each checked: a host path
/// that is a block device or a regular file.
pub(super) fn block_volumes(c: &ContainerConfig) -> Result<Vec<BlockVolume>, ContainerError> {
    let mut out = Vec::new();
    for i in 0..c.devices.len() {
        let (field, d) = check_entry(c, i)?;
        let host = PathBuf::from(&d.host_path);
        let kind = std::fs::metadata(&host)
            .map_err(|e| {
                ContainerError::Invalid(format!("{field}.host_path: {}: {e}", host.display()))
            })?
            .file_type();
        if !(kind.is_block_device() || kind.is_file()) {
            return Err(ContainerError::Invalid(format!(
                "{field}.host_path: {} is not a block device or a file: only raw block \
                 volumes can be passed into a pod VM (a character device needs a native pod)",
                host.display()
            )));
        }
        out.push(BlockVolume {
            host_path: host,
            container_path: d.container_path.clone(),
            read_only: !d.permissions.is_empty() && !d.permissions.contains('w'),
        });
    }
    Ok(out)
}

/// One host device node given to a native pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostDevice {
    /// Where the node appears in the container.
    pub container_path: String,
    /// `b` or `c`.
    pub kind: char,
    /// The device's numbers, from the host node.
    pub major: u32,
    /// See `major`.
    pub minor: u32,
    /// The host node's mode bits, owner and group, which the container's
    /// node copies.
    pub mode: u32,
    /// See `mode`.
    pub uid: u32,
    /// See `mode`.
    pub gid: u32,
    /// The device-cgroup access (`r`, `w`, `m`): the entry's permissions,
    /// `rwm` when empty.
    pub access: String,
}

/// Most device nodes taken from one directory entry (containerd walks a
/// directory such as `/dev/dri` the same way).
const MAX_DEVICES_PER_DIR: usize = 1024;

/// A native pod's `devices`, as runc-based runtimes take them: each host
/// path is a block or character device node, or a directory whose device
/// nodes (walked recursively, symlinks not followed) appear under the
/// container path with the same relative names.
pub(super) fn host_devices(c: &ContainerConfig) -> Result<Vec<HostDevice>, ContainerError> {
    let mut out: Vec<HostDevice> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..c.devices.len() {
        let (field, d) = check_entry(c, i)?;
        let before = out.len();
        let access = match d.permissions.as_str() {
            "" => "rwm".to_string(),
            p => p.to_string(),
        };
        let host = Path::new(&d.host_path);
        let bad = |msg: String| ContainerError::Invalid(format!("{field}.host_path: {msg}"));
        let meta = std::fs::metadata(host).map_err(|e| bad(format!("{}: {e}", host.display())))?;
        if meta.is_dir() {
            walk_devices(host, Path::new(&d.container_path), &access, &mut out)
                .map_err(|e| bad(format!("{}: {e}", host.display())))?;
            if out.len() - before > MAX_DEVICES_PER_DIR {
                return Err(bad(format!(
                    "{} holds more than {MAX_DEVICES_PER_DIR} device nodes",
                    host.display()
                )));
            }
        } else {
            let node =
                device_node(&meta, Path::new(&d.container_path), &access).ok_or_else(|| {
                    bad(format!(
                        "{} is not a device node or a directory of them",
                        host.display()
                    ))
                })?;
            out.push(node);
        }
        // A directory's nodes may land on another entry's path.
        for node in &out[before..] {
            if !seen.insert(node.container_path.clone()) {
                return Err(bad(format!(
                    "{:?} would be made twice",
                    node.container_path
                )));
            }
        }
    }
    Ok(out)
}

/// The device node `meta` describes, to appear at `at` with `access`;
/// `None` when it is not a block or character device.
fn device_node(meta: &std::fs::Metadata, at: &Path, access: &str) -> Option<HostDevice> {
    use std::os::unix::fs::MetadataExt;
    let kind = match meta.file_type() {
        t if t.is_block_device() => 'b',
        t if t.is_char_device() => 'c',
        _ => return None,
    };
    let rdev = meta.rdev();
    Some(HostDevice {
        container_path: at.display().to_string(),
        kind,
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        access: access.to_string(),
    })
}

/// Appends the device nodes under `dir`, named under `at`, stopping once
/// more than [`MAX_DEVICES_PER_DIR`] are found.
fn walk_devices(
    dir: &Path,
    at: &Path,
    access: &str,
    out: &mut Vec<HostDevice>,
) -> std::io::Result<()> {
    let start = out.len();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        let name = at.join(entry.file_name());
        if meta.is_dir() {
            walk_devices(&entry.path(), &name, access, out)?;
        } else if let Some(node) = device_node(&meta, &name, access) {
            out.push(node);
        }
        if out.len() - start > MAX_DEVICES_PER_DIR {
            break;
        }
    }
    Ok(())
}

/// Adds a native pod's devices to its spec: device nodes the OCI runtime
/// creates, each allowed in the device cgroup with its access.
pub(super) fn add_host_devices(
    spec: &mut oci_spec::runtime::Spec,
    devices: &[HostDevice],
) -> Result<(), ContainerError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in devices {
        let kind = d.kind.to_string();
        let node: oci_spec::runtime::LinuxDevice = serde_json::from_value(serde_json::json!({
            "path": d.container_path, "type": kind, "major": d.major, "minor": d.minor,
            "fileMode": d.mode, "uid": d.uid, "gid": d.gid
        }))
        .map_err(ContainerError::caused("a device entry"))?;
        let rule: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_value(serde_json::json!({
                "allow": true, "type": kind, "major": d.major, "minor": d.minor,
                "access": d.access
            }))
            .map_err(ContainerError::caused("a device rule"))?;
        nodes.push(node);
        rules.push(rule);
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
        let twice = config(vec![
            device("/dev/null", "/dev/x", "r"),
            device("/dev/zero", "/dev/x", "r"),
        ]);
        let e = host_devices(&twice).unwrap_err().to_string();
        assert!(e.contains("config.devices[1].container_path"), "{e}");
    }

    #[test]
    fn native_pods_get_device_nodes_and_directories_of_them() {
        let d = host_devices(&config(vec![
            device("/dev/null", "/dev/moat-null", "rw"),
            device("/dev/zero", "/dev/z", ""),
        ]))
        .unwrap();
        assert_eq!(d[0].container_path, "/dev/moat-null");
        assert_eq!((d[0].kind, d[0].major, d[0].minor), ('c', 1, 3));
        assert_eq!(d[0].access, "rw");
        assert_eq!(d[1].access, "rwm");
        let mut spec = oci_spec::runtime::Spec::default();
        add_host_devices(&mut spec, &d).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["linux"]["devices"][0]["type"], "c");
        assert_eq!(json["linux"]["devices"][0]["path"], "/dev/moat-null");
        let rules = json["linux"]["resources"]["devices"].as_array().unwrap();
        assert!(rules
            .iter()
            .any(|r| r["allow"] == true && r["minor"] == 5 && r["access"] == "rwm"));
        // A directory with one device node and a symlink, which is skipped.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let none = host_devices(&config(vec![device(
            dir.path().to_str().unwrap(),
            "/dev/dir",
            "r",
        )]))
        .unwrap();
        assert!(none.is_empty(), "{none:?}");
        let file = dir.path().join("file");
        let e = host_devices(&config(vec![device(file.to_str().unwrap(), "/dev/f", "r")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.devices[0].host_path"), "{e}");
    }
}
