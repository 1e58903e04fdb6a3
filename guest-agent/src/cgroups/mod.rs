//! cgroup v2: creating a container's cgroup, applying limits, reading
//! statistics, killing and removing it. Works on any directory that looks
//! like a cgroup2 mount, so it is tested against a temporary directory.

pub mod files;
pub mod stats;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the guest's cgroup2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors of cgroup operations, with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A limit could not be translated.
    #[error(transparent)]
    Resource(#[from] files::ResourceError),
    /// A cgroup file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Enables every controller available at `dir` for its children
/// (writes `+ctrl` for each name in cgroup.controllers to
/// cgroup.subtree_control). Controllers the kernel refuses are skipped.
pub fn enable_all_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let avail_path = dir.join("cgroup.controllers");
    let avail = std::fs::read_to_string(&avail_path).map_err(|e| io_err(&avail_path, e))?;
    let ctl = dir.join("cgroup.subtree_control");
    let mut enabled = Vec::new();
    for c in avail.split_whitespace() {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&ctl)
            .and_then(|mut f| f.write_all(format!("+{c}").as_bytes()));
        match r {
            Ok(()) => enabled.push(c.to_string()),
            Err(e) => tracing::debug!(controller = c, "cannot enable: {e}"),
        }
    }
    Ok(enabled)
}

/// One cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Opens an existing cgroup or a not yet created one at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Creates `rel` (e.g. `pod/ctr1`) under `root`, enabling all
    /// controllers for children in `root` and in each intermediate
    /// directory, so limits can be set on the leaf.
    pub fn create(root: &Path, rel: &Path) -> Result<Self, CgroupError> {
        let mut dir = root.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            // Only enable when the parent can still have controllers for
            // children (no processes of its own, except at the root).
            if let Err(e) = enable_all_controllers(&dir) {
                tracing::debug!("enabling controllers in {}: {e}", dir.display());
            }
            dir.push(c.as_os_str());
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && i + 1 < comps.len() => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&dir, e)),
            }
        }
        Ok(Self { path: dir })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one interface file.
    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = self.path.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| io_err(&p, e))
    }

    /// Applies OCI resources. A file that does not exist means its
    /// controller is not available, which is an error naming the file.
    pub fn apply(&self, res: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError> {
        for (file, value) in files::resource_files(res)? {
            self.write(&file, &value)?;
        }
        Ok(())
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The pids in this cgroup (not its children).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let p = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Statistics of this cgroup.
    pub fn stats(&self) -> stats::CgroupStats {
        stats::read_stats(&self.path)
    }

    /// memory.events oom_kill (0 when unavailable).
    pub fn oom_kill_count(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .map(|t| {
                stats::parse_flat_keyed(&t)
                    .get("oom_kill")
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Sends `signal` to every process of the cgroup.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<(), CgroupError> {
        for pid in self.pids()? {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        Ok(())
    }

    /// Kills every process: cgroup.kill where the kernel has it, else
    /// SIGKILL to each pid.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.path.join("cgroup.kill").exists() && self.write("cgroup.kill", "1").is_ok() {
            return Ok(());
        }
        self.signal_all(nix::sys::signal::Signal::SIGKILL)
    }

    /// Removes the cgroup directory, retrying for up to `timeout` while
    /// processes are still leaving. A missing directory is fine.
    pub fn remove(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(io_err(&self.path, e))
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enables_controllers_and_apply_writes_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let cg = Cgroup::create(root, Path::new("pod/c1")).unwrap();
        assert_eq!(cg.path(), root.join("pod/c1"));
        // The fake subtree_control keeps the last write (a real one merges).
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        // Existing controller files are written; a missing one is an error
        // naming the file.
        std::fs::write(cg.path().join("memory.max"), "max").unwrap();
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":1048576}}"#).unwrap();
        cg.apply(&res).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path().join("memory.max")).unwrap(),
            "1048576"
        );
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_str(r#"{"pids":{"limit":5}}"#).unwrap();
        let e = cg.apply(&res).unwrap_err().to_string();
        assert!(e.contains("pids.max"), "{e}");
        // Again: already existing is fine.
        Cgroup::create(root, Path::new("pod/c1")).unwrap();
    }

    #[test]
    fn pids_and_oom_count() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::at(t.path());
        std::fs::write(t.path().join("cgroup.procs"), "12\n34\n").unwrap();
        std::fs::write(t.path().join("memory.events"), "oom 2\noom_kill 1\n").unwrap();
        assert_eq!(cg.pids().unwrap(), vec![12, 34]);
        assert_eq!(cg.oom_kill_count(), 1);
        assert_eq!(Cgroup::at(t.path().join("nope")).oom_kill_count(), 0);
    }

    #[test]
    fn remove_missing_is_ok() {
        let t = tempfile::tempdir().unwrap();
        Cgroup::at(t.path().join("gone"))
            .remove(std::time::Duration::from_millis(10))
            .unwrap();
    }
}
