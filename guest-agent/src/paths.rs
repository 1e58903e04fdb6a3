//! Safe handling of paths that come from requests or container images.
//!
//! Nothing a request names may reach outside the directory it is meant for:
//! identifiers are restricted to a small alphabet, relative paths may not
//! contain `..` or be absolute, and paths inside a container's rootfs are
//! resolved component by component with symlinks interpreted relative to the
//! rootfs (like `openat2(RESOLVE_IN_ROOT)` or runc's securejoin).

use std::path::{Component, Path, PathBuf};

/// Why a path or identifier was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The value is empty.
    #[error("{field}: must not be empty")]
    Empty {
        /// Request field.
        field: &'static str,
    },
    /// The value has a character or component that is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// Request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Longest identifier (container id, exec id, sandbox id) accepted.
pub const MAX_ID_LEN: usize = 128;

/// Checks an identifier: 1..=128 of `[A-Za-z0-9_.-]`, not starting with `.`
/// or `-`. Identifiers become directory and cgroup names.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), PathError> {
    if id.is_empty() {
        return Err(PathError::Empty { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(PathError::Invalid {
            field,
            reason: format!("longer than {MAX_ID_LEN} bytes"),
        });
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(PathError::Invalid {
            field,
            reason: "must not start with '.' or '-'".into(),
        });
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(PathError::Invalid {
            field,
            reason: format!("character {c:?} not allowed (use [A-Za-z0-9_.-])"),
        });
    }
    Ok(())
}

/// Checks an absolute path inside a container (a mount destination, a masked
/// path, a cwd): absolute, no NUL, at most 4096 bytes. `..` is allowed here
/// because [`secure_join`] clamps it at the root.
pub fn check_container_path(field: &'static str, path: &Path) -> Result<(), PathError> {
    let s = path.as_os_str();
    if s.is_empty() {
        return Err(PathError::Empty { field });
    }
    if !path.is_absolute() {
        return Err(PathError::Invalid {
            field,
            reason: format!("{} must be absolute", path.display()),
        });
    }
    if s.len() > 4096 || s.as_encoded_bytes().contains(&0) {
        return Err(PathError::Invalid {
            field,
            reason: "longer than 4096 bytes or contains NUL".into(),
        });
    }
    Ok(())
}

/// Resolves `unsafe_path` as if `root` were `/`: `..` never climbs above
/// `root`, and symlinks met on the way (absolute or relative) are followed
/// inside `root`. Missing components are kept as they are. The result is
/// always `root` or below it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> std::io::Result<PathBuf> {
    const MAX_SYMLINKS: usize = 255;
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = components_rev(unsafe_path);
    let mut links = 0usize;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(components_rev(&target));
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The normal and `..` components of `p`, last first (a stack to pop from).
fn components_rev(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn ids() {
        assert!(validate_id("container_id", "abc-1.2_x").is_ok());
        assert_eq!(
            validate_id("container_id", ""),
            Err(PathError::Empty {
                field: "container_id"
            })
        );
        for bad in ["../x", "a/b", ".hidden", "-x", "a b", "é"] {
            let e = validate_id("exec_id", bad).unwrap_err();
            assert!(e.to_string().starts_with("exec_id: "), "{e}");
        }
        assert!(validate_id("x", &"a".repeat(129)).is_err());
    }

    #[test]
    fn container_paths() {
        assert!(check_container_path("mounts[0].destination", Path::new("/a")).is_ok());
        assert!(check_container_path("mounts[0].destination", Path::new("a")).is_err());
        assert!(check_container_path("mounts[0].destination", Path::new("")).is_err());
    }

    #[test]
    fn secure_join_stays_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/../../etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("rel/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/missing/../etc")).unwrap(),
            root.join("etc")
        );
        assert!(secure_join(root, Path::new("/loop1")).is_err());
    }
}
