//! What the agent knows about its sandbox, containers and processes.

use crate::cgroups::Cgroup;
use crate::container::sync::Channel;
use crate::reaper::Exit;
use crate::stdio::ProcessIo;
use crate::storage::RootfsMounts;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Fixed locations and the binary used for the init stage.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's work directory (`/run/moat`).
    pub run_dir: PathBuf,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// The binary re-executed as init stage (`/proc/self/exe`).
    pub init_binary: PathBuf,
    /// Whether the agent is the guest's PID 1 (Shutdown powers off).
    pub is_pid1: bool,
    /// How long a waited-for exec process stays listed before it is forgotten.
    pub exec_record_ttl: std::time::Duration,
    /// The pod cgroup, relative to the cgroup root (`pod` in the guest; the
    /// pod's `cgroup_parent` on the host).
    pub pod_cgroup: PathBuf,
    /// On the host, serving a native pod: the OCI runtime binary (runc,
    /// crun) that creates its containers. `None` in a guest, where the agent
    /// sets containers up itself.
    pub oci_runtime: Option<PathBuf>,
}

impl Config {
    /// Directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("containers").join(id)
    }
    /// The pod cgroup, relative to the cgroup root.
    pub fn pod_cgroup(&self) -> PathBuf {
        self.pod_cgroup.clone()
    }
    /// Where configmap-shaped volumes are mirrored (`crate::watched`).
    pub fn watched_dir(&self) -> PathBuf {
        self.run_dir.join("watched")
    }
    /// The OCI runtime that makes containers, when the agent serves a
    /// native pod on the host.
    pub fn runtime(&self) -> Option<crate::container::oci_runtime::OciRuntime> {
        self.oci_runtime.as_ref().map(|binary| {
            crate::container::oci_runtime::OciRuntime::new(
                binary.clone(),
                self.run_dir.join("runtime"),
                self.run_dir.join("tmp"),
            )
        })
    }
    /// Where the pod's shared namespaces are bind-mounted.
    pub fn ns_dir(&self) -> PathBuf {
        self.run_dir.join("sandbox").join("ns")
    }
}

/// How a process ended, as reported to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code or signal.
    pub exit: Exit,
    /// The container's cgroup OOM-killed something while it ran.
    pub oom_killed: bool,
}

/// A process the agent started (a container's init or an exec).
pub struct Process {
    /// Pid in the agent's namespace.
    pub pid: i32,
    /// stdio.
    pub io: ProcessIo,
    /// `Some` once exited.
    pub exit: watch::Receiver<Option<ExitInfo>>,
}

impl Process {
    /// Creates the record and a task that fills in the exit once the reaper
    /// reports it (checking the cgroup's OOM-kill counter).
    pub fn new(
        pid: i32,
        io: ProcessIo,
        exit: tokio::sync::oneshot::Receiver<Exit>,
        cgroup: Cgroup,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        let baseline = cgroup.oom_kill_count();
        tokio::spawn(async move {
            let exit = exit.await.unwrap_or(Exit::Signal(libc::SIGKILL));
            let oom_killed = cgroup.oom_kill_count() > baseline;
            tracing::info!(pid, ?exit, oom_killed, "process exited");
            let _ = tx.send(Some(ExitInfo { exit, oom_killed }));
        });
        Arc::new(Self { pid, io, exit: rx })
    }

    /// The exit, if it happened.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return ExitInfo {
                    exit: Exit::Signal(libc::SIGKILL),
                    oom_killed: false,
                };
            }
        }
    }
}

/// A container.
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its work directory.
    pub dir: PathBuf,
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// Its rootfs mounts.
    pub rootfs: RootfsMounts,
    /// The container's own process.
    pub init: Arc<Process>,
    /// How to start it; `None` once started.
    pub start: Mutex<Option<Starter>>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// What exec'd processes inherit (capabilities, seccomp, no_new_privs).
    pub exec_defaults: crate::container::spec::ExecDefaults,
}

/// What starts a created container.
pub enum Starter {
    /// The init stage's channel (in a guest).
    Init(Channel),
    /// The OCI runtime's `start` (on the host).
    Runtime,
}

impl Container {
    /// "created", "running" or "stopped".
    pub fn state(&self) -> &'static str {
        if self.init.exited().is_some() {
            "stopped"
        } else if self.start.lock().map(|s| s.is_some()).unwrap_or(false) {
            "created"
        } else {
            "running"
        }
    }
}

/// The pod-level state.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// Sandbox id.
    pub id: String,
    /// The namespace holder's pid.
    pub holder_pid: Option<i32>,
    /// Shared namespace files by type.
    pub ns_paths: HashMap<String, PathBuf>,
}

/// Everything, shared by the RPC handlers.
pub struct State {
    /// Locations.
    pub config: Config,
    /// The sandbox, once created.
    pub sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    /// Containers by id.
    pub containers: tokio::sync::Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created right now (reserved against duplicates).
    pub creating: Mutex<std::collections::HashSet<String>>,
}
