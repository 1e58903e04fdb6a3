//! Entering and creating namespaces (setns, unshare).

use super::spec::NsKind;
use anyhow::Context;
use nix::sched::{setns, unshare, CloneFlags};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Opens every namespace file first (paths may stop resolving once the
/// mount namespace changes), then enters them in [`NsKind::ALL`] order.
pub fn join(joins: &[(NsKind, PathBuf)]) -> anyhow::Result<()> {
    let mut opened: Vec<(NsKind, OwnedFd, &Path)> = Vec::new();
    for kind in NsKind::ALL {
        for (k, path) in joins.iter().filter(|(k, _)| *k == kind) {
            let f = std::fs::File::open(path).with_context(|| {
                format!("opening {} namespace {}", k.proc_name(), path.display())
            })?;
            opened.push((*k, f.into(), path));
        }
    }
    for (kind, fd, path) in opened {
        setns(&fd, kind.flag()).with_context(|| {
            format!("entering {} namespace {}", kind.proc_name(), path.display())
        })?;
    }
    Ok(())
}

/// Creates new namespaces of the given kinds for this process (for PID,
/// for its next child).
pub fn create(kinds: &[NsKind]) -> anyhow::Result<()> {
    let mut flags = CloneFlags::empty();
    for k in kinds {
        flags |= k.flag();
    }
    if !flags.is_empty() {
        unshare(flags).with_context(|| format!("unshare({flags:?})"))?;
    }
    Ok(())
}

/// The namespaces of process `pid` that differ from this process's, as
/// paths under /proc, for an exec to join.
pub fn of_process(pid: i32) -> Vec<(NsKind, PathBuf)> {
    NsKind::ALL
        .iter()
        .filter_map(|k| {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", k.proc_name()));
            let ours = PathBuf::from(format!("/proc/self/ns/{}", k.proc_name()));
            let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
            match (ino(&theirs), ino(&ours)) {
                (Some(a), Some(b)) if a == b => None,
                (Some(_), _) => Some((*k, theirs)),
                _ => None,
            }
        })
        .collect()
}
