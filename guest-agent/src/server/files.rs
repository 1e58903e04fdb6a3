//! CopyFile: configmaps, secrets, tokens into the shared directory.

use super::sandbox::write_atomic;
use super::validate::invalid;
use super::R;
use crate::paths::clean_relative;
use crate::state::State;
use moat_proto::agent::*;
use std::path::{Path, PathBuf};
use tonic::{Response, Status};

/// Largest file accepted.
const MAX_FILE: usize = 8 << 20;

pub(super) async fn copy_file(state: &State, req: CopyFileRequest) -> R<CopyFileResponse> {
    let rel = clean_relative("path", &req.path).map_err(invalid)?;
    if req.data.len() > MAX_FILE {
        return Err(invalid(format!("data: larger than {MAX_FILE} bytes")));
    }
    if req.mode > 0o7777 {
        return Err(invalid("mode: only permission bits (<= 07777) are allowed"));
    }
    if req.directory && !req.data.is_empty() {
        return Err(invalid("data: must be empty when directory is set"));
    }
    let mode = match (req.mode, req.directory) {
        (0, true) => 0o755,
        (0, false) => 0o644,
        (m, _) => m,
    };
    let kind = if req.directory {
        Kind::Directory
    } else {
        Kind::File
    };
    let base = state.config.shared_dir();
    let target = tokio::task::spawn_blocking(move || {
        write_in(
            &base,
            &rel,
            &req.data,
            mode,
            req.uid,
            req.gid,
            req.make_parents,
            kind,
        )
    })
    .await
    .map_err(|e| Status::internal(format!("copy task: {e}")))??;
    Ok(Response::new(CopyFileResponse {
        guest_path: target.display().to_string(),
    }))
}

/// What CopyFile makes at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A file with the request's data.
    File,
    /// A directory.
    Directory,
}

/// Writes `data` at `base/rel` (or makes a directory there), refusing to
/// follow symlinks on the way.
#[allow(clippy::too_many_arguments)]
fn write_in(
    base: &Path,
    rel: &Path,
    data: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
    make_parents: bool,
    kind: Kind,
) -> Result<PathBuf, Status> {
    std::fs::create_dir_all(base).map_err(|e| Status::internal(format!("shared dir: {e}")))?;
    let mut dir = base.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    let (last, parents) = comps
        .split_last()
        .ok_or_else(|| invalid("path: must name a file"))?;
    for c in parents {
        dir.push(c.as_os_str());
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "path: {} exists and is not a directory",
                    dir.display()
                )))
            }
            Err(_) if make_parents => std::fs::create_dir(&dir)
                .map_err(|e| Status::internal(format!("mkdir {}: {e}", dir.display())))?,
            Err(_) => {
                return Err(Status::not_found(format!(
                    "path: parent {} does not exist (set make_parents)",
                    dir.display()
                )))
            }
        }
    }
    let target = dir.join(last.as_os_str());
    if kind == Kind::Directory {
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "path: {} exists and is not a directory",
                    target.display()
                )))
            }
            Err(_) => std::fs::create_dir(&target)
                .map_err(|e| Status::internal(format!("mkdir {}: {e}", target.display())))?,
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Status::internal(format!("chmod {}: {e}", target.display())))?;
        nix::unistd::chown(
            &target,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| Status::internal(format!("chown {}: {e}", target.display())))?;
        return Ok(target);
    }
    if let Ok(m) = std::fs::symlink_metadata(&target) {
        if m.is_dir() {
            return Err(Status::failed_precondition(format!(
                "path: {} is a directory",
                target.display()
            )));
        }
    }
    write_atomic(&target, data, mode)
        .map_err(|e| Status::internal(format!("writing {}: {e}", target.display())))?;
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| Status::internal(format!("chown {}: {e}", target.display())))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_atomically_with_mode_and_checks_parents() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let e = write_in(
            base,
            Path::new("a/b/token"),
            b"x",
            0o600,
            uid,
            gid,
            false,
            Kind::File,
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let p = write_in(
            base,
            Path::new("a/b/token"),
            b"secret",
            0o600,
            uid,
            gid,
            true,
            Kind::File,
        )
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // Overwrite keeps the new content, no temp files left.
        write_in(
            base,
            Path::new("a/b/token"),
            b"v2",
            0o640,
            uid,
            gid,
            false,
            Kind::File,
        )
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"v2");
        assert_eq!(std::fs::read_dir(base.join("a/b")).unwrap().count(), 1);
        // A symlinked parent is refused.
        std::os::unix::fs::symlink("/etc", base.join("evil")).unwrap();
        let e = write_in(
            base,
            Path::new("evil/passwd"),
            b"x",
            0o644,
            uid,
            gid,
            true,
            Kind::File,
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let d = write_in(
            base,
            Path::new("v/empty"),
            b"",
            0o777,
            uid,
            gid,
            true,
            Kind::Directory,
        )
        .unwrap();
        assert!(d.is_dir());
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o777);
        // Again: kept, files beside it are untouched.
        write_in(
            base,
            Path::new("v/empty/f"),
            b"x",
            0,
            uid,
            gid,
            false,
            Kind::File,
        )
        .unwrap();
        write_in(
            base,
            Path::new("v/empty"),
            b"",
            0o755,
            uid,
            gid,
            false,
            Kind::Directory,
        )
        .unwrap();
        assert!(d.join("f").exists());
        let e = write_in(
            base,
            Path::new("a/b/token"),
            b"",
            0,
            uid,
            gid,
            false,
            Kind::Directory,
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }
}
