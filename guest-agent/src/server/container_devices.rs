//! The block devices a container is given (CRI `devices`: raw block
//! volumes, attached by the host to virtio-blk slots): each is found in the
//! guest and added to the container's spec as a device node at the path the
//! host asked for. A read-only volume is refused twice: the VMM fails its
//! writes, and the guest kernel is told the disk is read-only (BLKROSET; a
//! hot-plugged slot's read-only feature bit is read only at probe), so a
//! write fails at once with EPERM.

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
        set_read_only(&path, d.read_only)
            .map_err(|e| Status::internal(format!("{}: BLKROSET: {e}", path.display())))?;
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

/// BLKROSET (`_IO(0x12, 93)`): sets or clears the kernel's read-only flag of
/// a whole disk.
const BLKROSET: libc::c_ulong = 0x125d;

/// Marks the disk at `path` read-only or writable. A slot is reused by later
/// containers, so writable is set as well as read-only.
fn set_read_only(path: &std::path::Path, read_only: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let disk = std::fs::File::open(path)?;
    let flag: libc::c_int = read_only.into();
    // SAFETY: BLKROSET reads one int through the pointer, which outlives
    // the call; the fd is open.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKROSET, &flag) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
