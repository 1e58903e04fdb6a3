//! StopPodSandbox and RemovePodSandbox: the VM, then the network, then the
//! record.

use super::manager::{failed, PodError, Pods};
use super::record::{SandboxRecord, SandboxState};
use super::run::attachment;
use crate::config::HandlerKind;
use crate::network::capability_args::capability_args;
use crate::network::NetNs;
use crate::store::SANDBOXES;
use crate::vm::launch::running_vmms;
use crate::vm::ControlClient;
use std::time::Duration;

impl Pods {
    /// Stops the VM and releases the network; leaves the record.
    pub(super) async fn tear_down(&self, rec: &mut SandboxRecord) {
        let native = rec.kind == HandlerKind::Oci;
        if let Some(vm) = rec.vm.take() {
            if vm.is_alive() && native {
                // The agent removes the containers and the namespace holder,
                // unmounts, and exits.
                if let Ok(Ok(mut agent)) =
                    tokio::time::timeout(Duration::from_secs(2), self.agents.calls(rec)).await
                {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        agent.shutdown(moat_proto::agent::ShutdownRequest {}),
                    )
                    .await;
                }
                for _ in 0..100 {
                    if !vm.is_alive() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                vm.kill();
            } else if vm.is_alive() {
                // Ask the guest to power off, give it a moment, then kill.
                if let Ok(Ok(mut agent)) =
                    tokio::time::timeout(Duration::from_secs(2), self.agents.calls(rec)).await
                {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        agent.shutdown(moat_proto::agent::ShutdownRequest {}),
                    )
                    .await;
                }
                let control = ControlClient::new(&rec.vm_paths.api());
                let _ = control
                    .call(&moat_vmm::api::Request::Shutdown { timeout_ms: 3000 })
                    .await;
                vm.kill();
                for _ in 0..200 {
                    if !vm.is_alive() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // The channels to this VM's agent are done.
            self.agents.forget(&rec.id);
        }
        // A VMM or agent no record names: started by a moatd that crashed
        // before recording its pid.
        let strays = match native {
            true => super::native::running_agents(&rec.vm_paths),
            false => running_vmms(&rec.vm_paths),
        };
        for stray in strays {
            tracing::warn!(id = %rec.id, pid = stray.pid, "killing a VMM or agent left by a crash");
            stray.kill();
            for _ in 0..200 {
                if !stray.is_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if !native {
            // The virtiofsd ends with its VMM's connection; one that does
            // not (or that a crash left unrecorded) is killed.
            let recorded = rec.fs_daemon.take();
            for d in recorded
                .into_iter()
                .chain(crate::vm::volumes::running_daemons(&rec.vm_paths))
            {
                for _ in 0..100 {
                    if !d.is_alive() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                d.kill();
            }
            if let Err(p) = crate::vm::volumes::remove_share(&rec.vm_paths) {
                tracing::warn!(id = %rec.id, "{} is still mounted", p.display());
            }
        }
        // What is still mounted in the pod's directory: what a crashed
        // native agent left (images, overlays, scratch, namespace files).
        super::native::unmount_under(&rec.vm_paths.dir);
        if let Some(rel) = &rec.vmm_cgroup {
            let root = std::path::Path::new(crate::vm::cgroup::CGROUP_ROOT);
            let removed = if native {
                super::native::remove_cgroup_tree(root, rel)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                crate::vm::cgroup::remove(root, rel)
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = removed {
                tracing::warn!(id = %rec.id, "removing the pod's cgroup: {e}");
            }
            if !native {
                let rel = crate::vm::cgroup::fs_daemon_path(rel);
                if let Err(e) = crate::vm::cgroup::remove(root, &rel).await {
                    tracing::warn!(id = %rec.id, "removing the virtiofsd's cgroup: {e}");
                }
            }
        }
        if let Some(path) = rec.netns.clone() {
            let ns = NetNs::at(path);
            if let Some(cni) = &self.cni {
                let md = rec.metadata();
                let cidrs = self.pod_cidrs().unwrap_or_default();
                let args = capability_args(&rec.config, &cidrs).unwrap_or_default();
                if let Err(e) = cni
                    .del(
                        &attachment(&rec.id, &md, ns.path(), &args),
                        rec.cni.as_ref(),
                    )
                    .await
                {
                    tracing::warn!(id = %rec.id, "CNI DEL: {e}");
                }
            }
            if let Err(e) = ns.remove() {
                tracing::warn!(id = %rec.id, "removing netns: {e}");
            }
            rec.netns = None;
        }
        rec.cni = None;
        for sock in [
            rec.vm_paths.vsock(),
            rec.vm_paths.api(),
            rec.vm_paths.agent(),
        ] {
            let _ = std::fs::remove_file(sock);
        }
    }

    /// StopPodSandbox: idempotent; a stopped sandbox stays stopped.
    pub async fn stop(&self, id: &str) -> Result<(), PodError> {
        let _guard = self.locks.lock(&self.get(id)?.id).await;
        // Read again under the lock: a concurrent stop may have finished.
        let mut rec = self.get(id)?;
        if rec.state == SandboxState::NotReady && rec.vm.is_none() && rec.netns.is_none() {
            return Ok(());
        }
        self.tear_down(&mut rec).await;
        rec.state = SandboxState::NotReady;
        self.store.put(SANDBOXES, &rec.id, &rec)?;
        tracing::info!(id = %rec.id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: stops if needed and forgets it; unknown ids succeed.
    pub async fn remove(&self, id: &str) -> Result<(), PodError> {
        let rec = match self.get(id) {
            Ok(r) => r,
            Err(PodError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&rec.id).await?;
        let guard = self.locks.lock(&rec.id).await;
        // Never delete through a mount: a volume bound in the pod's
        // directories is the user's data.
        for dir in [rec.vm_paths.dir.clone(), rec.vm_paths.fs_dir()] {
            if let Some(p) = super::native::mounts_under(&dir).first() {
                return Err(failed(format!(
                    "{} is still mounted; the pod's directory is kept",
                    p.display()
                )));
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(failed(format!("removing {}: {e}", dir.display())));
                }
            }
        }
        self.store.delete(SANDBOXES, &rec.id)?;
        drop(guard);
        self.locks.forget(&rec.id).await;
        tracing::info!(id = %rec.id, "pod sandbox removed");
        Ok(())
    }
}
