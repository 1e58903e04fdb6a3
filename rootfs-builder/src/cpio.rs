//! A reproducible writer for cpio "newc" archives, the format the Linux
//! kernel unpacks as an initramfs.
//!
//! Entries are kept sorted by path and written with fixed owners, times and
//! inode numbers, so the same entries always give the same bytes. Parent
//! directories are added (mode 0755) when an entry needs them.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// Why an entry cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is empty, absolute-looking after trimming, or has `.`/`..`.
    #[error("invalid archive path {0:?}: must be a relative path without '.' or '..' components")]
    InvalidPath(String),
    /// Two entries of different kinds claim the same path.
    #[error("archive path {0:?} is already a {1}")]
    Conflict(String, &'static str),
    /// The data does not fit the format's 32-bit size field.
    #[error("entry {0:?} is too large for cpio ({1} bytes)")]
    TooLarge(String, usize),
}

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device node (major, minor).
    CharDev(u32, u32),
}

impl EntryKind {
    fn name(&self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::File(_) => "file",
            EntryKind::Symlink(_) => "symlink",
            EntryKind::CharDev(..) => "character device",
        }
    }

    fn type_bits(&self) -> u32 {
        match self {
            EntryKind::Dir => 0o040000,
            EntryKind::File(_) => 0o100000,
            EntryKind::Symlink(_) => 0o120000,
            EntryKind::CharDev(..) => 0o020000,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    kind: EntryKind,
    perm: u32,
}

/// An in-memory archive; [`Archive::write_to`] serializes it.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(CpioError::InvalidPath(path.to_string()))
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (idempotent for an existing directory).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, CpioError> {
        self.insert(path, EntryKind::Dir, perm)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<&mut Self, CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_string(), data.len()));
        }
        self.insert(path, EntryKind::File(data), perm)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.insert(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.insert(path, EntryKind::CharDev(major, minor), perm)
    }

    /// Paths in the archive, in the order they are written.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn insert(&mut self, path: &str, kind: EntryKind, perm: u32) -> Result<&mut Self, CpioError> {
        let path = normalize(path)?;
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                Some(e) if e.kind != EntryKind::Dir => {
                    return Err(CpioError::Conflict(parent, e.kind.name()))
                }
                Some(_) => {}
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            kind: EntryKind::Dir,
                            perm: 0o755,
                        },
                    );
                }
            }
        }
        match self.entries.get(&path) {
            Some(e) if e.kind == EntryKind::Dir && kind == EntryKind::Dir => {}
            Some(e) => return Err(CpioError::Conflict(path, e.kind.name())),
            None => {}
        }
        self.entries.insert(
            path,
            Entry {
                kind,
                perm: perm & 0o7777,
            },
        );
        Ok(self)
    }

    /// Writes the archive in newc format, ending with the trailer entry.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        let mut written = 0usize;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (data, rdev): (&[u8], (u32, u32)) = match &entry.kind {
                EntryKind::Dir => (&[], (0, 0)),
                EntryKind::File(d) => (d, (0, 0)),
                EntryKind::Symlink(t) => (t.as_bytes(), (0, 0)),
                EntryKind::CharDev(ma, mi) => (&[], (*ma, *mi)),
            };
            let nlink = if entry.kind == EntryKind::Dir { 2 } else { 1 };
            let mode = entry.kind.type_bits() | entry.perm;
            written += write_header(
                &mut out,
                ino as u32 + 1,
                mode,
                nlink,
                data.len() as u32,
                rdev,
                path,
            )?;
            out.write_all(data)?;
            written += data.len();
            written += pad4(&mut out, written)?;
        }
        written += write_header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        pad4(&mut out, written)?;
        out.flush()
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

fn write_header<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<usize> {
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{filesize:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let n = header.len() + name.len() + 1;
    Ok(n + pad4(out, n)?)
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<usize> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    Ok(pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for checking what the writer produced.
    fn parse(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let mut off = 0;
        let field = |b: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        loop {
            let h = &bytes[off..off + 110];
            assert_eq!(&h[..6], b"070701");
            let mode = field(h, 1);
            let size = field(h, 6) as usize;
            let (rmaj, rmin) = (field(h, 9), field(h, 10));
            let namesize = field(h, 11) as usize;
            let name = std::str::from_utf8(&bytes[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_string();
            off += 110 + namesize;
            off += (4 - off % 4) % 4;
            let data = bytes[off..off + size].to_vec();
            off += size;
            off += (4 - off % 4) % 4;
            if name == "TRAILER!!!" {
                assert_eq!(off, bytes.len());
                return out;
            }
            out.push((name, mode, data, rmaj, rmin));
        }
    }

    #[test]
    fn writes_entries_with_parents_sorted() {
        let mut a = Archive::new();
        a.file("/sbin/init", 0o755, b"hello".to_vec()).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.symlink("bin", "sbin").unwrap();
        let entries = parse(&a.to_bytes());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "dev", "dev/console", "sbin", "sbin/init"]);
        assert_eq!(entries[4].1, 0o100755);
        assert_eq!(entries[4].2, b"hello");
        assert_eq!(entries[2].1, 0o020600);
        assert_eq!((entries[2].3, entries[2].4), (5, 1));
        assert_eq!(entries[0].1, 0o120777);
        assert_eq!(entries[0].2, b"sbin");
        assert_eq!(entries[1].1, 0o040755);
    }

    #[test]
    fn same_entries_give_same_bytes_in_any_order() {
        let mut a = Archive::new();
        a.file("a/x", 0o644, vec![1, 2, 3])
            .unwrap()
            .dir("b", 0o700)
            .unwrap();
        let mut b = Archive::new();
        b.dir("b", 0o700)
            .unwrap()
            .file("a/x", 0o644, vec![1, 2, 3])
            .unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.to_bytes().len() % 4, 0);
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for bad in ["", "/", "a/../b", "./a", "a//b", "a/\0"] {
            assert!(
                matches!(a.file(bad, 0o644, vec![]), Err(CpioError::InvalidPath(_))),
                "{bad:?}"
            );
        }
        a.file("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.file("f/g", 0o644, vec![]),
            Err(CpioError::Conflict(..))
        ));
        assert!(matches!(a.dir("f", 0o755), Err(CpioError::Conflict(..))));
        a.dir("d", 0o755).unwrap();
        a.dir("d", 0o755).unwrap();
    }

    #[test]
    fn system_cpio_lists_the_archive() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("cpio(1) not installed; skipping cross-check");
            return;
        };
        assert!(out.status.success());
        let mut a = Archive::new();
        a.file("etc/hostname", 0o644, b"moat\n".to_vec()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, a.to_bytes()).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -it < {}", path.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "etc\netc/hostname\n");
    }
}
