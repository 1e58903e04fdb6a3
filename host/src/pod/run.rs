//! RunPodSandbox: network namespace → CNI → TAP → moat-vmm → agent, undoing
//! every step if a later one fails.

use super::manager::{caused, failed, PodError, Pods, POD_TAP};
use super::native;
use super::record::{SandboxRecord, SandboxState};
use super::sizing::vm_size;
use super::validate::{
    native_sysctls, no_host_namespaces, no_privileged, pod_hostname, uses_host, validate,
};
use crate::config::HandlerKind;
use crate::crash_point;
use crate::network::capability_args::capability_args;
use crate::network::cni::Attachment;
use crate::network::{tap, NetNs, POD_IFNAME};
use crate::store::SANDBOXES;
use crate::vm::cgroup::{self, Limits};
use crate::vm::launch::{launch, wait_for_agent};
use crate::vm::{VmPaths, VmSpec};
use moat_proto::cri::{NamespaceMode, PodSandboxConfig, PodSandboxMetadata};
use moat_vmm::config::{JailConfig, NetConfig, VmConfig};
use std::path::Path;
use std::time::Duration;

/// Which of the pod's namespaces its containers share.
#[derive(Debug, PartialEq, Eq)]
struct Shares {
    /// One IPC namespace for the pod (CRI's default).
    ipc: bool,
    /// One PID namespace for the pod (not CRI's default).
    pid: bool,
}

fn pod_shares(config: &PodSandboxConfig) -> Shares {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let pod = NamespaceMode::Pod as i32;
    // CRI's default (zero) for ipc and pid is POD and CONTAINER respectively.
    Shares {
        ipc: ns.is_none_or(|n| n.ipc == pod),
        pid: ns.is_some_and(|n| n.pid == pod),
    }
}

/// What the CNI plugins are told about a pod: its id, namespace, interface
/// and the K8S_POD_* arguments.
pub(super) fn attachment<'a>(
    id: &'a str,
    md: &'a PodSandboxMetadata,
    netns: &'a std::path::Path,
    capability_args: &'a serde_json::Map<String, serde_json::Value>,
) -> Attachment<'a> {
    Attachment {
        container_id: id,
        netns,
        ifname: POD_IFNAME,
        pod: Some((&md.name, &md.namespace)),
        capability_args,
    }
}

/// The guest's network from the CNI result: the pod's IPv4 addresses on the
/// NIC with the CNI interface's MAC, and the routes (a route without a
/// gateway uses the address's gateway, as CNI results mean it).
fn guest_network(
    mac: &str,
    mtu: u32,
    cni: &crate::network::CniResult,
) -> moat_proto::agent::ConfigureNetworkRequest {
    let ips: Vec<_> = cni
        .ips()
        .into_iter()
        .filter(|ip| !ip.address.contains(':'))
        .collect();
    let default_gw = ips
        .iter()
        .find_map(|ip| ip.gateway.clone())
        .unwrap_or_default();
    let routes = cni
        .routes()
        .into_iter()
        .filter(|(dst, _)| !dst.contains(':'))
        .map(|(dst, gw)| moat_proto::agent::Route {
            destination: dst,
            gateway: gw.unwrap_or_else(|| default_gw.clone()),
        })
        .collect();
    moat_proto::agent::ConfigureNetworkRequest {
        interfaces: vec![moat_proto::agent::NetworkInterface {
            mac: mac.to_string(),
            addresses: ips.into_iter().map(|ip| ip.address).collect(),
            mtu,
        }],
        routes,
    }
}

impl Pods {
    /// The pod's cgroup under its CRI `cgroup_parent`: the one its VMM will
    /// run in, or a native pod's (`None` without a writable cgroup v2
    /// hierarchy, said once in the log; a native pod needs one).
    fn pod_cgroup(
        &self,
        config: &PodSandboxConfig,
        id: &str,
        kind: HandlerKind,
    ) -> Result<Option<std::path::PathBuf>, PodError> {
        let parent = config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroup_parent.as_str());
        let leaf = match kind {
            HandlerKind::Microvm => format!("moat-vmm-{id}"),
            HandlerKind::Oci => format!("moat-pod-{id}"),
        };
        let rel = cgroup::path_under(&self.config.cgroup_driver, parent, &leaf)
            .map_err(|e| PodError::Invalid(e.to_string()))?;
        let available = cgroup::available(Path::new(cgroup::CGROUP_ROOT));
        if !available && kind == HandlerKind::Oci {
            return Err(PodError::Precondition(format!(
                "a native pod needs a writable cgroup v2 hierarchy at {}",
                cgroup::CGROUP_ROOT
            )));
        }
        if !available {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "no writable cgroup v2 hierarchy at {}: VMMs run in moatd's cgroup",
                    cgroup::CGROUP_ROOT
                )
            });
            return Ok(None);
        }
        Ok(Some(rel))
    }

    /// The lowest uid of the jail range no sandbox record holds (`None` when
    /// VMMs are not jailed); the caller holds `uid_pick` until the new
    /// record is stored.
    fn free_vmm_uid(&self) -> Result<Option<u32>, PodError> {
        let jail = self.config.vmm_jail;
        if !jail.enabled {
            return Ok(None);
        }
        let taken: std::collections::HashSet<u32> = self
            .store
            .values::<SandboxRecord>(SANDBOXES)?
            .into_iter()
            .filter_map(|r| r.vmm_uid)
            .collect();
        (jail.uid_start..jail.uid_start + jail.uid_count)
            .find(|u| !taken.contains(u))
            .map(Some)
            .ok_or_else(|| {
                PodError::Precondition(format!(
                    "every VMM uid of vmm_jail ({} from {}) is in use",
                    jail.uid_count, jail.uid_start
                ))
            })
    }

    /// RunPodSandbox: returns the new sandbox's id once its agent answered.
    pub async fn run(
        &self,
        config: PodSandboxConfig,
        handler_name: &str,
    ) -> Result<String, PodError> {
        validate(&config)?;
        let handler_name = if handler_name.is_empty() {
            self.config.default_runtime_handler.as_str()
        } else {
            handler_name
        };
        let handler = self
            .config
            .runtime_handlers
            .get(handler_name)
            .ok_or_else(|| {
                PodError::Invalid(format!("runtime_handler: unknown handler {handler_name:?}"))
            })?
            .clone();
        // The one place that decides what a pod may ask of its handler.
        match handler.kind {
            HandlerKind::Microvm => {
                no_host_namespaces(&config)?;
                if !handler.guest_privileged {
                    no_privileged(&config)?;
                }
            }
            HandlerKind::Oci => native_sysctls(&config)?,
        }
        let host_network = handler.kind == HandlerKind::Oci && uses_host(&config, "network");
        if self.cni.is_none() && !host_network {
            return Err(PodError::Precondition(format!(
                "no CNI network configured in {}: pods need one",
                self.config.cni_conf_dir.display()
            )));
        }
        let id = crate::ids::new_id().map_err(caused("reading /dev/urandom"))?;
        let _name = self.reserve_name(&config.metadata.clone().unwrap_or_default(), &id)?;
        let _guard = self.locks.lock(&id).await;
        let (vcpus, memory_mib) = vm_size(&config, &handler);
        let vmm_cgroup = self.pod_cgroup(&config, &id, handler.kind)?;
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            runtime_handler: handler_name.to_string(),
            kind: handler.kind,
            state: SandboxState::Creating,
            created_at: crate::clock::now_ns(),
            netns: None,
            cni: None,
            ips: Vec::new(),
            // A short directory name keeps the VM's Unix socket paths within
            // the sockaddr_un limit.
            vm_paths: VmPaths {
                dir: self.config.run_dir.join(&id[..16]),
            },
            vm: None,
            fs_daemon: None,
            vmm_cgroup,
            vmm_uid: None,
            vcpus,
            memory_mib,
            exit_reason: None,
            guest: Default::default(),
        };
        // Recorded first, so a crash part-way is cleaned up at the next start;
        // the uid is taken by being recorded.
        {
            let _pick = self.uid_pick.lock().unwrap_or_else(|p| p.into_inner());
            if handler.kind == HandlerKind::Microvm {
                rec.vmm_uid = self.free_vmm_uid()?;
            }
            self.store.put(SANDBOXES, &id, &rec)?;
        }
        crash_point::here(crash_point::RUN_POD_RECORDED);
        let md = rec.metadata();
        tracing::info!(%id, pod = %md.name, namespace = %md.namespace, vcpus, memory_mib, "creating pod sandbox");
        let mut boots = 0;
        loop {
            boots += 1;
            let up = match handler.kind {
                HandlerKind::Microvm => self.bring_up(&mut rec, &handler).await,
                HandlerKind::Oci => self.bring_up_native(&mut rec, &handler).await,
            };
            match up {
                Ok(()) => {
                    crash_point::here(crash_point::RUN_POD_AGENT);
                    rec.state = SandboxState::Ready;
                    self.store.put(SANDBOXES, &id, &rec)?;
                    return Ok(id);
                }
                Err(e) => {
                    tracing::warn!(%id, "pod sandbox failed to start: {}", crate::chain(&e));
                    self.tear_down(&mut rec).await;
                    let _ = std::fs::remove_dir_all(&rec.vm_paths.dir);
                    // A guest that hung or reset while booting (only moat's
                    // kernel and agent had run, no pod code) gets one fresh
                    // VM, sooner than kubelet's back-off would retry; a VM
                    // that could not start at all does not.
                    if matches!(e, PodError::BootTimeout(_) | PodError::BootCrash(_)) && boots < 2 {
                        tracing::warn!(%id, "the pod VM failed while booting; booting a new one");
                        continue;
                    }
                    self.store.delete(SANDBOXES, &id)?;
                    return Err(e);
                }
            }
        }
    }

    /// Has the pod's agent set the sandbox up: hostname, hosts, DNS,
    /// sysctls and the holder of the namespaces the pod shares (UTS unless
    /// `share_uts` is false: a hostNetwork native pod has the node's).
    async fn create_sandbox(
        &self,
        rec: &mut SandboxRecord,
        agent: &mut moat_proto::agent::agent_client::AgentClient<tonic::transport::Channel>,
        share_uts: bool,
    ) -> Result<(), PodError> {
        let shares = pod_shares(&rec.config);
        let dns = rec.config.dns_config.clone().unwrap_or_default();
        let linux = rec.config.linux.clone().unwrap_or_default();
        let hostname = pod_hostname(&rec.config)?;
        let limit = Duration::from_secs(30);
        let late = |what: &str| failed(format!("agent {what}: no answer within 30 s"));
        let created = tokio::time::timeout(
            limit,
            agent.create_sandbox(moat_proto::agent::CreateSandboxRequest {
                sandbox_id: rec.id.clone(),
                hostname,
                dns: Some(moat_proto::agent::DnsConfig {
                    servers: dns.servers,
                    searches: dns.searches,
                    options: dns.options,
                }),
                hosts: Vec::new(),
                sysctls: linux.sysctls,
                share_ipc: shares.ipc,
                share_pid: shares.pid,
                share_uts,
            }),
        )
        .await
        .map_err(|_| late("CreateSandbox"))?
        .map_err(|s| failed(format!("agent CreateSandbox: {}", s.message())))?
        .into_inner();
        rec.guest = super::record::GuestSandbox {
            namespace_paths: created.namespace_paths.into_iter().collect(),
            hosts_path: created.hosts_path,
            resolv_conf_path: created.resolv_conf_path,
            hostname_path: created.hostname_path,
        };
        Ok(())
    }

    /// Creates the pod's network namespace and has the CNI plugins attach
    /// it, recording each step.
    async fn attach_network(
        &self,
        rec: &mut SandboxRecord,
        cni: &crate::network::CniNetwork,
    ) -> Result<NetNs, PodError> {
        // The path is recorded before the namespace exists, so a crash
        // in between leaves nothing recovery cannot find.
        rec.netns = Some(self.netns_dir().join(&rec.id));
        self.store.put(SANDBOXES, &rec.id, rec)?;
        let ns =
            NetNs::create(&self.netns_dir(), &rec.id).map_err(caused("creating the pod netns"))?;
        crash_point::here(crash_point::RUN_POD_NETNS);
        let md = rec.metadata();
        let args = capability_args(&rec.config, &self.pod_cidrs()?).map_err(PodError::Invalid)?;
        let result = cni
            .add(&attachment(&rec.id, &md, ns.path(), &args))
            .await
            .map_err(caused("CNI ADD"))?;
        crash_point::here(crash_point::RUN_POD_CNI);
        rec.ips = result
            .ips()
            .iter()
            .map(|ip| ip.address.split('/').next().unwrap_or("").to_string())
            .collect();
        rec.cni = Some(result);
        self.store.put(SANDBOXES, &rec.id, rec)?;
        Ok(ns)
    }

    async fn bring_up(
        &self,
        rec: &mut SandboxRecord,
        handler: &crate::config::RuntimeHandler,
    ) -> Result<(), PodError> {
        let started = std::time::Instant::now();
        let mut netns = None;
        let mut tap_file = None;
        let mut net = None;
        let mut guest_nic = None;
        if let Some(cni) = &self.cni {
            let ns = self.attach_network(rec, cni).await?;
            let info = tap::setup(&ns, POD_IFNAME, POD_TAP).map_err(caused("pod TAP"))?;
            crash_point::here(crash_point::RUN_POD_TAP);
            guest_nic = Some((info.mac.clone(), info.mtu));
            net = Some(NetConfig {
                tap: None,
                tap_fd: Some(crate::vm::launch::VMM_TAP_FD),
                mac: Some(info.mac),
            });
            tap_file = Some(info.file);
            netns = Some(ns);
        }
        let network_ms = started.elapsed().as_millis() as u64;
        let mut vm = VmConfig::new(handler.kernel.clone());
        vm.jail = rec.vmm_uid.map(|uid| JailConfig {
            uid,
            gid: uid,
            root: rec.vm_paths.dir.clone(),
        });
        vm.initrd = Some(handler.initramfs.clone());
        vm.cpus = rec.vcpus;
        vm.memory_mib = rec.memory_mib;
        vm.blk_slots = handler.blk_slots;
        vm.net = net;
        let spec = VmSpec {
            vmm: handler.vmm_binary(),
            vm,
        };
        // The pod's volumes: its share and the virtiofsd serving it, whose
        // socket the VMM gets connected.
        crate::vm::volumes::prepare(&rec.vm_paths).map_err(caused("the pod's volume share"))?;
        let fs_procs = match &rec.vmm_cgroup {
            Some(rel) => Some(
                cgroup::create(
                    Path::new(cgroup::CGROUP_ROOT),
                    &cgroup::fs_daemon_path(rel),
                    Limits::FS_DAEMON,
                )
                .map_err(caused("the virtiofsd's cgroup"))?,
            ),
            None => None,
        };
        let (daemon, mut fs_child, fs_stream) =
            crate::vm::volumes::spawn_daemon(&handler.virtiofsd, &rec.vm_paths, fs_procs.as_ref())
                .map_err(caused("starting the pod's virtiofsd"))?;
        drop(fs_procs);
        rec.fs_daemon = Some(daemon);
        self.store.put(SANDBOXES, &rec.id, rec)?;
        tokio::spawn(async move {
            let _ = fs_child.wait().await;
        });
        let procs = match &rec.vmm_cgroup {
            Some(rel) => Some(
                cgroup::create(
                    Path::new(cgroup::CGROUP_ROOT),
                    rel,
                    Limits::for_vm(rec.memory_mib, rec.vcpus),
                )
                .map_err(caused("the VMM's cgroup"))?,
            ),
            None => None,
        };
        let (vm, mut child) = launch(
            &spec,
            &rec.vm_paths,
            netns.as_ref(),
            tap_file.as_ref(),
            procs.as_ref(),
            Some(&fs_stream),
        )
        .map_err(caused("starting the VM"))?;
        // The VMM holds the daemon's one connection now: the daemon ends
        // when the VMM does.
        drop((procs, tap_file, fs_stream));
        // A crash before the record holds the pid: recovery finds the VMM
        // by its config path (`vm::launch::running_vmms`).
        crash_point::here(crash_point::RUN_POD_VMM);
        rec.vm = Some(vm);
        self.store.put(SANDBOXES, &rec.id, rec)?;
        let timeout = Duration::from_secs(self.config.agent_timeout_secs);
        let mut agent = wait_for_agent(&rec.vm_paths, &mut child, timeout)
            .await
            .map_err(|e| {
                match (
                    e.downcast_ref::<crate::vm::launch::AgentTimeout>(),
                    e.downcast_ref::<crate::vm::launch::VmStopped>(),
                ) {
                    (Some(t), _) => PodError::BootTimeout(t.to_string()),
                    (_, Some(s)) if s.guest_reset() => PodError::BootCrash(s.to_string()),
                    _ => caused("waiting for the agent")(e),
                }
            })?;
        // moatd reaps its own child; after a restart the VMM is watched by pid.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let booted_ms = started.elapsed().as_millis() as u64;
        self.create_sandbox(rec, &mut agent, true).await?;
        let limit = Duration::from_secs(30);
        let late = |what: &str| failed(format!("agent {what}: no answer within 30 s"));
        if let (Some((mac, mtu)), Some(cni)) = (guest_nic, &rec.cni) {
            tokio::time::timeout(
                limit,
                agent.configure_network(guest_network(&mac, mtu, cni)),
            )
            .await
            .map_err(|_| late("ConfigureNetwork"))?
            .map_err(|s| failed(format!("agent ConfigureNetwork: {}", s.message())))?;
        }
        tracing::info!(
            id = %rec.id,
            network_ms,
            agent_ready_ms = booted_ms,
            ms = started.elapsed().as_millis() as u64,
            "pod sandbox ready"
        );
        Ok(())
    }

    /// A native pod: its network (CNI, unless it has the node's), then its
    /// agent on the host, which makes the pod's namespace holder.
    async fn bring_up_native(
        &self,
        rec: &mut SandboxRecord,
        handler: &crate::config::RuntimeHandler,
    ) -> Result<(), PodError> {
        let started = std::time::Instant::now();
        let host_network = uses_host(&rec.config, "network");
        let netns = match (&self.cni, host_network) {
            (_, true) => None,
            (Some(cni), false) => {
                let ns = self.attach_network(rec, cni).await?;
                ns.loopback_up().map_err(caused("the pod's loopback"))?;
                Some(ns)
            }
            (None, false) => return Err(failed("no CNI network configured")),
        };
        let network_ms = started.elapsed().as_millis() as u64;
        let cgroup = rec
            .vmm_cgroup
            .clone()
            .ok_or_else(|| failed("a native pod needs its cgroup"))?;
        let (agent, mut child) =
            native::spawn_agent(handler, &rec.vm_paths, netns.as_ref(), &cgroup)
                .map_err(caused("starting the pod's agent"))?;
        rec.vm = Some(agent);
        self.store.put(SANDBOXES, &rec.id, rec)?;
        let timeout = Duration::from_secs(self.config.agent_timeout_secs);
        let mut agent = native::wait_for_agent(&rec.vm_paths, &mut child, timeout)
            .await
            .map_err(caused("waiting for the pod's agent"))?;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        self.create_sandbox(rec, &mut agent, !host_network).await?;
        tracing::info!(
            id = %rec.id,
            network_ms,
            ms = started.elapsed().as_millis() as u64,
            "native pod sandbox ready"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_network_from_a_cni_result() {
        let cni = crate::network::CniResult {
            raw: serde_json::json!({"ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1"},{"address":"fd00::5/64"}],
                                    "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.96.0.0/12","gw":"10.88.0.254"},{"dst":"::/0"}]}),
        };
        let req = guest_network("2a:00:00:00:00:01", 1450, &cni);
        assert_eq!(
            req.interfaces[0].addresses,
            vec!["10.88.0.5/16".to_string()]
        );
        assert_eq!(req.interfaces[0].mtu, 1450);
        let routes: Vec<_> = req
            .routes
            .iter()
            .map(|r| (r.destination.as_str(), r.gateway.as_str()))
            .collect();
        assert_eq!(
            routes,
            vec![("0.0.0.0/0", "10.88.0.1"), ("10.96.0.0/12", "10.88.0.254")]
        );
    }

    #[test]
    fn namespace_sharing_follows_cri_defaults() {
        assert_eq!(
            pod_shares(&PodSandboxConfig::default()),
            Shares {
                ipc: true,
                pid: false
            }
        );
    }
}
