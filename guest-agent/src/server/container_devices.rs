//! The block devices a container is given (CRI `devices`: raw block
//! volumes, attached by the host to virtio-blk slots): each is found in the
//! guest and added to the container's spec as a device node at the path the
//! host asked for. Read-only is the VM's to enforce (the host attaches such
//! a device read-only).

use super::container::device_source;
use super::validate::invalid;
use crate::storage::Source;
use moat_proto::agent::ContainerDevice;
use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType, Spec};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Status;

/// Most devices one container may be given.
const MAX_DEVICES: usize = 16;

/// Waits (up to `timeout` each) for `devices` and adds each to `spec`'s
/// `linux.devices`.
pub(super) async fn add(
    spec: &mut Spec,
    devices: &[ContainerDevice],
    timeout: Duration,
) -> Result<(), Status> {
    if devices.len() > MAX_DEVICES {
        return Err(invalid(format!("devices: at most {MAX_DEVICES}")));
    }
    let mut nodes = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let target = PathBuf::from(&d.container_path);
        if !target.starts_with("/dev/")
            || target
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(invalid(format!(
                "{field}.container_path: must be a path under /dev/ without '..'"
            )));
        }
        let block = d
            .device
            .as_ref()
            .ok_or_else(|| invalid(format!("{field}.device: is required")))?;
        let Source::Device(id) = device_source(&format!("{field}.device"), block)? else {
            return Err(invalid(format!("{field}.device: must be a block device")));
        };
        let path = crate::devices::wait_for(&id, timeout)
            .await
            .ok_or_else(|| Status::not_found(format!("{field}.device: {id:?} did not appear")))?;
        let meta = std::fs::metadata(&path)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        if !meta.file_type().is_block_device() {
            return Err(Status::internal(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        let node = LinuxDeviceBuilder::default()
            .path(target)
            .typ(LinuxDeviceType::B)
            .major(i64::from(libc::major(rdev)))
            .minor(i64::from(libc::minor(rdev)))
            .file_mode(0o660u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .map_err(|e| Status::internal(format!("{field}: {e}")))?;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut all = linux.devices().clone().unwrap_or_default();
    all.extend(nodes);
    linux.set_devices(Some(all));
    spec.set_linux(Some(linux));
    Ok(())
}
