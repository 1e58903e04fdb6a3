//! CreateSandbox / DestroySandbox: hostname, hosts, resolv.conf, sysctls,
//! the pod cgroup and the shared namespaces' holder process.

use super::validate::invalid;
use super::R;
use crate::cgroups::Cgroup;
use crate::container::launch;
use crate::container::sync::InitRequest;
use crate::paths::validate_id;
use crate::pod_files;
use crate::state::{Sandbox, State};
use moat_proto::agent::*;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::{Response, Status};

fn internal(ctx: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{ctx}: {e}"))
}

/// Writes `data` to `path` atomically (temporary file + rename).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

pub(super) async fn create(state: &State, req: CreateSandboxRequest) -> R<CreateSandboxResponse> {
    validate_id("sandbox_id", &req.sandbox_id).map_err(invalid)?;
    if !req.hostname.is_empty() {
        pod_files::check_hostname("hostname", &req.hostname).map_err(invalid)?;
    }
    let hosts = pod_files::hosts_file(&req.hostname, &req.hosts).map_err(invalid)?;
    let resolv = pod_files::resolv_conf(&req.dns.clone().unwrap_or_default()).map_err(invalid)?;
    let mut sysctls = Vec::new();
    let mut holder_sysctls = Vec::new();
    let mut keys: Vec<_> = req.sysctls.keys().collect();
    keys.sort();
    for k in keys {
        let rel = crate::container::spec::sysctl_path(k)
            .map_err(|r| invalid(format!("sysctls[{k:?}]: {r}")))?;
        let v = &req.sysctls[k];
        if v.contains('\0') || v.len() > 1024 {
            return Err(invalid(format!(
                "sysctls[{k:?}]: value too long or has NUL"
            )));
        }
        // IPC and UTS sysctls belong to the pod's own namespaces, held by
        // the holder process when the pod shares them; the rest (net.*)
        // to the guest's network namespace, the pod's.
        let in_holder = match moat_proto::sysctl_namespace(k) {
            Some("ipc") => req.share_ipc,
            Some("uts") => req.share_uts,
            Some(_) => false,
            None => return Err(invalid(format!("sysctls[{k:?}]: not a namespaced sysctl"))),
        };
        if in_holder {
            holder_sysctls.push((rel, v.clone()));
        } else {
            sysctls.push((rel, v.clone()));
        }
    }

    let mut guard = state.sandbox.lock().await;
    if let Some(s) = guard.as_ref() {
        return Err(Status::already_exists(format!(
            "sandbox_id: sandbox {:?} already exists in this guest",
            s.id
        )));
    }
    let dir = state.config.run_dir.join("sandbox");
    std::fs::create_dir_all(&dir).map_err(|e| internal("creating sandbox dir", e))?;
    // On the host the agent's own UTS namespace is the node's: there the
    // holder's namespace alone gets the pod's hostname.
    if !req.hostname.is_empty() && state.config.oci_runtime.is_none() {
        nix::unistd::sethostname(&req.hostname).map_err(|e| internal("sethostname", e))?;
    }
    let hosts_path = dir.join("hosts");
    let resolv_path = dir.join("resolv.conf");
    let hostname_path = dir.join("hostname");
    write_atomic(&hosts_path, hosts.as_bytes(), 0o644).map_err(|e| internal("writing hosts", e))?;
    write_atomic(&resolv_path, resolv.as_bytes(), 0o644)
        .map_err(|e| internal("writing resolv.conf", e))?;
    write_atomic(
        &hostname_path,
        format!("{}\n", req.hostname).as_bytes(),
        0o644,
    )
    .map_err(|e| internal("writing hostname", e))?;
    for (rel, v) in &sysctls {
        std::fs::write(Path::new("/proc/sys").join(rel), v)
            .map_err(|e| Status::invalid_argument(format!("sysctls[{rel:?}]: {e}")))?;
    }
    let root = &state.config.cgroup_root;
    let pod = Cgroup::create(root, &state.config.pod_cgroup())
        .map_err(|e| internal("creating the pod cgroup", e))?;
    crate::cgroups::enable_all_controllers(pod.path())
        .map_err(|e| internal("pod cgroup controllers", e))?;

    let mut sandbox = Sandbox {
        id: req.sandbox_id.clone(),
        ..Default::default()
    };
    if req.share_ipc || req.share_pid || req.share_uts {
        let (pid, paths) = start_holder(state, &req, holder_sysctls).await?;
        sandbox.holder_pid = Some(pid);
        sandbox.ns_paths = paths;
    }
    let resp = CreateSandboxResponse {
        namespace_paths: sandbox
            .ns_paths
            .iter()
            .map(|(k, v)| (k.clone(), v.display().to_string()))
            .collect(),
        hosts_path: hosts_path.display().to_string(),
        resolv_conf_path: resolv_path.display().to_string(),
        hostname_path: hostname_path.display().to_string(),
    };
    tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "sandbox created");
    *guard = Some(sandbox);
    Ok(Response::new(resp))
}

/// Starts the process that holds the pod's shared namespaces and
/// bind-mounts them under SANDBOX_NS_DIR.
async fn start_holder(
    state: &State,
    req: &CreateSandboxRequest,
    sysctls: Vec<(String, String)>,
) -> Result<(i32, HashMap<String, PathBuf>), Status> {
    let holder_cg = Cgroup::create(
        &state.config.cgroup_root,
        &state.config.pod_cgroup().join(".holder"),
    )
    .map_err(|e| internal("sandbox cgroup", e))?;
    let init = state.config.init_binary.clone();
    let request = InitRequest::Holder {
        ipc: req.share_ipc,
        uts: req.share_uts,
        pid: req.share_pid,
        hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
        sysctls,
    };
    let launched = tokio::task::spawn_blocking(move || {
        let null = || {
            std::fs::File::options()
                .write(true)
                .open("/dev/null")
                .map(Into::into)
        };
        let stdio = crate::stdio::ChildStdio {
            stdin: None,
            stdout: null().map_err(|e| launch::LaunchError::Io(e.to_string()))?,
            stderr: null().map_err(|e| launch::LaunchError::Io(e.to_string()))?,
        };
        launch::launch(&init, &request, stdio, |pid| {
            holder_cg.add_pid(pid).map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|e| internal("holder task", e))?
    .map_err(|e| internal("starting the namespace holder", e))?;
    let pid = launched.pid;
    let ns_dir = state.config.ns_dir();
    std::fs::create_dir_all(&ns_dir).map_err(|e| internal("creating ns dir", e))?;
    let mut paths = HashMap::new();
    for (on, name) in [
        (req.share_ipc, "ipc"),
        (req.share_uts, "uts"),
        (req.share_pid, "pid"),
    ] {
        if !on {
            continue;
        }
        let target = ns_dir.join(name);
        std::fs::File::create(&target).map_err(|e| internal("creating ns file", e))?;
        let src = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| internal(&format!("bind-mounting {}", src.display()), e))?;
        paths.insert(name.to_string(), target);
    }
    tracing::info!(pid, "pod namespace holder running");
    Ok((pid, paths))
}

/// Kills every container and the holder, unmounts, removes cgroups.
pub(super) async fn teardown_all(state: &State) {
    let ids: Vec<String> = state.containers.lock().await.keys().cloned().collect();
    for id in ids {
        if let Err(e) = super::container::remove_by_id(state, &id, 0).await {
            tracing::warn!(container = %id, "removing: {}", e.message());
        }
    }
    let mut guard = state.sandbox.lock().await;
    if let Some(s) = guard.take() {
        for p in s.ns_paths.values() {
            let _ = umount2(p, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(p);
        }
        if let Some(pid) = s.holder_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let holder = Cgroup::at(
            state
                .config
                .cgroup_root
                .join(state.config.pod_cgroup())
                .join(".holder"),
        );
        let _ = holder.kill_all();
        let _ = holder.remove(std::time::Duration::from_secs(2));
        tracing::info!(sandbox = %s.id, "sandbox destroyed");
    }
}

pub(super) async fn destroy(state: &State) -> R<DestroySandboxResponse> {
    if state.sandbox.lock().await.is_none() {
        return Err(Status::failed_precondition("no sandbox to destroy"));
    }
    teardown_all(state).await;
    Ok(Response::new(DestroySandboxResponse {}))
}
