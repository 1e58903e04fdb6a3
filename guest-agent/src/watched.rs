//! Configmap-shaped volumes, mirrored in the guest so that inotify works.
//!
//! kubelet writes configmap, secret, projected and downwardAPI volumes with
//! its atomic writer: the data in a directory `..<timestamp>`, a `..data`
//! symlink to it replaced by one rename, and each key a symlink through
//! `..data`. Over virtio-fs a change on the host reaches a reader in the
//! guest (names and attributes revalidate after a second), but inotify in
//! the guest sees nothing: the guest's kernel made no change. So a
//! read-only mount of such a directory is served to the container from a
//! copy in guest memory that the agent keeps in step ([`keep_in_step`]):
//! every [`POLL`] it reads the source's `..data`, and when that moved it
//! repeats kubelet's steps in the copy (the new data directory, `..data`
//! swapped by a rename, the key links, the old directory removed). A
//! watcher in the container sees the events it would see on a node.
//!
//! A volume of more than [`MAX_BYTES`] or [`MAX_ENTRIES`] is bound live
//! instead; so is any other volume, writable or not shaped so.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the mirrors are compared with their sources.
pub const POLL: Duration = Duration::from_millis(500);
/// Largest volume mirrored, in bytes of file data.
pub const MAX_BYTES: u64 = 8 << 20;
/// Most entries (files, directories, links) in a mirrored volume.
pub const MAX_ENTRIES: usize = 1024;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Held by whatever changes the mirrors: made at CreateContainer, synced by
/// [`keep_in_step`], removed at RemoveContainer.
static MIRRORS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MIRRORS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mirrors made for one container while it is created: removed again
/// when dropped unless [`Mirrored::keep`] was called.
pub struct Mirrored {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Mirrored {
    /// The container was created: its mirrors stay until [`forget`].
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Mirrored {
    fn drop(&mut self) {
        if !self.keep {
            for p in &self.paths {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

/// Points each read-only bind mount in `mounts` whose source is a volume
/// under `volumes` with kubelet's layout at a mirror of it under `watched`
/// (same name), made now.
pub fn mirror_mounts(
    mounts: &mut [oci_spec::runtime::Mount],
    volumes: &Path,
    watched: &Path,
) -> Mirrored {
    let _lock = lock();
    let mut made = Mirrored {
        paths: Vec::new(),
        keep: false,
    };
    for m in mounts.iter_mut() {
        let readonly = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "ro"));
        let Some(src) = m.source().clone() else {
            continue;
        };
        let name = match src.strip_prefix(volumes) {
            Ok(rel) if rel.components().count() == 1 => rel.to_path_buf(),
            _ => continue,
        };
        if !readonly || generation(&src).is_none() || !top_level_is_links(&src) {
            continue;
        }
        let dst = watched.join(&name);
        let _ = std::fs::remove_dir_all(&dst);
        let made_now = std::fs::create_dir_all(&dst)
            .and_then(|()| own(&dst, &std::fs::metadata(&src)?))
            .and_then(|()| sync(&src, &dst));
        match made_now {
            Ok(_) => {
                made.paths.push(dst.clone());
                m.set_source(Some(dst));
            }
            Err(e) => {
                tracing::warn!(volume = %name.display(), "not mirrored, bound live: {e}");
                let _ = std::fs::remove_dir_all(&dst);
            }
        }
    }
    made
}

/// Removes the mirrors of container `id` (named `<id>-<n>`).
pub fn forget(watched: &Path, id: &str) {
    let _lock = lock();
    let prefix = format!("{id}-");
    let Ok(entries) = std::fs::read_dir(watched) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Brings every mirror under `watched` in step with its source under
/// `volumes`, every [`POLL`], for ever.
pub async fn keep_in_step(volumes: PathBuf, watched: PathBuf) {
    loop {
        tokio::time::sleep(POLL).await;
        let (v, w) = (volumes.clone(), watched.clone());
        let _ = tokio::task::spawn_blocking(move || sync_all(&v, &w)).await;
    }
}

/// One pass of [`keep_in_step`].
pub fn sync_all(volumes: &Path, watched: &Path) {
    let _lock = lock();
    let Ok(entries) = std::fs::read_dir(watched) else {
        return;
    };
    for e in entries.flatten() {
        let src = volumes.join(e.file_name());
        match sync(&src, &e.path()) {
            Ok(true) => tracing::info!(volume = %e.file_name().to_string_lossy(), "volume updated"),
            Ok(false) => {}
            // A container being removed, or a source mid-update: next pass.
            Err(e) => tracing::debug!("mirror of {}: {e}", src.display()),
        }
    }
}

/// The data directory `dir/..data` names, when it is one `..`-named
/// directory beside it.
fn generation(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let name = target.to_str()?.to_string();
    let plain = name.starts_with("..") && name != DATA && !name.contains('/');
    let is_dir = std::fs::symlink_metadata(dir.join(&name)).ok()?.is_dir();
    (plain && is_dir).then_some(name)
}

/// Whether everything at the top of `dir` but `..` entries is a symlink
/// (the keys, as kubelet makes them).
fn top_level_is_links(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|e| {
        e.file_name().to_string_lossy().starts_with("..")
            || e.file_type().is_ok_and(|t| t.is_symlink())
    })
}

/// Makes `dst` a copy of `src` as kubelet's atomic writer would have
/// updated it; returns whether anything changed.
fn sync(src: &Path, dst: &Path) -> io::Result<bool> {
    let gen = generation(src).ok_or_else(|| io::Error::other("no ..data directory"))?;
    let current = std::fs::read_link(dst.join(DATA)).ok();
    if current.as_deref() == Some(Path::new(&gen)) {
        return Ok(false);
    }
    // The new data, then the swap: one rename, as kubelet's.
    let data = dst.join(&gen);
    let _ = std::fs::remove_dir_all(&data);
    let mut budget = Budget {
        bytes: MAX_BYTES,
        entries: MAX_ENTRIES,
    };
    if let Err(e) = copy_tree(&src.join(&gen), &data, &mut budget) {
        let _ = std::fs::remove_dir_all(&data);
        return Err(e);
    }
    replace_link(Path::new(&gen), &dst.join(DATA_TMP), &dst.join(DATA))?;
    // The keys' links: new ones made, changed ones replaced, gone ones
    // removed.
    let mut keep = Vec::new();
    for e in std::fs::read_dir(src)?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("..") || !e.file_type()?.is_symlink() {
            continue;
        }
        let target = std::fs::read_link(e.path())?;
        let at = dst.join(&name);
        if std::fs::read_link(&at).ok().as_ref() != Some(&target) {
            let tmp = dst.join(format!("..link_tmp_{}", name.to_string_lossy()));
            replace_link(&target, &tmp, &at)?;
        }
        keep.push(name);
    }
    for e in std::fs::read_dir(dst)?.flatten() {
        let name = e.file_name();
        let dotted = name.to_string_lossy().starts_with("..");
        if dotted && name != DATA && name.to_string_lossy() != gen {
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        } else if !dotted && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(true)
}

/// Makes `at` a symlink to `target` by a rename from `tmp`.
fn replace_link(target: &Path, tmp: &Path, at: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(tmp);
    std::os::unix::fs::symlink(target, tmp)?;
    std::fs::rename(tmp, at)
}

/// What a copy may still take.
struct Budget {
    bytes: u64,
    entries: usize,
}

/// Copies the directory `src` to `dst` (which must not exist): files,
/// directories and symlinks with their modes (set-id bits dropped) and
/// owners; nothing is followed, and other kinds are skipped.
fn copy_tree(src: &Path, dst: &Path, budget: &mut Budget) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    std::fs::create_dir(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        budget.entries = budget
            .entries
            .checked_sub(1)
            .ok_or_else(|| io::Error::other(format!("more than {MAX_ENTRIES} entries")))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let m = std::fs::symlink_metadata(&from)?;
        if m.is_dir() {
            copy_tree(&from, &to, budget)?;
        } else if m.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            let _ = std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()));
        } else if m.is_file() {
            budget.bytes = budget
                .bytes
                .checked_sub(m.len())
                .ok_or_else(|| io::Error::other(format!("more than {MAX_BYTES} bytes")))?;
            let mut input = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&from)?;
            let mut output = std::fs::File::create(&to)?;
            io::copy(&mut input, &mut output)?;
            own(&to, &m)?;
        }
    }
    own(dst, &meta)
}

/// Gives `path` the owner and mode (without set-id bits) of `like`.
fn own(path: &Path, like: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(like.uid()), Some(like.gid()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(like.mode() & 0o1777))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubelet's layout at `dir`, generation `gen`, with `keys`.
    fn write(dir: &Path, gen: &str, keys: &[(&str, &str)]) {
        let data = dir.join(gen);
        std::fs::create_dir_all(&data).unwrap();
        for (k, v) in keys {
            std::fs::write(data.join(k), v).unwrap();
        }
        replace_link(Path::new(gen), &dir.join(DATA_TMP), &dir.join(DATA)).unwrap();
        for (k, _) in keys {
            let _ = std::os::unix::fs::symlink(format!("{DATA}/{k}"), dir.join(k));
        }
    }

    fn mount(source: &Path, ro: bool) -> oci_spec::runtime::Mount {
        let mut opts = vec!["rbind".to_string()];
        if ro {
            opts.push("ro".into());
        }
        oci_spec::runtime::MountBuilder::default()
            .destination("/config")
            .typ("bind")
            .source(source)
            .options(opts)
            .build()
            .unwrap()
    }

    #[test]
    fn a_configmap_is_mirrored_and_follows_its_swaps() {
        let t = tempfile::tempdir().unwrap();
        let (volumes, watched) = (t.path().join("volumes"), t.path().join("watched"));
        let src = volumes.join("c1-0");
        std::fs::create_dir_all(&src).unwrap();
        write(&src, "..2026_1", &[("a", "1"), ("b", "2")]);
        let plain = volumes.join("c1-1");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("file"), "x").unwrap();
        let mut mounts = vec![mount(&src, true), mount(&src, false), mount(&plain, true)];
        let made = mirror_mounts(&mut mounts, &volumes, &watched);
        made.keep();
        let dst = watched.join("c1-0");
        assert_eq!(mounts[0].source().as_deref(), Some(dst.as_path()));
        // Writable, or not kubelet's layout: bound live.
        assert_eq!(mounts[1].source().as_deref(), Some(src.as_path()));
        assert_eq!(mounts[2].source().as_deref(), Some(plain.as_path()));
        assert_eq!(std::fs::read_to_string(dst.join("a")).unwrap(), "1");

        // The host swaps: a key changes, one goes, one comes. A watcher of
        // the mirror sees `..data` moved in, as on a node.
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        inotify
            .add_watch(&dst, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
            .unwrap();
        write(&src, "..2026_2", &[("a", "10"), ("c", "3")]);
        std::fs::remove_file(src.join("b")).unwrap();
        std::fs::remove_dir_all(src.join("..2026_1")).unwrap();
        sync_all(&volumes, &watched);
        let events = inotify.read_events().unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_MOVED_TO)
                    && e.name.as_deref() == Some(std::ffi::OsStr::new(DATA))),
            "{events:?}"
        );
        assert_eq!(std::fs::read_to_string(dst.join("a")).unwrap(), "10");
        assert_eq!(std::fs::read_to_string(dst.join("c")).unwrap(), "3");
        assert!(!dst.join("b").exists());
        assert!(!dst.join("..2026_1").exists());
        assert!(!dst.join(DATA_TMP).exists());
        // Nothing new: nothing done.
        assert!(!sync(&src, &dst).unwrap());

        forget(&watched, "c1");
        assert!(!dst.exists());
    }

    #[test]
    fn a_volume_over_the_limits_is_bound_live() {
        let t = tempfile::tempdir().unwrap();
        let (volumes, watched) = (t.path().join("volumes"), t.path().join("watched"));
        let src = volumes.join("c2-0");
        std::fs::create_dir_all(&src).unwrap();
        write(&src, "..2026_1", &[("a", "1")]);
        let big = std::fs::File::create(src.join("..2026_1/big")).unwrap();
        big.set_len(MAX_BYTES + 1).unwrap();
        let mut mounts = vec![mount(&src, true)];
        drop(mirror_mounts(&mut mounts, &volumes, &watched));
        assert_eq!(mounts[0].source().as_deref(), Some(src.as_path()));
        assert!(!watched.join("c2-0").exists());
    }

    #[test]
    fn a_mirror_dropped_before_keep_is_removed() {
        let t = tempfile::tempdir().unwrap();
        let (volumes, watched) = (t.path().join("volumes"), t.path().join("watched"));
        let src = volumes.join("c3-0");
        std::fs::create_dir_all(&src).unwrap();
        write(&src, "..2026_1", &[("a", "1")]);
        let mut mounts = vec![mount(&src, true)];
        drop(mirror_mounts(&mut mounts, &volumes, &watched));
        assert!(!watched.join("c3-0").exists());
    }
}
