//! Turns an unpacked image root into the read-only block image a pod's VM
//! mounts. erofs (`mkfs.erofs`) rather than ext4: it is read-only by design
//! (nothing to journal or repair, nothing a guest could corrupt for another
//! pod sharing the same file), compact (no free-space reserve, tail packing),
//! builds in one pass over the tree, and keeps owners, modes and xattrs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a block image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// mkfs.erofs could not be run.
    #[error("running mkfs.erofs (apt-get install erofs-utils): {0}")]
    Spawn(std::io::Error),
    /// mkfs.erofs failed.
    #[error("mkfs.erofs failed ({status}): {stderr}")]
    Failed {
        /// Exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// mkfs.erofs ran past its time limit (a tree shaped to make it crawl)
    /// and was killed.
    #[error("mkfs.erofs ran longer than {0:?} and was stopped")]
    TimedOut(std::time::Duration),
    /// The pull that asked for the image was stopped.
    #[error("the pull was stopped")]
    Stopped,
    /// The result could not be moved into place.
    #[error("installing {path}: {source}")]
    Install {
        /// Destination.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How long mkfs.erofs may run on one image.
pub const MKFS_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Builds `out` from `root` (written to a temporary name, then renamed)
/// within [`MKFS_LIMIT`]; setting `stop` kills mkfs.erofs and leaves
/// nothing.
pub fn build_erofs(root: &Path, out: &Path, stop: &AtomicBool) -> Result<u64, BlockError> {
    build_erofs_within(root, out, MKFS_LIMIT, stop)
}

/// Builds `out` from `root`, killing mkfs.erofs after `limit` or once
/// `stop` is set.
pub fn build_erofs_within(
    root: &Path,
    out: &Path,
    limit: Duration,
    stop: &AtomicBool,
) -> Result<u64, BlockError> {
    // Names of their own: a stopped build may still be ending while the
    // next pull of the image starts its own.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    let tmp = out.with_extension(format!("erofs.{n}.tmp"));
    let log = out.with_extension(format!("erofs.{n}.log"));
    let stderr = std::fs::File::create(&log).map_err(BlockError::Spawn)?;
    let mut child = Command::new("mkfs.erofs")
        // Fixed timestamps and UUID: the same image gives the same bytes.
        .args([
            "-T0",
            "-U",
            "00000000-0000-0000-0000-000000000000",
            "--quiet",
        ])
        .arg(&tmp)
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(BlockError::Spawn)?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(BlockError::Spawn)? {
            break s;
        }
        let stopped = stop.load(Ordering::Relaxed);
        if stopped || started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&log);
            return Err(if stopped {
                BlockError::Stopped
            } else {
                BlockError::TimedOut(limit)
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = crate::files::read_regular(&log, 64 << 10).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BlockError::Failed {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&said).trim().to_string(),
        });
    }
    let install = |source| BlockError::Install {
        path: out.display().to_string(),
        source,
    };
    std::fs::rename(&tmp, out).map_err(install)?;
    Ok(std::fs::metadata(out).map_err(install)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_reproducible_erofs_image() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            eprintln!("mkfs.erofs missing; install erofs-utils");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hello"), b"hi").unwrap();
        let a = tmp.path().join("a.erofs");
        let size = build_erofs(&root, &a, &AtomicBool::new(false)).unwrap();
        assert!(size > 0 && size.is_multiple_of(4096), "{size}");
        // erofs superblock magic at offset 1024.
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        let b = tmp.path().join("b.erofs");
        build_erofs(&root, &b, &AtomicBool::new(false)).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = build_erofs(
            &tmp.path().join("nope"),
            &tmp.path().join("x.erofs"),
            &AtomicBool::new(false),
        );
        assert!(err.is_err());
    }

    /// A tree mkfs.erofs takes a while over.
    fn slow_tree(tmp: &Path) -> std::path::PathBuf {
        let root = tmp.join("root");
        for i in 0..2000 {
            let d = root.join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        root
    }

    fn left_in(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn a_build_past_its_limit_is_stopped_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = slow_tree(tmp.path());
        let out = tmp.path().join("slow.erofs");
        let e =
            build_erofs_within(&root, &out, Duration::ZERO, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(e, BlockError::TimedOut(_)), "{e}");
        assert_eq!(left_in(tmp.path()), vec![std::ffi::OsString::from("root")]);
    }

    #[test]
    fn a_stopped_build_ends_at_once_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = slow_tree(tmp.path());
        let out = tmp.path().join("stopped.erofs");
        let e = build_erofs(&root, &out, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(e, BlockError::Stopped), "{e}");
        assert_eq!(left_in(tmp.path()), vec![std::ffi::OsString::from("root")]);
    }
}
