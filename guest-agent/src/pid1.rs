//! PID 1 duties: the guest's base mounts and reaping orphaned processes.

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use std::path::Path;

struct BaseMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// The filesystems every guest has, in mount order.
fn base_mounts() -> [BaseMount; 8] {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        BaseMount {
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        BaseMount {
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        BaseMount {
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        BaseMount {
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620"),
        },
        BaseMount {
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        BaseMount {
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        BaseMount {
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        BaseMount {
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid_nodev_noexec,
            data: None,
        },
    ]
}

/// Moves PID 1 off the initramfs onto a fresh tmpfs root (what
/// `switch_root` does, without a second binary). The initramfs is the
/// kernel's rootfs, which can never be unmounted, so pivot_root(2) refuses to
/// leave it; from a tmpfs root, every container's mount namespace can
/// pivot_root into its image instead of falling back to MS_MOVE + chroot,
/// which a container holding CAP_SYS_CHROOT could climb out of.
pub fn leave_initramfs() -> anyhow::Result<()> {
    const NEW_ROOT: &str = "/newroot";
    nix::unistd::mkdir(NEW_ROOT, Mode::from_bits_truncate(0o755)).context("creating /newroot")?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .context("mounting the tmpfs root")?;
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "mnt"] {
        nix::unistd::mkdir(
            &Path::new(NEW_ROOT).join(d),
            Mode::from_bits_truncate(0o755),
        )
        .with_context(|| format!("creating /{d} in the new root"))?;
    }
    nix::unistd::chdir(NEW_ROOT).context("entering the new root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root over /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

/// Mounts /proc, /sys, /dev (+pts, shm), /run, /tmp and cgroup2.
pub fn mount_base_filesystems() -> anyhow::Result<()> {
    for m in base_mounts() {
        let target = Path::new(m.target);
        if !target.exists() {
            nix::unistd::mkdir(target, Mode::from_bits_truncate(0o755))
                .with_context(|| format!("creating {}", m.target))?;
        }
        mount(Some(m.fstype), target, Some(m.fstype), m.flags, m.data)
            .with_context(|| format!("mounting {} on {}", m.fstype, m.target))?;
    }
    Ok(())
}

/// Enables every available controller for the guest's child cgroups.
pub fn enable_cgroup_controllers() {
    match crate::cgroups::enable_all_controllers(std::path::Path::new(crate::cgroups::CGROUP_ROOT))
    {
        Ok(c) => tracing::debug!(controllers = ?c, "cgroup controllers enabled"),
        Err(e) => tracing::warn!("cgroup controllers: {e}"),
    }
}
