//! Named network namespaces: a namespace kept alive by a bind mount of its
//! nsfs file (as `ip netns add` does), and running code inside one.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::path::{Path, PathBuf};

/// A network namespace pinned at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

fn err(context: String) -> impl FnOnce(nix::Error) -> std::io::Error {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

impl NetNs {
    /// Creates a new namespace pinned at `dir/name`.
    pub fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(std::io::Error::other(format!(
                "invalid netns name {name:?}"
            )));
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let target = path.clone();
        let result = std::thread::spawn(move || -> std::io::Result<()> {
            // unshare affects only this thread, which ends right after.
            unshare(CloneFlags::CLONE_NEWNET).map_err(err("unshare(CLONE_NEWNET)".into()))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err(format!(
                "bind-mounting the namespace on {}",
                target.display()
            )))
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self { path })
    }

    /// A handle on an existing pinned namespace.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where the namespace is pinned (CNI_NETNS).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the path still pins a namespace.
    pub fn exists(&self) -> bool {
        nix::sys::statfs::statfs(&self.path)
            .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
            .unwrap_or(false)
    }

    /// Runs `f` on a thread inside the namespace. Processes spawned by `f`
    /// start in the namespace too.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let ns = std::fs::File::open(&self.path)?;
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(err("setns".into()))?;
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    }

    /// Brings the namespace's loopback up, as CNI's `loopback` plugin does
    /// for containerd's pods: a native pod's servers on 127.0.0.1 (and
    /// port-forwards to them) need it.
    pub fn loopback_up(&self) -> std::io::Result<()> {
        self.run(|| {
            let out = std::process::Command::new("ip")
                .args(["link", "set", "dev", "lo", "up"])
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "`ip link set dev lo up`: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        })
    }

    /// Unpins and deletes the namespace (idempotent).
    pub fn remove(&self) -> std::io::Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(e) => return Err(err(format!("unmounting {}", self.path.display()))(e)),
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
