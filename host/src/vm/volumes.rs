//! A pod VM's volumes, shared live with the guest over virtio-fs.
//!
//! Each pod VM has a share: `volumes/` in its volume directory (beside its
//! VM directory, `<vm dir>.fs`, so that the VMM, whose root is its VM
//! directory, never sees the share, the daemon's socket or its log),
//! bind-mounted as a shared mount, served to the guest by the pod's own
//! virtiofsd (started before the VMM, in its own session so it outlives a
//! moatd restart, and ending when the VMM, its one client, goes). At
//! CreateContainer each CRI mount's host path is bind-mounted into the share
//! as `volumes/<container id>-<n>`; the bind propagates into the daemon's
//! mount namespace, and the guest sees it under
//! [`moat_proto::VOLUMES_DIR`], where the container's spec binds it from.
//!
//! The daemon sees nothing but the share: `--sandbox namespace` pivots its
//! root there, so a symlink or `..` in a volume resolves inside it; its
//! seccomp filter kills it on any other syscall; it has no CAP_MKNOD. The
//! share's root is read-only, every volume in it nodev and nosuid, and a
//! read-only volume read-only in the daemon's namespace too, where the guest
//! (root in its VM, so untrusted) reaches it. Writes reach the host file
//! as the guest makes them (no writeback cache in the guest), and a
//! container's fsync is the daemon's fsync. With `--cache auto` the guest
//! revalidates names and attributes after a second, so a configmap's
//! `..data` swap by kubelet shows within about a second.

use super::launch::{VmHandle, VmPaths};
use anyhow::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The virtio-fs tag of a pod's volumes.
pub const TAG: &str = "moat-volumes";
/// Longest wait for the daemon's socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Most files the daemon may hold open (each open file and each inode the
/// guest looks up holds one).
const DAEMON_MAX_FILES: u64 = 65536;

impl VmPaths {
    /// The pod's volume directory: the share and its daemon's files, beside
    /// the VM directory.
    pub fn fs_dir(&self) -> PathBuf {
        let mut name = self.dir.file_name().unwrap_or_default().to_os_string();
        name.push(".fs");
        self.dir.with_file_name(name)
    }
    /// The share the pod's virtiofsd serves: a read-only bind of
    /// [`VmPaths::volume_points`], with each volume bound under it.
    pub fn volumes(&self) -> PathBuf {
        self.fs_dir().join("volumes")
    }
    /// The directory under the share, where moatd makes the volumes' mount
    /// points (the share itself is read-only).
    pub fn volume_points(&self) -> PathBuf {
        self.fs_dir().join("volumes.d")
    }
    /// The virtiofsd's vhost-user socket.
    pub fn fs_socket(&self) -> PathBuf {
        self.fs_dir().join("fs.sock")
    }
    /// The virtiofsd's log.
    pub fn fs_log(&self) -> PathBuf {
        self.fs_dir().join("virtiofsd.log")
    }
}

/// Removes the pod's volume directory once nothing is mounted in it (its
/// daemon gone): every bind unmounted first. What stays mounted keeps the
/// directory, and is returned: deleting through a mount would delete the
/// user's data.
pub fn remove_share(paths: &VmPaths) -> Result<(), PathBuf> {
    let dir = paths.fs_dir();
    crate::pod::native::unmount_under(&dir);
    if let Some(p) = crate::pod::native::mounts_under(&dir).into_iter().next() {
        return Err(p);
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", dir.display());
        }
        _ => {}
    }
    Ok(())
}

/// Makes the share: [`VmPaths::volume_points`] bound onto
/// [`VmPaths::volumes`], read-only (the guest writes only inside the
/// volumes bound under it, each with its own flags, never names of its own
/// beside them), and made a shared mount of its own peer group, so binds
/// made under it later reach the daemon's namespace (which holds a slave
/// copy).
pub fn prepare(paths: &VmPaths) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let (dir, points) = (paths.volumes(), paths.volume_points());
    for d in [&dir, &points] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    if is_mount_point(&dir) {
        return Ok(());
    }
    let none: Option<&str> = None;
    mount(Some(&points), &dir, none, MsFlags::MS_BIND, none)
        .with_context(|| format!("bind-mounting {}", dir.display()))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(none, &dir, none, ro, none)
        .with_context(|| format!("making {} read-only", dir.display()))?;
    for flags in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
        mount(none, &dir, none, flags, none)
            .with_context(|| format!("setting the propagation of {}", dir.display()))?;
    }
    Ok(())
}

/// Whether `path` is itself a mount point (in this mount namespace).
fn is_mount_point(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.display().to_string().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == want))
}

/// Starts the pod's virtiofsd on the share and returns it with a stream
/// connected to its socket (the VMM's, handed over as an inherited fd).
/// With `cgroup_procs` (a cgroup's `cgroup.procs`, open for writing) the
/// daemon joins that cgroup before it execs.
pub fn spawn_daemon(
    binary: &Path,
    paths: &VmPaths,
    cgroup_procs: Option<&std::fs::File>,
) -> anyhow::Result<(VmHandle, tokio::process::Child, UnixStream)> {
    let socket = paths.fs_socket();
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::File::create(paths.fs_log()).context("creating virtiofsd.log")?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(paths.volumes())
        .args(["--sandbox", "namespace", "--seccomp", "kill"])
        .args(["--cache", "auto", "--announce-submounts"])
        .args(["--inode-file-handles=never", "--log-level", "warn"])
        // No device nodes made on the host for the guest (nodev on every
        // volume already keeps one from opening a host device).
        .arg("--modcaps=-mknod")
        .arg("--rlimit-nofile")
        .arg(max_files().to_string())
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let procs = cgroup_procs.map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: setsid and write are async-signal-safe, and `procs` stays
    // open in the parent until spawn returns; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(fd) = procs {
                // "0" is the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("virtiofsd exited at once"))?;
    let handle = VmHandle::live(pid).ok_or_else(|| anyhow::anyhow!("virtiofsd exited at once"))?;
    let deadline = std::time::Instant::now() + SOCKET_WAIT;
    let stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    anyhow::bail!(
                        "virtiofsd exited ({status}); its log:\n{}",
                        super::launch::tail(&paths.fs_log(), 5)
                    );
                }
                if std::time::Instant::now() > deadline {
                    handle.kill();
                    anyhow::bail!("virtiofsd's socket {}: {e}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    Ok((handle, child, stream))
}

/// The daemon's open-file limit: [`DAEMON_MAX_FILES`]; moatd's own hard
/// limit where that is lower and moatd lacks CAP_SYS_RESOURCE to raise it
/// (a containerised moatd may: the daemon would refuse to start).
fn max_files() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let can_raise = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    let hard = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(_, hard)| hard);
    if can_raise {
        DAEMON_MAX_FILES
    } else {
        DAEMON_MAX_FILES.min(hard)
    }
}

/// The live virtiofsd processes serving the share at `paths`: how a daemon
/// whose pid a crash kept out of the record is found.
pub fn running_daemons(paths: &VmPaths) -> Vec<VmHandle> {
    let socket = paths.fs_socket();
    let socket = socket.as_os_str().as_encoded_bytes();
    crate::procfs::pids()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--socket-path".as_slice() && w[1] == socket)
        })
        .filter_map(VmHandle::live)
        .collect()
}

/// The share's name for mount `index` of container `id`.
pub fn volume_name(id: &str, index: usize) -> String {
    format!("{id}-{index}")
}

/// Bind-mounts `host` (a directory or a file, with what is mounted under
/// it) into the share as `name`, read-only when asked; returns the path the
/// guest sees it at.
pub fn bind(paths: &VmPaths, name: &str, host: &Path, readonly: bool) -> anyhow::Result<String> {
    let point = paths.volume_points().join(name);
    let meta = std::fs::metadata(host).with_context(|| format!("{}", host.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(&point)
    } else {
        std::fs::File::create(&point).map(drop)
    }
    .with_context(|| format!("creating {}", point.display()))?;
    let target = paths.volumes().join(name);
    if let Err(e) = attach_bind(host, &target, readonly) {
        unbind(paths, name);
        return Err(e)
            .with_context(|| format!("bind-mounting {} into the pod's volumes", host.display()));
    }
    Ok(format!("{}/{name}", moat_proto::VOLUMES_DIR))
}

/// Attaches a recursive bind of `host` at `target` with its flags already
/// set: nodev and nosuid always (a device node the guest makes in a volume
/// must not open the host's device through the daemon), read-only, all the
/// way down, when asked. The mount is made whole before it is attached
/// (`open_tree`, `mount_setattr`, `move_mount`) because the daemon's
/// namespace receives a copy of it as attached: a remount afterwards, as
/// `mount -o remount,ro` does, would reach moatd's copy only and leave the
/// daemon's writable.
fn attach_bind(host: &Path, target: &Path, readonly: bool) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (host, target) = (cstr(host)?, cstr(target)?);
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd,
    // owned here.
    let tree =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, host.as_ptr(), flags) })?;
    // SAFETY: `tree` is a fresh fd nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr_set = libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID;
    if readonly {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the attr struct and the empty path outlive the call; its size
    // is passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Undoes [`bind`]; quiet where there is nothing to undo.
pub fn unbind(paths: &VmPaths, name: &str) {
    let _ = umount2(&paths.volumes().join(name), MntFlags::MNT_DETACH);
    let point = paths.volume_points().join(name);
    let _ = std::fs::remove_dir(&point).or_else(|_| std::fs::remove_file(&point));
}

/// Undoes every [`bind`] of container `id`.
pub fn unbind_container(paths: &VmPaths, id: &str) {
    let prefix = format!("{id}-");
    let Ok(entries) = std::fs::read_dir(paths.volume_points()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            unbind(paths, &name);
        }
    }
}
