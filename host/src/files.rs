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

#[cfg(test)]
mod tests {
    use super::*;

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
