//! The cgroup (v2) each moat-vmm runs in: one per pod VM, under the pod's
//! CRI `cgroup_parent`, so guest memory and VMM CPU count against the pod in
//! kubelet's accounting, and a runaway VMM meets its own `memory.max`
//! before the node runs short.
//!
//! With the `cgroupfs` driver the parent is a path (`/kubepods/burstable/
//! pod<uid>`) and the VMM's cgroup is `moat-vmm-<pod id>` in it. With
//! `systemd` the parent is a slice name (`kubepods-burstable-pod<uid>.slice`),
//! expanded to its path as systemd nests slices, and the VMM's cgroup is
//! `moat-vmm-<pod id>.scope`. moatd writes the cgroup files itself, as runc's
//! cgroupfs manager does; it does not ask systemd over D-Bus. A pod without
//! a parent goes under `/moat` (`moat.slice`).
//!
//! The VMM joins its cgroup before it execs (it writes its own pid to
//! `cgroup.procs` between fork and exec), so all of its memory, guest RAM
//! included, is charged there from the start. The pod's virtiofsd joins a
//! cgroup of its own beside it the same way ([`fs_daemon_path`]).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Where the unified hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Memory a VMM may use beyond its guest's RAM: its own code, heap, device
/// queues and the kernel's KVM structures charged to it.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// Tasks a VMM may have: its threads (event loop, one per vCPU) and a
/// margin; it never forks.
pub const VMM_PIDS_BASE: u64 = 16;

/// Why a VMM's cgroup cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The CRI `cgroup_parent` is not a usable path or slice name.
    #[error("cgroup_parent {parent:?}: {reason}")]
    BadParent {
        /// As given.
        parent: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing the hierarchy failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// True when `root` holds a cgroup v2 hierarchy moatd can write.
pub fn available(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
        && nix::unistd::access(
            &root.join("cgroup.subtree_control"),
            nix::unistd::AccessFlags::W_OK,
        )
        .is_ok()
}

/// The VMM cgroup's path relative to the hierarchy's root, for the pod
/// `pod_id` under `parent` with `driver` (`cgroupfs` or `systemd`).
pub fn relative_path(driver: &str, parent: &str, pod_id: &str) -> Result<PathBuf, CgroupError> {
    path_under(driver, parent, &format!("moat-vmm-{pod_id}"))
}

/// The path of cgroup `leaf` under the CRI `parent`, relative to the
/// hierarchy's root, with `driver` (`cgroupfs` or `systemd`; a systemd leaf
/// is a `.scope`).
pub fn path_under(driver: &str, parent: &str, leaf: &str) -> Result<PathBuf, CgroupError> {
    let bad = |reason: &str| CgroupError::BadParent {
        parent: parent.to_string(),
        reason: reason.to_string(),
    };
    if driver == "systemd" {
        let parent = if parent.is_empty() {
            "moat.slice"
        } else {
            parent
        };
        return Ok(expand_slice(parent)
            .map_err(|r| bad(&r))?
            .join(format!("{leaf}.scope")));
    }
    let parent = if parent.is_empty() { "/moat" } else { parent };
    let mut path = PathBuf::new();
    for c in Path::new(parent).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => path.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad("must not leave the hierarchy (\"..\")"))
            }
        }
    }
    Ok(path.join(leaf))
}

/// A systemd slice name as its path: `a-b-c.slice` is
/// `a.slice/a-b.slice/a-b-c.slice` (`-.slice` is the root).
fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let Some(name) = slice.strip_suffix(".slice") else {
        return Err("with the systemd cgroup driver it must be a slice name (`….slice`)".into());
    };
    if slice.contains('/') {
        return Err("a slice name has no '/'".into());
    }
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err("not a valid slice name".into());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// Limits of one cgroup moatd makes for a pod VM's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: u64,
    /// `pids.max`.
    pub pids_max: u64,
}

impl Limits {
    /// The limits of a pod's virtiofsd: what a guest can make it hold is
    /// bounded (its inodes by its open-file limit, their kernel memory and
    /// the page cache of what it reads and writes by `memory.max`, which
    /// reclaims the cache before it kills), and a daemon that still goes
    /// over ends its VM rather than the node's memory. Its tasks: the
    /// parent, the sandboxed child and its threads.
    pub const FS_DAEMON: Self = Self {
        memory_max: 256 << 20,
        pids_max: 32,
    };

    /// The limits for a VM of `memory_mib` and `cpus`: guest memory plus
    /// [`VMM_OVERHEAD_MIB`] and a sixteenth as margin; [`VMM_PIDS_BASE`]
    /// tasks plus one per vCPU.
    pub fn for_vm(memory_mib: u64, cpus: u8) -> Self {
        let mib = memory_mib + VMM_OVERHEAD_MIB + memory_mib / 16;
        Self {
            memory_max: mib << 20,
            pids_max: VMM_PIDS_BASE + u64::from(cpus),
        }
    }
}

/// The cgroup of the pod's virtiofsd: beside the VMM's (`rel`), named
/// `moat-fs-…` where the VMM's is `moat-vmm-…`, so the daemon counts
/// against the pod's parent but not against the guest's memory.
pub fn fs_daemon_path(rel: &Path) -> PathBuf {
    let leaf = rel
        .file_name()
        .map(|n| n.to_string_lossy().replacen("moat-vmm-", "moat-fs-", 1))
        .unwrap_or_else(|| "moat-fs".into());
    rel.with_file_name(leaf)
}

/// Creates the cgroup `rel` under `root` with `limits`, turning on the
/// memory and pids controllers down the way, and opens its `cgroup.procs`
/// for the VMM to join. An existing cgroup (a retried launch) is reused.
pub fn create(root: &Path, rel: &Path, limits: Limits) -> Result<std::fs::File, CgroupError> {
    let path = root.join(rel);
    // Each ancestor, the root included, hands the controllers down.
    let mut dir = root.to_path_buf();
    let ancestors: Vec<_> = rel.components().collect();
    for (i, c) in ancestors.iter().enumerate() {
        enable_controllers(&dir)?;
        dir.push(c);
        if i + 1 < ancestors.len() || !dir.exists() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&dir)(e)),
            }
        }
    }
    write(&path.join("memory.max"), &limits.memory_max.to_string())?;
    // The guest's memory is not to be swapped behind its back.
    let swap = path.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    write(&path.join("pids.max"), &limits.pids_max.to_string())?;
    let procs = path.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(io(&procs))
}

/// Writes `+memory +pids` (those the cgroup has) to `dir`'s
/// `cgroup.subtree_control`.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.controllers");
    let have = std::fs::read_to_string(&file).map_err(io(&file))?;
    let want: Vec<String> = ["memory", "pids"]
        .iter()
        .filter(|c| have.split_whitespace().any(|h| h == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    let control = dir.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&control).map_err(io(&control))?;
    if want
        .iter()
        .all(|w| on.split_whitespace().any(|o| o == &w[1..]))
    {
        return Ok(());
    }
    write(&control, &want.join(" "))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io(path))
}

/// Removes the VMM's cgroup once its processes are gone (waiting up to 2 s
/// for the kernel to let them go). A cgroup already gone is fine.
pub async fn remove(root: &Path, rel: &Path) -> Result<(), CgroupError> {
    let path = root.join(rel);
    let mut last = None;
    for _ in 0..200 {
        match std::fs::remove_dir(&path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(io(&path)(
        last.unwrap_or_else(|| std::io::Error::other("busy")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_map_to_paths_as_runc_maps_them() {
        let p = |d, parent| relative_path(d, parent, "abc").map(|p| p.display().to_string());
        assert_eq!(
            p("cgroupfs", "/kubepods/burstable/pod1").unwrap(),
            "kubepods/burstable/pod1/moat-vmm-abc"
        );
        assert_eq!(p("cgroupfs", "").unwrap(), "moat/moat-vmm-abc");
        assert_eq!(
            p("systemd", "kubepods-burstable-pod1.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/moat-vmm-abc.scope"
        );
        assert_eq!(p("systemd", "").unwrap(), "moat.slice/moat-vmm-abc.scope");
        assert_eq!(p("systemd", "-.slice").unwrap(), "moat-vmm-abc.scope");
        for (d, bad) in [
            ("cgroupfs", "/kubepods/../../etc"),
            ("systemd", "/kubepods/pod1"),
            ("systemd", "kubepods--x.slice"),
            ("systemd", "kubepods"),
        ] {
            let e = p(d, bad).unwrap_err().to_string();
            assert!(e.contains("cgroup_parent"), "{e}");
        }
    }

    #[test]
    fn limits_cover_guest_memory_and_vmm_overhead() {
        let l = Limits::for_vm(256, 2);
        assert_eq!(l.memory_max, (256 + 64 + 16) << 20);
        assert_eq!(l.pids_max, 18);
    }

    #[test]
    fn the_daemon_cgroup_is_the_vmm_cgroup_sibling() {
        for (d, parent, want) in [
            ("cgroupfs", "/kubepods/pod1", "kubepods/pod1/moat-fs-abc"),
            (
                "systemd",
                "kubepods-pod1.slice",
                "kubepods.slice/kubepods-pod1.slice/moat-fs-abc.scope",
            ),
        ] {
            let vmm = relative_path(d, parent, "abc").unwrap();
            assert_eq!(fs_daemon_path(&vmm), PathBuf::from(want));
        }
    }

    /// The hierarchy's files, written in a plain directory standing in for
    /// cgroupfs (the kernel's own is exercised by the end-to-end tests).
    #[tokio::test]
    async fn create_enables_controllers_sets_limits_and_remove_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let fake = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
            std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        };
        fake(r);
        fake(&r.join("kubepods"));
        let rel = relative_path("cgroupfs", "/kubepods", "abc").unwrap();
        // The leaf's interface files appear with the directory in cgroupfs.
        let leaf = r.join(&rel);
        std::fs::create_dir_all(&leaf).unwrap();
        for f in ["memory.max", "pids.max", "cgroup.procs"] {
            std::fs::write(leaf.join(f), "").unwrap();
        }
        create(r, &rel, Limits::for_vm(128, 1)).unwrap();
        for dir in [r, &r.join("kubepods")] {
            let on = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            assert_eq!(on, "+memory +pids");
        }
        let max = std::fs::read_to_string(leaf.join("memory.max")).unwrap();
        assert_eq!(max, ((128u64 + 64 + 8) << 20).to_string());
        assert_eq!(
            std::fs::read_to_string(leaf.join("pids.max")).unwrap(),
            "17"
        );
        for f in ["memory.max", "pids.max", "cgroup.procs"] {
            std::fs::remove_file(leaf.join(f)).unwrap();
        }
        remove(r, &rel).await.unwrap();
        assert!(!leaf.exists());
        remove(r, &rel).await.unwrap();
    }
}
