//! The pod's volumes, shared live from the host: one virtio-fs device
//! (served on the host by the pod's virtiofsd), mounted once at boot at
//! [`moat_proto::VOLUMES_DIR`]; containers bind-mount their volumes from it.

use nix::mount::{mount, MsFlags};
use std::path::Path;

/// Mounts the virtio-fs device tagged `tag` at `dir` (created if missing).
/// Device nodes and set-id bits on the host's files mean nothing in the
/// guest: nodev, nosuid.
pub fn mount_shared(tag: &str, dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    mount(
        Some(tag),
        dir,
        Some("virtiofs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .with_context(|| format!("mounting virtio-fs {tag:?} at {}", dir.display()))
}
