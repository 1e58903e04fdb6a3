//! Turns an unpacked image root into the read-only block image a pod's VM
//! mounts. erofs (`mkfs.erofs`) rather than ext4: it is read-only by design
//! (nothing to journal or repair, nothing a guest could corrupt for another
//! pod sharing the same file), compact (no free-space reserve, tail packing),
//! builds in one pass over the tree, and keeps owners, modes and xattrs.

use std::path::Path;
use std::process::Command;

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
    /// The result could not be moved into place.
    #[error("installing {path}: {source}")]
    Install {
        /// Destination.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Builds `out` from `root` (written to a temporary name, then renamed).
pub fn build_erofs(root: &Path, out: &Path) -> Result<u64, BlockError> {
    let tmp = out.with_extension("erofs.tmp");
    let result = Command::new("mkfs.erofs")
        // Fixed timestamps and UUID: the same image gives the same bytes.
        .args([
            "-T0",
            "-U",
            "00000000-0000-0000-0000-000000000000",
            "--quiet",
        ])
        .arg(&tmp)
        .arg(root)
        .output()
        .map_err(BlockError::Spawn)?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BlockError::Failed {
            status: result.status.to_string(),
            stderr: String::from_utf8_lossy(&result.stderr).trim().to_string(),
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
        let size = build_erofs(&root, &a).unwrap();
        assert!(size > 0 && size.is_multiple_of(4096), "{size}");
        // erofs superblock magic at offset 1024.
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        let b = tmp.path().join("b.erofs");
        build_erofs(&root, &b).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = build_erofs(&tmp.path().join("nope"), &tmp.path().join("x.erofs"));
        assert!(err.is_err());
    }
}
