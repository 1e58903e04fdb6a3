//! Applies image layers, in order, onto a root directory: OCI whiteouts
//! (`.wh.<name>` deletes a lower entry, `.wh..wh..opq` empties a lower
//! directory), then the layer's own entries.
//!
//! Layers come from the network and are untrusted: entries may not escape
//! the root through `..`, absolute paths, or symlinks planted by an earlier
//! entry (the `tar` crate's `unpack_in` checks the resolved parent), and
//! whiteouts are only applied through real directories.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading or writing failed.
    #[error("layer {layer}: {context}: {source}")]
    Io {
        /// The layer's digest or file.
        layer: String,
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// An entry's path is not acceptable.
    #[error("layer {layer}: entry {path:?} {reason}")]
    BadEntry {
        /// The layer.
        layer: String,
        /// The entry path as given.
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The image unpacks to more than its limits allow (a decompression
    /// bomb, or simply too big).
    #[error("layer {layer}: the image holds more {what} than image_limits.{key} ({limit})")]
    TooLarge {
        /// The layer where the limit was passed.
        layer: String,
        /// "bytes" or "entries".
        what: &'static str,
        /// The configuration key.
        key: &'static str,
        /// Its value.
        limit: u64,
    },
}

/// What an image may still unpack to, across its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of file data.
    pub bytes: u64,
    /// Entries (files, directories, links).
    pub entries: u64,
    /// The limits it started from (for errors).
    pub limits: (u64, u64),
}

impl Budget {
    /// A budget of `bytes` and `entries`.
    pub fn new(bytes: u64, entries: u64) -> Self {
        Self {
            bytes,
            entries,
            limits: (bytes, entries),
        }
    }

    /// Takes one entry of `size` bytes from the budget.
    fn take(&mut self, size: u64, layer: &str) -> Result<(), UnpackError> {
        let over = |what, key, limit| UnpackError::TooLarge {
            layer: layer.to_string(),
            what,
            key,
            limit,
        };
        self.entries = self
            .entries
            .checked_sub(1)
            .ok_or_else(|| over("entries", "max_unpacked_entries", self.limits.1))?;
        self.bytes = self
            .bytes
            .checked_sub(size)
            .ok_or_else(|| over("bytes", "max_unpacked_bytes", self.limits.0))?;
        Ok(())
    }
}

/// How a layer blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detects the compression from the magic number.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

fn open_layer(path: &Path, layer: &str) -> Result<Box<dyn Read>, UnpackError> {
    let io = |context: &str| {
        let context = context.to_string();
        let layer = layer.to_string();
        move |source| UnpackError::Io {
            layer,
            context,
            source,
        }
    };
    let mut f = File::open(path).map_err(io("opening"))?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(io("reading"))?;
    f.rewind().map_err(io("rewinding"))?;
    let f = BufReader::new(f);
    Ok(match Compression::sniff(&head[..n]) {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(f).map_err(io("starting zstd"))?)
        }
    })
}

/// An entry path made relative and checked: no root, no `..`.
fn clean_path(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `root/rel` if every directory on the way is a real directory (not a
/// symlink), so a removal there cannot reach outside `root`.
fn real_parent_path(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent()?;
    for c in parent.components() {
        cur.push(c);
        let meta = std::fs::symlink_metadata(&cur).ok()?;
        if !meta.is_dir() {
            return None;
        }
    }
    Some(root.join(rel))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer file onto `root`, within what is left of `budget`
/// (checked while reading the layer, before anything of it is written).
/// `layer` names it in errors.
pub fn apply_layer(
    root: &Path,
    blob: &Path,
    layer: &str,
    budget: &mut Budget,
) -> Result<(), UnpackError> {
    let io = |context: String| {
        let layer = layer.to_string();
        move |source| UnpackError::Io {
            layer,
            context,
            source,
        }
    };
    let bad = |path: &Path, reason: &'static str| UnpackError::BadEntry {
        layer: layer.to_string(),
        path: path.display().to_string(),
        reason,
    };

    // Pass 1: the budget, and whiteouts, which apply to the layers below
    // this one only.
    let mut archive = tar::Archive::new(open_layer(blob, layer)?);
    let mut whiteouts = Vec::new();
    for entry in archive.entries().map_err(io("reading entries".into()))? {
        let entry = entry.map_err(io("reading an entry".into()))?;
        let declared = entry.header().size().unwrap_or(u64::MAX);
        budget.take(entry.size().max(declared), layer)?;
        let raw = entry
            .path()
            .map_err(io("reading an entry path".into()))?
            .into_owned();
        let Some(rel) = clean_path(&raw) else {
            return Err(bad(&raw, "escapes the root with '..'"));
        };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(target_name) = name.strip_prefix(".wh.") else {
            continue;
        };
        whiteouts.push((rel.clone(), target_name.to_string()));
    }
    for (rel, target_name) in whiteouts {
        let Some(target) = real_parent_path(root, &rel) else {
            continue;
        };
        let dir = target.parent().unwrap_or(root);
        if target_name == ".wh..opq" {
            // Opaque directory: hide everything the lower layers put there.
            if let Ok(children) = std::fs::read_dir(dir) {
                for child in children.flatten() {
                    remove_any(&child.path())
                        .map_err(io(format!("emptying opaque {}", rel.display())))?;
                }
            }
        } else if !target_name.is_empty() && target_name != "." && target_name != ".." {
            remove_any(&dir.join(target_name))
                .map_err(io(format!("applying whiteout {}", rel.display())))?;
        }
    }

    // Pass 2: the layer's own entries.
    let mut archive = tar::Archive::new(open_layer(blob, layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(io("reading entries".into()))? {
        let mut entry = entry.map_err(io("reading an entry".into()))?;
        let raw = entry
            .path()
            .map_err(io("reading an entry path".into()))?
            .into_owned();
        let Some(rel) = clean_path(&raw) else {
            return Err(bad(&raw, "escapes the root with '..'"));
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".wh."))
        {
            continue;
        }
        // A later layer may turn a file into a directory or back: replace
        // whatever is there unless both are directories.
        let is_dir = entry.header().entry_type().is_dir();
        if let Some(existing) = real_parent_path(root, &rel) {
            if let Ok(meta) = std::fs::symlink_metadata(&existing) {
                if !(is_dir && meta.is_dir()) {
                    remove_any(&existing).map_err(io(format!("replacing {}", rel.display())))?;
                }
            }
        }
        let unpacked = entry
            .unpack_in(root)
            .map_err(io(format!("unpacking {}", rel.display())))?;
        if !unpacked {
            return Err(bad(&raw, "resolves outside the image root"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn layer(dir: &Path, name: &str, entries: &[E], gzip: bool) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match e {
                E::File(p, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o640);
                    b.append_data(&mut h, p, *data).unwrap();
                }
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        let tar = b.into_inner().unwrap();
        let bytes = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).unwrap();
            enc.finish().unwrap()
        } else {
            tar
        };
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let l1 = layer(
            tmp.path(),
            "l1",
            &[
                E::Dir("etc"),
                E::File("etc/a", b"a"),
                E::File("etc/b", b"b"),
                E::Dir("var"),
                E::File("var/old", b"o"),
                E::File("f", b"file"),
            ],
            true,
        );
        let l2 = layer(
            tmp.path(),
            "l2",
            &[
                E::File("etc/.wh.a", b""),
                E::File("var/.wh..wh..opq", b""),
                E::File("var/new", b"n"),
                E::Dir("f"),
                E::File("f/inner", b"i"),
            ],
            false,
        );
        apply_layer(&root, &l1, "l1", &mut Budget::new(u64::MAX, u64::MAX)).unwrap();
        apply_layer(&root, &l2, "l2", &mut Budget::new(u64::MAX, u64::MAX)).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert!(!root.join("var/old").exists());
        assert_eq!(std::fs::read(root.join("var/new")).unwrap(), b"n");
        assert_eq!(std::fs::read(root.join("f/inner")).unwrap(), b"i");
        assert!(!root.join("etc/.wh.a").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(root.join("etc/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
    }

    #[test]
    fn symlink_escapes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let evil = layer(
            tmp.path(),
            "evil",
            &[
                E::Link("esc", outside.to_str().unwrap()),
                E::File("esc/.wh.victim", b""),
                E::File("esc/planted", b"x"),
            ],
            false,
        );
        let err = apply_layer(&root, &evil, "evil", &mut Budget::new(u64::MAX, u64::MAX));
        assert!(err.is_err(), "an entry through a symlink must fail");
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert!(!outside.join("planted").exists());
    }

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn zstd_layers_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let plain = layer(tmp.path(), "p", &[E::File("z", b"zstd!")], false);
        let z = zstd::encode_all(std::fs::read(&plain).unwrap().as_slice(), 1).unwrap();
        let zpath = tmp.path().join("z.tar.zst");
        std::fs::write(&zpath, z).unwrap();
        apply_layer(&root, &zpath, "z", &mut Budget::new(u64::MAX, u64::MAX)).unwrap();
        assert_eq!(std::fs::read(root.join("z")).unwrap(), b"zstd!");
    }

    #[test]
    fn garbage_layer_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let g = tmp.path().join("g");
        std::fs::write(&g, [0x1f, 0x8b, 0, 1, 2, 3]).unwrap();
        assert!(apply_layer(&root, &g, "g", &mut Budget::new(u64::MAX, u64::MAX)).is_err());
    }

    #[test]
    fn an_image_past_its_budget_stops_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer(
            dir.path(),
            "l",
            &[
                E::Dir("d"),
                E::File("d/a", &[1u8; 1000]),
                E::File("d/b", &[2u8; 1000]),
            ],
            true,
        );
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let e = apply_layer(&root, &l, "l", &mut Budget::new(u64::MAX, 2)).unwrap_err();
        assert!(e.to_string().contains("max_unpacked_entries (2)"), "{e}");
        let e = apply_layer(&root, &l, "l", &mut Budget::new(1500, 100)).unwrap_err();
        assert!(e.to_string().contains("max_unpacked_bytes (1500)"), "{e}");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        // The budget spans layers.
        let mut budget = Budget::new(3000, 100);
        apply_layer(&root, &l, "l", &mut budget).unwrap();
        assert_eq!((budget.bytes, budget.entries), (1000, 97));
        assert!(apply_layer(&root, &l, "l2", &mut budget).is_err());
    }
}
