//! A container's root filesystem in the agent's namespace: the image block
//! device mounted read-only, a tmpfs for the writable layer, and overlayfs
//! joining them at `<container dir>/rootfs`.

use crate::devices::{self, DeviceId};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a container's rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A block device with an image filesystem.
    Device(DeviceId),
    /// An existing directory used as the lower layer.
    Directory(PathBuf),
    /// An image file, mounted through a read-only loop device (an agent on
    /// the host, serving a native pod).
    ImageFile(PathBuf),
}

/// Mounts made for one container, unmounted in reverse order.
#[derive(Debug, Default)]
pub struct RootfsMounts {
    /// The overlay mount point: the container's root.
    pub rootfs: PathBuf,
    mounts: Vec<PathBuf>,
}

/// Errors preparing a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The device did not appear in time.
    #[error("rootfs: device {0:?} did not appear within {1:?}")]
    DeviceMissing(DeviceId, Duration),
    /// The directory given as rootfs does not exist.
    #[error("rootfs.directory: {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A mount failed.
    #[error("rootfs: {0}")]
    Mount(String),
}

const NONE: Option<&str> = None;

/// Mounts the rootfs for a container under `dir`.
pub async fn prepare(
    dir: &Path,
    source: &Source,
    fstype: &str,
    timeout: Duration,
    scratch_size: u64,
) -> Result<RootfsMounts, StorageError> {
    let mut m = RootfsMounts {
        rootfs: dir.join("rootfs"),
        mounts: Vec::new(),
    };
    let result = prepare_into(&mut m, dir, source, fstype, timeout, scratch_size).await;
    if let Err(e) = result {
        teardown(&m);
        return Err(e);
    }
    Ok(m)
}

async fn prepare_into(
    m: &mut RootfsMounts,
    dir: &Path,
    source: &Source,
    fstype: &str,
    timeout: Duration,
    scratch_size: u64,
) -> Result<(), StorageError> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| StorageError::Mount(format!("mkdir {}: {e}", p.display())))
    };
    let lower = match source {
        Source::Directory(d) => {
            if !d.is_dir() {
                return Err(StorageError::NotADirectory(d.clone()));
            }
            d.clone()
        }
        Source::Device(id) => {
            let dev = devices::wait_for(id, timeout)
                .await
                .ok_or_else(|| StorageError::DeviceMissing(id.clone(), timeout))?;
            mount_image(m, dir, &dev, fstype)?
        }
        Source::ImageFile(file) => {
            // Bound while mounted: the device clears itself at the unmount.
            let l = crate::loop_device::attach_read_only(file).map_err(|e| {
                StorageError::Mount(format!("loop device for {}: {e}", file.display()))
            })?;
            mount_image(m, dir, &l.path, fstype)?
        }
    };
    let scratch = dir.join("scratch");
    mkdir(&scratch)?;
    let data = if scratch_size > 0 {
        format!("mode=0755,size={scratch_size}")
    } else {
        "mode=0755".to_string()
    };
    mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| StorageError::Mount(format!("tmpfs on {}: {e}", scratch.display())))?;
    m.mounts.push(scratch.clone());
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    mkdir(&upper)?;
    mkdir(&work)?;
    mkdir(&m.rootfs)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &m.rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| StorageError::Mount(format!("overlay on {}: {e}", m.rootfs.display())))?;
    m.mounts.push(m.rootfs.clone());
    Ok(())
}

/// Mounts the image on block device `dev` read-only at `<dir>/image`.
fn mount_image(
    m: &mut RootfsMounts,
    dir: &Path,
    dev: &Path,
    fstype: &str,
) -> Result<PathBuf, StorageError> {
    let image = dir.join("image");
    std::fs::create_dir_all(&image)
        .map_err(|e| StorageError::Mount(format!("mkdir {}: {e}", image.display())))?;
    let types: Vec<&str> = if fstype.is_empty() {
        vec!["erofs", "ext4"]
    } else {
        vec![fstype]
    };
    let mut last = String::new();
    for t in types {
        match mount(
            Some(dev),
            &image,
            Some(t),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            NONE,
        ) {
            Ok(()) => {
                tracing::info!(device = %dev.display(), fstype = t, "image mounted");
                m.mounts.push(image.clone());
                return Ok(image);
            }
            Err(e) => last = format!("mount {} as {t}: {e}", dev.display()),
        }
    }
    Err(StorageError::Mount(last))
}

/// Unmounts everything [`prepare`] mounted (lazily, so busy mounts go once
/// their last user does).
pub fn teardown(m: &RootfsMounts) {
    for p in m.mounts.iter().rev() {
        if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", p.display());
        }
    }
}
