//! Reading files that a request names, safely: what is opened is checked
//! (not the path before it), so a FIFO, a device or a file swapped in
//! between cannot hang moatd or make it read without end.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads the regular file at `path`, of at most `limit` bytes. Opening
/// never blocks (`O_NONBLOCK`, so a FIFO is refused rather than waited
/// on); the type and size are checked on the open descriptor, and the
/// read stops after `limit` bytes whatever the file does meanwhile.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    read_open(file, path, limit)
}

/// Reads an opened file (from `path`) if it is regular and within `limit`.
fn read_open(file: std::fs::File, path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is larger than {limit} bytes", path.display()),
        )
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(data)
}

/// Reads `rel` inside the directory tree `root` as [`read_regular`] does,
/// never leaving the tree: no part of `rel` may be a symlink (an image's
/// `etc -> /etc` would otherwise lead to the host's files) or `..`.
pub fn read_in_root(root: &Path, rel: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::path::Component;
    let refused = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} in {}: {why}", rel.display(), root.display()),
        )
    };
    let parts: Vec<_> = rel.components().collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(refused("an empty path"));
    };
    let mut at = root.to_path_buf();
    for c in dirs {
        let Component::Normal(name) = c else {
            return Err(refused("only plain names may lead there"));
        };
        at.push(name);
        if !std::fs::symlink_metadata(&at)?.is_dir() {
            return Err(refused("a part of it is not a directory (a symlink?)"));
        }
    }
    let Component::Normal(name) = last else {
        return Err(refused("only plain names may lead there"));
    };
    at.push(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&at)?;
    read_open(file, &at, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_a_tree_are_read_without_leaving_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        assert_eq!(
            read_in_root(&root, Path::new("etc/passwd"), 1024).unwrap(),
            b"root:x:0:0::/:/bin/sh\n"
        );
        // An image whose etc is the host's.
        let evil = dir.path().join("evil");
        std::fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink("/etc", evil.join("etc")).unwrap();
        assert!(read_in_root(&evil, Path::new("etc/passwd"), 1 << 20).is_err());
        // The file itself a link out.
        std::fs::create_dir_all(evil.join("e2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", evil.join("e2/passwd")).unwrap();
        assert!(read_in_root(&evil, Path::new("e2/passwd"), 1 << 20).is_err());
        assert!(read_in_root(&root, Path::new("../rootfs/etc/passwd"), 1024).is_err());
        assert!(read_in_root(&root, Path::new("etc/passwd"), 4).is_err());
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"hello");
        assert!(read_regular(&f, 4)
            .unwrap_err()
            .to_string()
            .contains("larger"));
        assert!(read_regular(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Without O_NONBLOCK this open would wait for a writer for ever.
        assert!(read_regular(&fifo, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        assert!(read_regular(dir.path(), 1 << 20).is_err());
    }
}
