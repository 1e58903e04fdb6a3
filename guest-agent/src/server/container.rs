//! Container lifecycle: create, start, remove, list, update.

use super::validate::{self, invalid};
use super::R;
use crate::cgroups::{Cgroup, CgroupError};
use crate::container::launch;
use crate::container::oci_runtime::{OciRuntime, RuntimeError};
use crate::container::spec::{self, PlanPolicy};
use crate::container::sync::InitRequest;
use crate::devices::DeviceId;
use crate::paths::validate_id;
use crate::state::{Container, Process, Starter, State};
use crate::storage::{self, Source};
use moat_proto::agent::block_device::Id;
use moat_proto::agent::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Response, Status};

/// What container specs may refer to outside their rootfs. In a guest:
/// the pod's sandbox files, volumes (virtio-fs) and their
/// mirrors (`crate::watched`). On the host, serving a native
/// pod, moatd names host paths itself (volumes, devices), as it would to
/// any OCI runtime.
pub(super) fn policy(state: &State) -> PlanPolicy {
    if state.config.oci_runtime.is_some() {
        return PlanPolicy {
            bind_source_dirs: vec![PathBuf::from("/")],
            namespace_dirs: vec![state.config.ns_dir()],
        };
    }
    PlanPolicy {
        bind_source_dirs: vec![
            state.config.run_dir.join("sandbox"),
            PathBuf::from(moat_proto::VOLUMES_DIR),
            state.config.watched_dir(),
        ],
        namespace_dirs: vec![state.config.ns_dir()],
    }
}

pub(super) fn cgroup_status(e: CgroupError) -> Status {
    match e {
        CgroupError::Resource(r) => invalid(r),
        CgroupError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Status::failed_precondition(format!(
                "resources: {} does not exist (controller not available in the guest)",
                path.display()
            ))
        }
        e => Status::internal(e.to_string()),
    }
}

/// What a request's [`BlockDevice`] (named `field` in errors) designates.
pub(super) fn device_source(field: &str, b: &BlockDevice) -> Result<Source, Status> {
    Ok(match &b.id {
        None => {
            return Err(invalid(format!(
                "{field}.id: one of serial, mmio_address, path, directory is required"
            )))
        }
        Some(Id::Serial(s)) => {
            if s.is_empty() || s.len() > 20 || s.contains(['/', '\0', '\n']) {
                return Err(invalid(format!(
                    "{field}.serial: must be 1..=20 bytes without '/' or NUL"
                )));
            }
            Source::Device(DeviceId::Serial(s.clone()))
        }
        Some(Id::MmioAddress(a)) => {
            if *a == 0 || a % 0x1000 != 0 {
                return Err(invalid(format!(
                    "{field}.mmio_address: must be a non-zero, 4 KiB aligned address"
                )));
            }
            Source::Device(DeviceId::MmioAddress(*a))
        }
        Some(Id::Path(p)) => {
            let p = PathBuf::from(p);
            if !p.starts_with("/dev/")
                || p.components().any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(format!(
                    "{field}.path: must be a device under /dev/"
                )));
            }
            Source::Device(DeviceId::Path(p))
        }
        Some(Id::ImageFile(f)) => {
            let f = PathBuf::from(f);
            if !f.is_absolute() || f.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(format!(
                    "{field}.image_file: must be an absolute path without '..'"
                )));
            }
            Source::ImageFile(f)
        }
        Some(Id::Directory(d)) => {
            let d = PathBuf::from(d);
            if !d.is_absolute() || d.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(format!(
                    "{field}.directory: must be an absolute path without '..'"
                )));
            }
            Source::Directory(d)
        }
    })
}

/// Releases the id reservation when creation ends, however it ends.
struct Reservation<'a> {
    state: &'a State,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.creating.lock() {
            s.remove(&self.id);
        }
    }
}

pub(super) async fn create(
    state: &State,
    req: CreateContainerRequest,
) -> R<CreateContainerResponse> {
    validate_id("container_id", &req.container_id).map_err(invalid)?;
    let rootfs = req
        .rootfs
        .as_ref()
        .ok_or_else(|| invalid("rootfs: is required"))?;
    let source = device_source("rootfs", rootfs)?;
    if matches!(source, Source::ImageFile(_)) && state.config.oci_runtime.is_none() {
        return Err(invalid(
            "rootfs.image_file: only an agent serving a native pod on the host takes image files",
        ));
    }
    if !matches!(rootfs.fstype.as_str(), "" | "erofs" | "ext4") {
        return Err(invalid(
            "rootfs.fstype: must be \"erofs\", \"ext4\" or empty",
        ));
    }
    if rootfs.timeout_ms > 300_000 {
        return Err(invalid("rootfs.timeout_ms: at most 300000"));
    }
    let mut spec = spec::parse_spec(&req.oci_spec).map_err(invalid)?;
    let timeout = Duration::from_millis(if rootfs.timeout_ms == 0 {
        10_000
    } else {
        u64::from(rootfs.timeout_ms)
    });
    super::container_devices::add(&mut spec, &req.devices, timeout).await?;
    let id = req.container_id.clone();
    let dir = state.config.container_dir(&id);
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    if let Some(r) = &resources {
        crate::cgroups::files::resource_files(r).map_err(invalid)?;
    }

    {
        let containers = state.containers.lock().await;
        let mut creating = state
            .creating
            .lock()
            .map_err(|_| Status::internal("creating set poisoned"))?;
        if containers.contains_key(&id) || !creating.insert(id.clone()) {
            return Err(Status::already_exists(format!(
                "container_id: {id:?} already exists"
            )));
        }
    }
    let _reservation = Reservation {
        state,
        id: id.clone(),
    };
    // In a pod VM, configmap-shaped volumes are served from mirrors that
    // inotify sees change.
    let mirrored = if state.config.oci_runtime.is_none() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let m = crate::watched::mirror_mounts(
            &mut mounts,
            std::path::Path::new(moat_proto::VOLUMES_DIR),
            &state.config.watched_dir(),
        );
        spec.set_mounts(Some(mounts));
        Some(m)
    } else {
        None
    };
    let mut plan =
        spec::container_plan(&spec, &dir.join("rootfs"), &policy(state)).map_err(invalid)?;
    plan.process = spec::with_seccomp(plan.process, &spec).map_err(invalid)?;

    std::fs::create_dir_all(&dir)
        .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    let mounts = match storage::prepare(
        &dir,
        &source,
        &rootfs.fstype,
        timeout,
        req.scratch_size_bytes,
    )
    .await
    {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(match e {
                storage::StorageError::DeviceMissing(..) => Status::not_found(e.to_string()),
                storage::StorageError::NotADirectory(_) => Status::not_found(e.to_string()),
                storage::StorageError::Mount(_) => Status::failed_precondition(e.to_string()),
            });
        }
    };
    let cleanup = |cg: Option<&Cgroup>| {
        storage::teardown(&mounts);
        if let Some(cg) = cg {
            let _ = cg.kill_all();
            let _ = cg.remove(Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(&dir);
    };
    let cgroup = match Cgroup::create(
        &state.config.cgroup_root,
        &state.config.pod_cgroup().join(&id),
    ) {
        Ok(c) => c,
        Err(e) => {
            cleanup(None);
            return Err(Status::internal(e.to_string()));
        }
    };
    if let Some(r) = &resources {
        if let Err(e) = cgroup.apply(r) {
            cleanup(Some(&cgroup));
            return Err(cgroup_status(e));
        }
    }
    let (child_io, io) = match crate::stdio::create(plan.process.terminal, req.stdin) {
        Ok(x) => x,
        Err(e) => {
            cleanup(Some(&cgroup));
            return Err(Status::internal(format!("stdio: {e}")));
        }
    };
    let exec_defaults = spec::ExecDefaults::from_container(&plan.process);
    let launched = match state.config.runtime() {
        Some(runtime) => {
            create_with_runtime(
                &runtime,
                &id,
                &dir,
                spec,
                &mounts,
                cgroup.path(),
                &state.config,
                child_io,
                plan.process.terminal,
            )
            .await
        }
        None => {
            let init = state.config.init_binary.clone();
            let cg = cgroup.clone();
            let request = InitRequest::Create(Box::new(plan));
            tokio::task::spawn_blocking(move || {
                launch::launch(&init, &request, child_io, |pid| {
                    cg.add_pid(pid).map_err(|e| e.to_string())
                })
            })
            .await
            .map_err(|e| Status::internal(format!("launch task: {e}")))
            .and_then(|l| {
                l.map(|l| Launched {
                    pid: l.pid,
                    exit: l.exit,
                    console: l.console,
                    starter: Starter::Init(l.channel),
                })
                .map_err(|e| match e {
                    launch::LaunchError::Setup(m) => {
                        Status::failed_precondition(format!("container setup failed: {m}"))
                    }
                    e => Status::internal(e.to_string()),
                })
            })
        }
    };
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            cleanup(Some(&cgroup));
            return Err(e);
        }
    };
    let pid = launched.pid;
    let io = match crate::stdio::ProcessIo::finish(io, launched.console) {
        Ok(io) => io,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            cleanup(Some(&cgroup));
            return Err(Status::internal(format!("stdio: {e}")));
        }
    };
    let process = Process::new(pid, io, launched.exit, cgroup.clone());
    let container = Arc::new(Container {
        id: id.clone(),
        dir: dir.clone(),
        cgroup,
        rootfs: mounts,
        init: process,
        start: Mutex::new(Some(launched.starter)),
        execs: Mutex::new(Default::default()),
        exec_defaults,
    });
    state.containers.lock().await.insert(id.clone(), container);
    if let Some(m) = mirrored {
        m.keep();
    }
    tracing::info!(container = %id, pid, "container created");
    Ok(Response::new(CreateContainerResponse { pid: pid as u32 }))
}

/// A container's process, set up and waiting to be started.
struct Launched {
    pid: i32,
    exit: tokio::sync::oneshot::Receiver<crate::reaper::Exit>,
    console: Option<std::os::fd::OwnedFd>,
    starter: Starter,
}

/// On the host: the OCI runtime creates the container from a bundle in its
/// directory, whose `config.json` is the host's spec with the prepared root
/// and the cgroup the agent made (which the runtime joins).
#[allow(clippy::too_many_arguments)]
async fn create_with_runtime(
    runtime: &OciRuntime,
    id: &str,
    dir: &std::path::Path,
    mut spec: oci_spec::runtime::Spec,
    mounts: &storage::RootfsMounts,
    cgroup: &std::path::Path,
    config: &crate::state::Config,
    stdio: crate::stdio::ChildStdio,
    terminal: bool,
) -> Result<Launched, Status> {
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(mounts.rootfs.clone());
    root.set_readonly(Some(readonly));
    spec.set_root(Some(root));
    let rel = cgroup
        .strip_prefix(&config.cgroup_root)
        .map_err(|_| Status::internal("container cgroup outside the cgroup root"))?;
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(std::path::Path::new("/").join(rel)));
    }
    let json = serde_json::to_vec_pretty(&spec)
        .map_err(|e| Status::internal(format!("bundle config: {e}")))?;
    std::fs::write(dir.join("config.json"), json)
        .map_err(|e| Status::internal(format!("writing the bundle config: {e}")))?;
    let started = runtime
        .create(id, dir, stdio, terminal)
        .await
        .map_err(|e| match e {
            RuntimeError::Refused { .. } => {
                Status::failed_precondition(format!("container setup failed: {e}"))
            }
            e => Status::internal(e.to_string()),
        })?;
    Ok(Launched {
        pid: started.pid,
        exit: started.exit,
        console: started.console,
        starter: Starter::Runtime,
    })
}

pub(super) async fn start(state: &State, req: StartContainerRequest) -> R<StartContainerResponse> {
    let c = validate::container(state, &req.container_id).await?;
    let starter = c
        .start
        .lock()
        .map_err(|_| Status::internal("start lock poisoned"))?
        .take()
        .ok_or_else(|| {
            Status::failed_precondition(format!("container_id: {:?} was already started", c.id))
        })?;
    if c.init.exited().is_some() {
        return Err(Status::failed_precondition(
            "container_id: the container's process already exited",
        ));
    }
    match (starter, state.config.runtime()) {
        (Starter::Init(chan), _) => tokio::task::spawn_blocking(move || launch::start(&chan))
            .await
            .map_err(|e| Status::internal(format!("start task: {e}")))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?,
        (Starter::Runtime, Some(runtime)) => runtime
            .start(&c.id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?,
        (Starter::Runtime, None) => return Err(Status::internal("no OCI runtime configured")),
    }
    tracing::info!(container = %c.id, pid = c.init.pid, "container started");
    Ok(Response::new(StartContainerResponse {}))
}

/// Stops and removes container `id`: SIGTERM, `timeout_ms` grace, SIGKILL
/// to the whole cgroup, unmount, delete the cgroup and work directory.
pub(super) async fn remove_by_id(state: &State, id: &str, timeout_ms: u32) -> Result<(), Status> {
    let c = validate::container(state, id).await?;
    // Unstarted: closing the channel makes the waiting process exit.
    if let Ok(mut s) = c.start.lock() {
        s.take();
    }
    if timeout_ms > 0 && c.init.exited().is_none() {
        let _ = c.cgroup.signal_all(nix::sys::signal::Signal::SIGTERM);
        let _ =
            tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), c.init.wait()).await;
    }
    let _ = c.cgroup.kill_all();
    if tokio::time::timeout(Duration::from_secs(10), c.init.wait())
        .await
        .is_err()
    {
        return Err(Status::internal(format!(
            "container {id:?}: process {} did not die",
            c.init.pid
        )));
    }
    // Wait for the cgroup to empty (execs, stragglers).
    for _ in 0..200 {
        match c.cgroup.pids() {
            Ok(p) if !p.is_empty() => {
                let _ = c.cgroup.kill_all();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            _ => break,
        }
    }
    if let Some(runtime) = state.config.runtime() {
        if let Err(e) = runtime.delete(&c.id).await {
            tracing::warn!(container = %id, "{e}");
        }
    }
    storage::teardown(&c.rootfs);
    c.cgroup
        .remove(Duration::from_secs(5))
        .map_err(|e| Status::internal(format!("removing cgroup: {e}")))?;
    let _ = std::fs::remove_dir_all(&c.dir);
    crate::watched::forget(&state.config.watched_dir(), id);
    state.containers.lock().await.remove(id);
    tracing::info!(container = %id, "container removed");
    Ok(())
}

pub(super) async fn remove(
    state: &State,
    req: RemoveContainerRequest,
) -> R<RemoveContainerResponse> {
    if req.timeout_ms > 600_000 {
        return Err(invalid("timeout_ms: at most 600000"));
    }
    remove_by_id(state, &req.container_id, req.timeout_ms).await?;
    Ok(Response::new(RemoveContainerResponse {}))
}

pub(super) async fn list(state: &State) -> R<ListContainersResponse> {
    let containers = state.containers.lock().await;
    let mut out: Vec<ContainerInfo> = containers
        .values()
        .map(|c| ContainerInfo {
            container_id: c.id.clone(),
            state: c.state().to_string(),
            pid: c.init.pid as u32,
            exec_ids: c
                .execs
                .lock()
                .map(|e| e.keys().cloned().collect())
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    Ok(Response::new(ListContainersResponse { containers: out }))
}

pub(super) async fn update(
    state: &State,
    req: UpdateContainerRequest,
) -> R<UpdateContainerResponse> {
    let c = validate::container(state, &req.container_id).await?;
    let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources)
        .map_err(|e| invalid(format!("resources: not OCI LinuxResources JSON: {e}")))?;
    c.cgroup.apply(&res).map_err(cgroup_status)?;
    tracing::info!(container = %c.id, "resources updated");
    Ok(Response::new(UpdateContainerResponse {}))
}
