//! CRI mounts of host paths, brought into the pod VM by copying.
//!
//! A pod VM shares no filesystem with the host, so each host file or
//! directory a container mounts (kubelet's /etc/hosts, the termination log,
//! configmaps, secrets, service-account tokens, emptyDirs) is copied into
//! the agent's shared directory at CreateContainer, and the container
//! bind-mounts the copy. The copy of one host path is shared by every
//! container of the pod that mounts it, so an emptyDir works between them.
//! Writes inside the guest do not reach the host, and host changes after
//! CreateContainer do not reach the guest.

use super::spec::SharedMount;
use crate::container::ContainerError;
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::CopyFileRequest;
use moat_proto::cri::Mount;
use sha2::Digest;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use tonic::transport::Channel;

/// Most bytes copied for one mount.
pub const MAX_MOUNT_BYTES: u64 = 64 << 20;
/// Most files and directories copied for one mount.
pub const MAX_MOUNT_ENTRIES: usize = 4096;
/// Largest single file (the agent's CopyFile limit).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

fn invalid(i: usize, field: &str, why: impl std::fmt::Display) -> ContainerError {
    ContainerError::Invalid(format!("config.mounts[{i}].{field}: {why}"))
}

/// The guest directory (relative to the shared dir) holding a host path's copy.
fn guest_rel(host_path: &str) -> String {
    let digest = sha2::Sha256::digest(host_path.as_bytes());
    format!("volumes/{}", &hex::encode(digest)[..16])
}

/// One thing to create in the guest.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir {
        rel: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        rel: String,
        data: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// What to copy for one host path, checked against the limits. Symlinks are
/// followed (configmap and secret volumes are symlink farms); kubelet's
/// `..data`-style bookkeeping names are skipped.
fn collect(i: usize, host: &Path, rel: &str) -> Result<Vec<Entry>, ContainerError> {
    let meta = std::fs::metadata(host)
        .map_err(|e| invalid(i, "host_path", format!("{}: {e}", host.display())))?;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut push_file = |out: &mut Vec<Entry>,
                         path: &Path,
                         rel: String,
                         m: &std::fs::Metadata|
     -> Result<(), ContainerError> {
        if m.len() > MAX_FILE_BYTES {
            return Err(invalid(
                i,
                "host_path",
                format!(
                    "{} is larger than {MAX_FILE_BYTES} bytes, too large to copy into the pod VM",
                    path.display()
                ),
            ));
        }
        bytes += m.len();
        if bytes > MAX_MOUNT_BYTES {
            return Err(invalid(
                i,
                "host_path",
                format!("more than {MAX_MOUNT_BYTES} bytes to copy into the pod VM"),
            ));
        }
        // Read through the descriptor with the limit: the file may have
        // been swapped for a FIFO or a device since it was listed.
        let data = crate::files::read_regular(path, MAX_FILE_BYTES)
            .map_err(|e| invalid(i, "host_path", format!("{}: {e}", path.display())))?;
        out.push(Entry::File {
            rel,
            data,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        });
        Ok(())
    };
    if meta.is_file() {
        push_file(&mut out, host, rel.to_string(), &meta)?;
        return Ok(out);
    }
    if !meta.is_dir() {
        return Err(invalid(
            i,
            "host_path",
            format!("{} is neither a file nor a directory", host.display()),
        ));
    }
    let mut stack = vec![(host.to_path_buf(), rel.to_string(), meta, 0usize)];
    while let Some((dir, rel, m, depth)) = stack.pop() {
        out.push(Entry::Dir {
            rel: rel.clone(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        });
        if out.len() > MAX_MOUNT_ENTRIES || depth > 32 {
            return Err(invalid(
                i,
                "host_path",
                format!(
                    "{} has too many entries to copy into the pod VM",
                    host.display()
                ),
            ));
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| invalid(i, "host_path", format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let Some(s) = name.to_str() else { continue };
            if s.starts_with("..") {
                continue;
            }
            let path = dir.join(&name);
            let Ok(m) = std::fs::metadata(&path) else {
                continue; // a dangling symlink
            };
            let child = format!("{rel}/{s}");
            if m.is_dir() {
                stack.push((path, child, m, depth + 1));
            } else if m.is_file() {
                push_file(&mut out, &path, child, &m)?;
            }
        }
    }
    Ok(out)
}

/// Copies every mount's host path into the guest and returns the bind
/// mounts for the spec. A missing host path is created as a directory, as
/// containerd does.
/// Checks a CRI mount's paths: both absolute, the host path without `.`
/// or `..` parts; image volumes are refused.
fn check(i: usize, m: &Mount) -> Result<(), ContainerError> {
    if !m.container_path.starts_with('/') {
        return Err(invalid(
            i,
            "container_path",
            format!("{:?} is not absolute", m.container_path),
        ));
    }
    if m.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
        return Err(invalid(i, "image", "image volumes are not supported"));
    }
    let plain = Path::new(&m.host_path)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !m.host_path.starts_with('/') || !plain {
        return Err(invalid(
            i,
            "host_path",
            format!(
                "{:?} is not an absolute path without `.` or `..` parts",
                m.host_path
            ),
        ));
    }
    Ok(())
}

/// A native pod's mounts: the host paths themselves, bind-mounted live
/// with the propagation each asks for (a missing host path is created as
/// a directory, as runc-based runtimes do).
pub fn host_binds(mounts: &[Mount]) -> Result<Vec<SharedMount>, ContainerError> {
    use moat_proto::cri::MountPropagation;
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        check(i, m)?;
        let host = Path::new(&m.host_path);
        if !host.exists() {
            std::fs::create_dir_all(host)
                .map_err(|e| invalid(i, "host_path", format!("creating it: {e}")))?;
        }
        let (shared, slave) = mount_propagation(host);
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => "rprivate",
            // As containerd: the host side must propagate, or the mode
            // would silently do nothing.
            Ok(MountPropagation::PropagationHostToContainer) if shared || slave => "rslave",
            Ok(MountPropagation::PropagationBidirectional) if shared => "rshared",
            Ok(MountPropagation::PropagationHostToContainer) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!(
                    "HOST_TO_CONTAINER needs {} on a shared or slave mount; it is on a private one",
                    m.host_path
                ),
                ))
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!(
                        "BIDIRECTIONAL needs {} on a shared mount; it is on a {} one",
                        m.host_path,
                        if slave { "slave" } else { "private" }
                    ),
                ))
            }
            Err(_) => {
                return Err(invalid(
                    i,
                    "propagation",
                    format!("unknown mode {}", m.propagation),
                ))
            }
        };
        out.push(SharedMount {
            container_path: m.container_path.clone(),
            guest_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation,
        });
    }
    Ok(out)
}

/// Whether the mount holding `path` is shared and whether it is a slave,
/// from this process's mountinfo (`shared:N`, `master:N`).
fn mount_propagation(path: &Path) -> (bool, bool) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, bool, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = point.replace("\\040", " ");
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let (mut shared, mut slave) = (false, false);
        for f in optional {
            shared |= f.starts_with("shared:");
            slave |= f.starts_with("master:");
        }
        // The last of equally deep mounts is the one on top.
        if best.is_none_or(|(len, _, _)| point.len() >= len) {
            best = Some((point.len(), shared, slave));
        }
    }
    best.map_or((false, false), |(_, s, m)| (s, m))
}

pub async fn share(
    agent: &mut AgentClient<Channel>,
    mounts: &[Mount],
) -> Result<Vec<SharedMount>, ContainerError> {
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        check(i, m)?;
        let host = Path::new(&m.host_path);
        if !host.exists() {
            std::fs::create_dir_all(host)
                .map_err(|e| invalid(i, "host_path", format!("creating it: {e}")))?;
        }
        let rel = guest_rel(&m.host_path);
        let host2 = host.to_path_buf();
        let rel2 = rel.clone();
        let entries = tokio::task::spawn_blocking(move || collect(i, &host2, &rel2))
            .await
            .map_err(|e| ContainerError::Failed(format!("copy task: {e}")))??;
        for e in entries {
            let req = match e {
                Entry::Dir {
                    rel,
                    mode,
                    uid,
                    gid,
                } => CopyFileRequest {
                    path: rel,
                    data: Vec::new(),
                    mode,
                    uid,
                    gid,
                    make_parents: true,
                    directory: true,
                },
                Entry::File {
                    rel,
                    data,
                    mode,
                    uid,
                    gid,
                } => CopyFileRequest {
                    path: rel,
                    data,
                    mode,
                    uid,
                    gid,
                    make_parents: true,
                    directory: false,
                },
            };
            agent.copy_file(req).await.map_err(|s| {
                ContainerError::Failed(format!(
                    "copying mount {} into the guest: {}",
                    m.host_path,
                    s.message()
                ))
            })?;
        }
        out.push(SharedMount {
            container_path: m.container_path.clone(),
            guest_path: format!("{}/{rel}", moat_proto::SHARED_DIR),
            propagation: "rprivate",
            readonly: m.readonly,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_walked_following_symlinks_and_skipping_bookkeeping() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("cm");
        std::fs::create_dir_all(d.join("..2024_01/sub")).unwrap();
        std::fs::write(d.join("..2024_01/key"), b"value").unwrap();
        std::fs::write(d.join("..2024_01/sub/deep"), b"x").unwrap();
        std::os::unix::fs::symlink("..2024_01", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", d.join("key")).unwrap();
        std::os::unix::fs::symlink("..data/sub", d.join("sub")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.join("dangling")).unwrap();
        let entries = collect(0, &d, "volumes/x").unwrap();
        let names: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Dir { rel, .. } => format!("d {rel}"),
                Entry::File { rel, data, .. } => {
                    format!("f {rel} {}", String::from_utf8_lossy(data))
                }
            })
            .collect();
        assert_eq!(
            names,
            [
                "d volumes/x",
                "f volumes/x/key value",
                "d volumes/x/sub",
                "f volumes/x/sub/deep x"
            ]
        );
    }

    #[test]
    fn a_file_is_one_entry_and_limits_hold() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("hosts");
        std::fs::write(&f, b"127.0.0.1 localhost\n").unwrap();
        assert_eq!(collect(0, &f, "volumes/h").unwrap().len(), 1);
        let big = t.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = collect(3, &big, "volumes/b").unwrap_err().to_string();
        assert!(e.contains("config.mounts[3].host_path"), "{e}");
        let e = collect(1, &t.path().join("missing"), "v")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.mounts[1]"), "{e}");
    }

    #[test]
    fn guest_dirs_are_per_host_path() {
        assert_eq!(guest_rel("/a"), guest_rel("/a"));
        assert_ne!(guest_rel("/a"), guest_rel("/b"));
        assert!(guest_rel("/a").starts_with("volumes/"));
    }
}
