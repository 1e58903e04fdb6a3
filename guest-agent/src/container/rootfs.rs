//! The container's filesystem view, built inside its new mount namespace:
//! spec mounts, device nodes, pivot_root, masked and read-only paths.

use super::spec::{ContainerPlan, DevicePlan, MountPlan};
use crate::paths::secure_join;
use anyhow::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::path::{Path, PathBuf};

const NONE: Option<&str> = None;

/// Devices every container gets (OCI "default devices").
fn default_devices() -> Vec<DevicePlan> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| DevicePlan {
        path: p.into(),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Builds the container's root and switches to it. Runs in the init stage
/// after the mount namespace was created.
pub fn setup(plan: &ContainerPlan) -> anyhow::Result<()> {
    let root = &plan.rootfs;
    // Nothing done here may propagate back to the agent's namespace.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .context("making / private")?;
    mount(
        Some(root),
        root,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .with_context(|| format!("bind-mounting {} onto itself", root.display()))?;
    for (i, m) in plan.mounts.iter().enumerate() {
        mount_one(root, m).with_context(|| format!("mounts[{i}] ({})", m.destination.display()))?;
    }
    for d in default_devices().iter().chain(plan.devices.iter()) {
        make_device(root, d).with_context(|| format!("device {}", d.path.display()))?;
    }
    dev_symlinks(root);
    pivot(root)?;
    for p in &plan.masked_paths {
        mask(p).with_context(|| format!("masking {}", p.display()))?;
    }
    for p in &plan.readonly_paths {
        make_readonly(p).with_context(|| format!("read-only {}", p.display()))?;
    }
    if plan.readonly_root {
        mount(
            NONE,
            "/",
            NONE,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            NONE,
        )
        .context("remounting / read-only")?;
    }
    let private = (MsFlags::MS_REC | MsFlags::MS_PRIVATE).bits();
    if plan.root_propagation != private {
        mount(
            NONE,
            "/",
            NONE,
            MsFlags::from_bits_truncate(plan.root_propagation),
            NONE,
        )
        .context("setting rootfsPropagation")?;
    }
    Ok(())
}

fn mount_one(root: &Path, m: &MountPlan) -> anyhow::Result<()> {
    let dest = secure_join(root, &m.destination)?;
    let flags = MsFlags::from_bits_truncate(m.flags);
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    if m.is_bind() {
        let src = m
            .source
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("bind mount without source"))?;
        let meta = std::fs::metadata(src).with_context(|| format!("source {}", src.display()))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::symlink_metadata(&dest).is_err() {
                std::fs::File::create(&dest)?;
            }
        }
        mount(
            Some(src.as_path()),
            &dest,
            NONE,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            NONE,
        )
        .with_context(|| format!("bind {} on {}", src.display(), dest.display()))?;
        let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            mount(
                NONE,
                &dest,
                NONE,
                extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                NONE,
            )
            .context("remounting bind with its options")?;
        }
    } else {
        std::fs::create_dir_all(&dest)?;
        let fstype = m.fstype.as_deref().unwrap_or("none");
        let source: PathBuf = m.source.clone().unwrap_or_else(|| fstype.into());
        mount(Some(source.as_path()), &dest, Some(fstype), flags, data)
            .with_context(|| format!("mounting {fstype} on {}", dest.display()))?;
    }
    if m.propagation != 0 {
        mount(
            NONE,
            &dest,
            NONE,
            MsFlags::from_bits_truncate(m.propagation),
            NONE,
        )
        .context("setting propagation")?;
    }
    Ok(())
}

fn make_device(root: &Path, d: &DevicePlan) -> anyhow::Result<()> {
    let path = secure_join(root, &d.path)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    mknod(
        &path,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    )?;
    // mknod applies the umask; set the exact mode.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &path,
        Mode::from_bits_truncate(d.mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    nix::unistd::chown(
        &path,
        Some(nix::unistd::Uid::from_raw(d.uid)),
        Some(nix::unistd::Gid::from_raw(d.gid)),
    )?;
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx (best effort).
fn dev_symlinks(root: &Path) {
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        let p = root.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            let _ = std::os::unix::fs::symlink(target, &p);
        }
    }
}

/// pivot_root into `root` and detach the old root. When the current root
/// cannot be pivoted (the initramfs `rootfs` of the guest), falls back to
/// moving the new root over `/` and chroot, as runc does on ramdisks.
fn pivot(root: &Path) -> anyhow::Result<()> {
    nix::unistd::chdir(root).context("chdir to rootfs")?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
        }
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE)
                .context("moving the rootfs over / (pivot_root refused)")?;
            nix::unistd::chroot(".").context("chroot")?;
        }
        Err(e) => return Err(e).context("pivot_root"),
    }
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

fn mask(p: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => Ok(mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            NONE,
        )?),
        Ok(_) => Ok(mount(Some("/dev/null"), p, NONE, MsFlags::MS_BIND, NONE)?),
    }
}

fn make_readonly(p: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(Some(p), p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(p) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if f.contains(fs) {
                flags |= ms;
            }
        }
    }
    mount(NONE, p, NONE, flags, NONE)?;
    Ok(())
}
