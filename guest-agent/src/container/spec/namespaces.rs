//! The namespaces a container joins or creates.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A namespace kind the engine handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsKind {
    /// Mount.
    Mount,
    /// Hostname and domain name.
    Uts,
    /// System V IPC, POSIX message queues.
    Ipc,
    /// Process ids.
    Pid,
    /// Network.
    Net,
    /// cgroup root.
    Cgroup,
}

impl NsKind {
    /// The `clone(2)` flag.
    pub fn flag(self) -> nix::sched::CloneFlags {
        use nix::sched::CloneFlags as F;
        match self {
            NsKind::Mount => F::CLONE_NEWNS,
            NsKind::Uts => F::CLONE_NEWUTS,
            NsKind::Ipc => F::CLONE_NEWIPC,
            NsKind::Pid => F::CLONE_NEWPID,
            NsKind::Net => F::CLONE_NEWNET,
            NsKind::Cgroup => F::CLONE_NEWCGROUP,
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Mount => "mnt",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Pid => "pid",
            NsKind::Net => "net",
            NsKind::Cgroup => "cgroup",
        }
    }

    /// Every kind, in the order namespaces are joined (mount last, as it
    /// changes the root the other paths are resolved in).
    pub const ALL: [NsKind; 6] = [
        NsKind::Cgroup,
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Net,
        NsKind::Pid,
        NsKind::Mount,
    ];
}

/// Which namespaces the container joins (by path) and which it creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// Existing namespaces to enter with setns.
    pub join: Vec<(NsKind, PathBuf)>,
    /// New namespaces to create with unshare.
    pub create: Vec<NsKind>,
}

impl NamespacePlan {
    /// Whether the container gets a namespace of `kind` of its own.
    pub fn creates(&self, kind: NsKind) -> bool {
        self.create.contains(&kind)
    }
}
