//! The image store behind the CRI ImageService: pull, list, resolve, remove.
//!
//! On disk under `<state_dir>/images/`: `blobs/sha256/<hex>` (layers, by
//! digest), `blocks/<config hex>.erofs` (one block image per image, shared by
//! every pod), `tmp/` (work in progress, emptied at start). Image records
//! live in the state store's `images` table, keyed by image id (the config
//! digest, as containerd's CRI uses).

use super::hosts::registry_hosts;
use super::pull::{parse_reference, PullAuth, PullError, Puller};
use super::{block, unpack};
use crate::store::{Store, StoreError, IMAGES};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed (CRI InvalidArgument).
    #[error("{0}")]
    BadReference(PullError),
    /// The registry could not provide the image.
    #[error("{0}")]
    Pull(PullError),
    /// No such image.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The image was fetched but could not be prepared.
    #[error("preparing image {image}: {reason}")]
    Prepare {
        /// The image.
        image: String,
        /// What failed.
        reason: String,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O failed.
    #[error("image store: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<PullError> for ImageError {
    fn from(e: PullError) -> Self {
        match e {
            PullError::BadReference { .. } => ImageError::BadReference(e),
            other => ImageError::Pull(other),
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// One image as the store knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Image id: the digest of its config (`sha256:…`).
    pub id: String,
    /// Normalized `name:tag` references pointing at it.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` references pointing at it.
    pub repo_digests: Vec<String>,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Bytes of the layer blobs as pulled.
    pub size: u64,
    /// The image config JSON, as the registry served it.
    pub config: String,
    /// The erofs block image pods attach.
    pub block_image: PathBuf,
    /// Its size in bytes.
    pub block_size: u64,
    /// The image's `/etc/passwd` (empty if it has none), to resolve user
    /// names at CreateContainer.
    #[serde(default)]
    pub passwd: String,
    /// The image's `/etc/group` (empty if it has none).
    #[serde(default)]
    pub group: String,
}

impl ImageRecord {
    /// The parsed image config (user, env, entrypoint, cmd, …).
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

/// Largest account file (`/etc/passwd`, `/etc/group`) kept from an image.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// Reads an account file of an unpacked rootfs: a regular file of
/// bounded size reached without a symlink (an image's `etc -> /etc` must
/// not lead to the host's accounts), else "".
fn account_file(rootfs: &Path, rel: &str) -> String {
    crate::files::read_in_root(rootfs, Path::new(rel), MAX_ACCOUNT_FILE)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// The image store.
pub struct ImageService {
    root: PathBuf,
    store: Store,
    insecure_registries: Vec<String>,
    /// containerd-style `hosts.toml` directory (mirrors, per-registry TLS),
    /// read at every pull.
    registry_config_dir: Option<PathBuf>,
    /// What a registry may send.
    limits: crate::config::ImageLimits,
    /// A lock per reference, per image and per blob: two pulls of one
    /// thing wait for each other, pulls of different images do not.
    locks: crate::keyed_locks::KeyedLocks,
}

/// A file removed when dropped, unless it was moved away first.
struct Leftover(PathBuf);

/// The block image a pull is building: if the pull is dropped before it
/// records the image (stopped by its deadline), the unpack and mkfs are
/// told to stop and whatever they built is removed.
struct Building {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    block: PathBuf,
    recorded: bool,
}

impl Drop for Building {
    fn drop(&mut self) {
        if !self.recorded {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = std::fs::remove_file(&self.block);
        }
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl ImageService {
    /// Opens the store under `<state_dir>/images`, clearing leftovers of
    /// interrupted pulls.
    pub fn open(
        state_dir: &Path,
        store: Store,
        insecure_registries: Vec<String>,
    ) -> Result<Self, ImageError> {
        let root = state_dir.join("images");
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("clearing images/tmp"))?;
        }
        for d in ["blobs/sha256", "blocks", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io_err(format!("creating images/{d}")))?;
        }
        // Unpacked trees keep the image's modes (the guest must see them),
        // setuid binaries included: no one but moatd may reach them.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("making images/ private"))?;
        // What no record names: block images of a crash or a failed record
        // after mkfs (and their temporary files), and layers of pulls that
        // failed later (kept until now so that a retry need not download
        // them again).
        let records: Vec<ImageRecord> = store.values(IMAGES)?;
        let blocks: Vec<PathBuf> = records.iter().map(|r| r.block_image.clone()).collect();
        let layers: Vec<PathBuf> = records
            .iter()
            .flat_map(|r| r.layers.iter())
            .filter_map(|d| hex_of(d).map(|h| root.join("blobs/sha256").join(h)))
            .collect();
        for (dir, known) in [("blocks", &blocks), ("blobs/sha256", &layers)] {
            for entry in std::fs::read_dir(root.join(dir))
                .map_err(io_err(format!("reading images/{dir}")))?
                .flatten()
            {
                if !known.contains(&entry.path()) {
                    tracing::info!(file = %entry.path().display(), "removing a file no image record names");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            root,
            store,
            insecure_registries,
            registry_config_dir: None,
            limits: crate::config::ImageLimits::default(),
            locks: Default::default(),
        })
    }

    /// Holds registries to `limits`.
    pub fn with_limits(mut self, limits: crate::config::ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads registry mirrors and per-registry settings from `dir`
    /// (containerd's `certs.d` layout with `hosts.toml` files) at each pull.
    pub fn with_registry_config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.registry_config_dir = Some(dir.into());
        self
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        hex_of(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    /// Pulls `image` (or finds it already pulled), prepares its block image
    /// and records it, within `image_limits.pull_timeout_secs`. Returns the
    /// record.
    pub async fn pull(&self, image: &str, auth: &PullAuth) -> Result<ImageRecord, ImageError> {
        let reference = parse_reference(image)?;
        let whole = reference.whole();
        let limit = Duration::from_secs(self.limits.pull_timeout_secs);
        match tokio::time::timeout(limit, self.pull_now(reference, auth)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(image = %whole, "pull stopped after {limit:?}");
                Err(ImageError::Prepare {
                    image: whole,
                    reason: format!(
                        "the pull took longer than image_limits.pull_timeout_secs ({} s) and was stopped",
                        limit.as_secs()
                    ),
                })
            }
        }
    }

    async fn pull_now(
        &self,
        reference: oci_client::Reference,
        auth: &PullAuth,
    ) -> Result<ImageRecord, ImageError> {
        let whole = reference.whole();
        let _reference_lock = self.locks.lock(&format!("ref:{whole}")).await;
        tracing::info!(image = %whole, "pulling");
        let started = std::time::Instant::now();
        let hosts = registry_hosts(
            self.registry_config_dir.as_deref(),
            reference.registry(),
            &self.insecure_registries,
        )
        .map_err(|source| PullError::HostsConfig {
            reference: whole.clone(),
            source,
        })?;
        if let Some(dir) = &hosts.dir {
            let urls: Vec<String> = hosts.hosts.iter().map(|h| h.url()).collect();
            tracing::info!(image = %whole, dir = %dir.display(), hosts = ?urls, "registry hosts configured");
        }
        let puller = Puller::new(reference.clone(), auth, &hosts)?;
        let resolved = puller.resolve(&self.limits).await?;
        let id = resolved.manifest.config.digest.clone();
        if hex_of(&id).is_none() {
            return Err(ImageError::Prepare {
                image: whole,
                reason: format!("unsupported config digest {id}"),
            });
        }
        let name = format!("{}/{}", reference.registry(), reference.repository());
        let repo_digest = format!(
            "{name}@{}",
            resolved
                .index_digest
                .as_deref()
                .unwrap_or(&resolved.manifest_digest)
        );
        let repo_tag = reference.tag().map(|t| format!("{name}:{t}"));

        let _image_lock = self.locks.lock(&format!("image:{id}")).await;
        let mut record = match self.store.get::<ImageRecord>(IMAGES, &id)? {
            Some(r) if r.block_image.exists() => r,
            _ => self.prepare(&puller, &resolved, &id, &whole).await?,
        };
        if let Some(tag) = &repo_tag {
            self.move_tag(tag, &id)?;
            if !record.repo_tags.contains(tag) {
                record.repo_tags.push(tag.clone());
            }
        }
        if !record.repo_digests.contains(&repo_digest) {
            record.repo_digests.push(repo_digest);
        }
        self.store.put(IMAGES, &id, &record)?;
        tracing::info!(image = %whole, %id, ms = started.elapsed().as_millis() as u64, "pulled");
        Ok(record)
    }

    /// Removes `tag` from every image other than `keep`.
    fn move_tag(&self, tag: &str, keep: &str) -> Result<(), ImageError> {
        for (id, mut r) in self.store.list::<ImageRecord>(IMAGES)? {
            if id != keep && r.repo_tags.iter().any(|t| t == tag) {
                r.repo_tags.retain(|t| t != tag);
                self.store.put(IMAGES, &id, &r)?;
            }
        }
        Ok(())
    }

    async fn prepare(
        &self,
        puller: &Puller,
        resolved: &super::resolve::ResolvedImage,
        id: &str,
        image: &str,
    ) -> Result<ImageRecord, ImageError> {
        let mut layers = Vec::new();
        let mut size = 0u64;
        for layer in &resolved.manifest.layers {
            let mt = layer.media_type.as_str();
            let supported = mt.contains("tar") && !mt.contains("nondistributable") || mt.is_empty();
            if !supported {
                return Err(ImageError::Prepare {
                    image: image.into(),
                    reason: format!("unsupported layer media type {mt}"),
                });
            }
            let Some(path) = self.blob_path(&layer.digest) else {
                return Err(ImageError::Prepare {
                    image: image.into(),
                    reason: format!("unsupported layer digest {}", layer.digest),
                });
            };
            let _blob_lock = self.locks.lock(&format!("blob:{}", layer.digest)).await;
            if !path.exists() {
                // Removed unless stored, even when the pull is stopped.
                let tmp = Leftover(
                    self.root
                        .join("tmp")
                        .join(format!("blob-{}", hex_of(&layer.digest).unwrap_or("x"))),
                );
                tracing::info!(image, layer = %layer.digest, bytes = layer.size, "downloading layer");
                let (bytes, host) = puller
                    .fetch_blob(layer, &tmp.0, self.limits.max_layer_bytes)
                    .await?;
                tracing::info!(image, layer = %layer.digest, bytes, %host, "layer downloaded");
                std::fs::rename(&tmp.0, &path).map_err(io_err("storing a layer"))?;
            }
            size += std::fs::metadata(&path)
                .map_err(io_err("reading a layer"))?
                .len();
            layers.push(layer.digest.clone());
        }
        let hex = hex_of(id).unwrap_or("invalid").to_string();
        let block_image = self.root.join("blocks").join(format!("{hex}.erofs"));
        let mut building = Building {
            stop: Default::default(),
            block: block_image.clone(),
            recorded: false,
        };
        let stop = building.stop.clone();
        // A tree of its own: a stopped pull's task may still be ending.
        let rootfs = self.root.join("tmp").join(format!(
            "rootfs-{hex}-{}",
            crate::ids::new_id().unwrap_or_default()
        ));
        let blobs: Vec<(PathBuf, String)> = layers
            .iter()
            .filter_map(|d| self.blob_path(d).map(|p| (p, d.clone())))
            .collect();
        let (rootfs2, block2, image2) = (rootfs.clone(), block_image.clone(), image.to_string());
        let limits = self.limits;
        let unpack_and_build = move || -> Result<(u64, String, String), ImageError> {
            let mut budget =
                unpack::Budget::new(limits.max_unpacked_bytes, limits.max_unpacked_entries);
            let prep = |reason: String| ImageError::Prepare {
                image: image2.clone(),
                reason,
            };
            std::fs::create_dir_all(&rootfs2).map_err(io_err("creating the unpack directory"))?;
            for (i, (path, digest)) in blobs.iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(prep(block::BlockError::Stopped.to_string()));
                }
                tracing::info!(image = %image2, layer = %digest, n = i + 1, of = blobs.len(), "applying layer");
                unpack::apply_layer(&rootfs2, path, digest, &mut budget)
                    .map_err(|e| prep(e.to_string()))?;
            }
            let passwd = account_file(&rootfs2, "etc/passwd");
            let group = account_file(&rootfs2, "etc/group");
            tracing::info!(image = %image2, "building erofs block image");
            let size =
                block::build_erofs(&rootfs2, &block2, &stop).map_err(|e| prep(e.to_string()))?;
            // Stopped while mkfs ended: the image would have no record.
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&block2);
                return Err(prep(block::BlockError::Stopped.to_string()));
            }
            Ok((size, passwd, group))
        };
        // The tree goes with the task that made it, so a pull stopped
        // meanwhile leaves none behind.
        let built = tokio::task::spawn_blocking(move || {
            let r = unpack_and_build();
            let _ = std::fs::remove_dir_all(&rootfs);
            r
        })
        .await
        .map_err(|e| ImageError::Prepare {
            image: image.into(),
            reason: format!("unpack task: {e}"),
        });
        let (block_size, passwd, group) = built??;
        // From here the caller records the image before it can be stopped
        // (no await in between).
        building.recorded = true;
        Ok(ImageRecord {
            id: id.to_string(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            layers,
            size,
            config: resolved.config.clone(),
            block_image,
            block_size,
            passwd,
            group,
        })
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.store.values(IMAGES)?)
    }

    /// Finds an image by id (`sha256:…` or bare hex), by `name:tag` (short
    /// names normalized), or by `name@digest`.
    pub fn resolve(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let image = image.trim();
        if image.is_empty() {
            return Ok(None);
        }
        let as_id = if image.len() == 64 {
            format!("sha256:{image}")
        } else {
            image.to_string()
        };
        if let Some(r) = self.store.get::<ImageRecord>(IMAGES, &as_id)? {
            return Ok(Some(r));
        }
        let normalized = parse_reference(image).ok().map(|r| {
            let name = format!("{}/{}", r.registry(), r.repository());
            match (r.digest(), r.tag()) {
                (Some(d), _) => format!("{name}@{d}"),
                (None, Some(t)) => format!("{name}:{t}"),
                (None, None) => format!("{name}:latest"),
            }
        });
        Ok(self.list()?.into_iter().find(|r| {
            normalized
                .as_ref()
                .is_some_and(|n| r.repo_tags.contains(n) || r.repo_digests.contains(n))
        }))
    }

    /// Removes an image and the layers no other image uses. Removing an
    /// unknown image is not an error (returns false), as kubelet expects.
    pub fn remove(&self, image: &str) -> Result<bool, ImageError> {
        let Some(record) = self.resolve(image)? else {
            return Ok(false);
        };
        self.store.delete(IMAGES, &record.id)?;
        if let Err(e) = std::fs::remove_file(&record.block_image) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io_err("removing the block image")(e));
            }
        }
        let still_used: std::collections::HashSet<String> =
            self.list()?.into_iter().flat_map(|r| r.layers).collect();
        for layer in record.layers.iter().filter(|l| !still_used.contains(*l)) {
            if let Some(p) = self.blob_path(layer) {
                let _ = std::fs::remove_file(p);
            }
        }
        tracing::info!(id = %record.id, "removed image");
        Ok(true)
    }

    /// Bytes and inodes the image store uses (for ImageFsInfo).
    pub fn fs_usage(&self) -> (u64, u64) {
        fn walk(p: &Path, acc: &mut (u64, u64)) {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(m) = e.metadata() else { continue };
                acc.1 += 1;
                if m.is_dir() {
                    walk(&e.path(), acc);
                } else {
                    use std::os::unix::fs::MetadataExt;
                    acc.0 += m.blocks() * 512;
                }
            }
        }
        let mut acc = (0, 0);
        walk(&self.root, &mut acc);
        acc
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unpacked_images_are_out_of_other_users_reach() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ImageService::open(dir.path(), store, Vec::new()).unwrap();
        let mode = std::fs::metadata(dir.path().join("images"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// Block images and layers no record names (a crash after mkfs, a
    /// pull that failed after its downloads) are removed when the store
    /// opens; recorded ones stay.
    #[test]
    fn files_no_record_names_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ImageService::open(dir.path(), store.clone(), Vec::new()).unwrap();
        let blocks = dir.path().join("images/blocks");
        let kept = blocks.join("kept.erofs");
        for f in ["kept.erofs", "orphan.erofs", "orphan.erofs.3.tmp"] {
            std::fs::write(blocks.join(f), b"x").unwrap();
        }
        let blobs = dir.path().join("images/blobs/sha256");
        let (layer, orphan) = ("a".repeat(64), "b".repeat(64));
        for f in [&layer, &orphan] {
            std::fs::write(blobs.join(f), b"x").unwrap();
        }
        let rec = ImageRecord {
            id: "sha256:kept".into(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            layers: vec![format!("sha256:{layer}")],
            size: 0,
            config: String::new(),
            block_image: kept.clone(),
            block_size: 1,
            passwd: String::new(),
            group: String::new(),
        };
        store.put(IMAGES, &rec.id, &rec).unwrap();
        ImageService::open(dir.path(), store, Vec::new()).unwrap();
        let left: Vec<_> = std::fs::read_dir(&blocks)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![kept]);
        let left: Vec<_> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(&layer)]);
    }

    /// A pull dropped before it records its image (its deadline passed)
    /// tells the build to stop and removes what it built.
    #[test]
    fn a_stopped_build_leaves_no_block_image() {
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join("x.erofs");
        std::fs::write(&block, b"built").unwrap();
        let building = Building {
            stop: Default::default(),
            block: block.clone(),
            recorded: false,
        };
        let stop = building.stop.clone();
        drop(building);
        assert!(stop.load(std::sync::atomic::Ordering::Relaxed));
        assert!(!block.exists());
        std::fs::write(&block, b"built").unwrap();
        let mut building = Building {
            stop: Default::default(),
            block: block.clone(),
            recorded: false,
        };
        building.recorded = true;
        drop(building);
        assert!(block.exists(), "a recorded image was removed");
    }

    #[test]
    fn account_files_come_from_the_image_only() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        assert_eq!(account_file(dir.path(), "etc/passwd"), "");
    }

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    /// A registry that trickles one image's layer holds up that pull only;
    /// the pull is stopped at its deadline and leaves nothing behind.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_trickling_pull_holds_up_only_itself_and_leaves_nothing() {
        use super::super::test_registry::{digest_of, manifest, serve};
        let config = |who: &str| {
            format!(r#"{{"architecture":"amd64","os":"linux","author":"{who}","rootfs":{{"type":"layers","diff_ids":[]}}}}"#)
                .into_bytes()
        };
        let (fast_cfg, slow_cfg) = (config("fast"), config("slow"));
        let (fast_layer, slow_layer) = (tar_with("hello", b"hi"), tar_with("slow", b"zz"));
        let files = vec![
            (
                "/v2/fast/manifests/latest".to_string(),
                manifest(&fast_cfg, &[&fast_layer]),
            ),
            (
                format!("/v2/fast/blobs/{}", digest_of(&fast_cfg)),
                fast_cfg.clone(),
            ),
            (
                format!("/v2/fast/blobs/{}", digest_of(&fast_layer)),
                fast_layer.clone(),
            ),
            (
                "/v2/slow/manifests/latest".to_string(),
                manifest(&slow_cfg, &[&slow_layer]),
            ),
            (
                format!("/v2/slow/blobs/{}", digest_of(&slow_cfg)),
                slow_cfg.clone(),
            ),
            (
                format!("/v2/slow/blobs/{}", digest_of(&slow_layer)),
                slow_layer.clone(),
            ),
        ];
        let slow_path = format!("/v2/slow/blobs/{}", digest_of(&slow_layer));
        let addr = serve(files, Some(slow_path)).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let images = std::sync::Arc::new(
            ImageService::open(dir.path(), store, Vec::new())
                .unwrap()
                .with_limits(crate::config::ImageLimits {
                    pull_timeout_secs: 5,
                    ..Default::default()
                }),
        );
        let slow = {
            let (images, addr) = (images.clone(), addr.clone());
            tokio::spawn(async move {
                images
                    .pull(&format!("{addr}/slow:latest"), &PullAuth::default())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        let fast = images
            .pull(&format!("{addr}/fast:latest"), &PullAuth::default())
            .await
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert_eq!(fast.id, digest_of(&fast_cfg));
        let e = slow.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("pull_timeout_secs"), "{e}");
        let ids: Vec<String> = images.list().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![fast.id]);
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("images/tmp"))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "left in images/tmp: {tmp:?}");
    }
}
