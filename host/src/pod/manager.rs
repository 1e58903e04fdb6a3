//! Pod sandbox lifecycle: RunPodSandbox builds network namespace → CNI →
//! TAP → moat-vmm → agent, undoing every step if a later one fails; stop and
//! remove release all of it; records in the state store let a restarted
//! moatd find running VMs again and clean up what a crash left half-made.

use super::locks::PodLocks;
use super::record::{SandboxRecord, SandboxState};
use super::sizing::vm_size;
use crate::agent::AgentPool;
use crate::config::Config;
use crate::network::capability_args::capability_args;
use crate::network::cni::Attachment;
use crate::network::{tap, CniNetwork, NetNs};
use crate::store::{Store, StoreError, RUNTIME, SANDBOXES};

/// The key of the pod CIDRs in the runtime table.
const POD_CIDRS: &str = "pod_cidrs";
use crate::vm::launch::{launch, wait_for_agent};
use crate::vm::{ControlClient, VmPaths, VmSpec};
use moat_proto::cri::{NamespaceMode, PodSandboxConfig, PodSandboxMetadata};
use moat_vmm::config::{NetConfig, VmConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Why a sandbox operation failed; maps onto gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Bad request (InvalidArgument); names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such sandbox (NotFound).
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    /// Cannot be done now (FailedPrecondition).
    #[error("{0}")]
    Precondition(String),
    /// Setting the sandbox up failed (Internal).
    #[error("{0}")]
    Failed(String),
    /// The VM booted but its agent never answered (Internal).
    #[error("{0}")]
    BootTimeout(String),
    /// The guest reset before its agent answered (Internal).
    #[error("{0}")]
    BootCrash(String),
    /// The state store failed (Internal).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn failed(e: impl std::fmt::Display) -> PodError {
    PodError::Failed(e.to_string())
}

/// Interface the CNI plugins create in the pod namespace.
use crate::network::POD_IFNAME;
/// The TAP joined to it.
const POD_TAP: &str = "tap0";

/// All pod sandboxes of this moatd.
pub struct Pods {
    config: Config,
    store: Store,
    cni: Option<CniNetwork>,
    /// Serializes changes to one sandbox, shared with its containers.
    locks: PodLocks,
    /// Channels to the pods' agents, shared with the containers.
    agents: AgentPool,
}

fn validate(config: &PodSandboxConfig) -> Result<(), PodError> {
    let Some(md) = &config.metadata else {
        return Err(PodError::Invalid("config.metadata: required".into()));
    };
    for (field, value) in [
        ("name", &md.name),
        ("namespace", &md.namespace),
        ("uid", &md.uid),
    ] {
        if value.trim().is_empty() {
            return Err(PodError::Invalid(format!(
                "config.metadata.{field}: required"
            )));
        }
        crate::network::cni::check_cni_arg(&format!("config.metadata.{field}"), value)
            .map_err(PodError::Invalid)?;
    }
    pod_hostname(config)?;
    crate::logs::location::check_log_directory(&config.log_directory).map_err(PodError::Invalid)?;
    run_as_group_needs_user(config)?;
    capability_args(config, &[]).map_err(PodError::Invalid)?;
    for key in config.linux.iter().flat_map(|l| l.sysctls.keys()) {
        if moat_proto::sysctl_namespace(key).is_none() {
            return Err(PodError::Invalid(format!(
                "config.linux.sysctls[{key:?}]: not a namespaced sysctl; a pod may set \
                 kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, kernel.hostname, \
                 kernel.domainname and net.*"
            )));
        }
    }
    Ok(())
}

/// The pod's hostname: `config.hostname`, or, when empty, the pod name cut
/// to 63 characters with trailing `-` and `.` trimmed, as kubelet derives
/// it. Either must be an RFC 1123 hostname of 1..=64 bytes.
pub(crate) fn pod_hostname(config: &PodSandboxConfig) -> Result<String, PodError> {
    let (field, hostname) = if config.hostname.is_empty() {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        let cut: String = name.chars().take(63).collect();
        (
            "config.metadata.name (the hostname when config.hostname is empty)",
            cut.trim_end_matches(['-', '.']).to_string(),
        )
    } else {
        ("config.hostname", config.hostname.clone())
    };
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(PodError::Invalid(format!(
            "{field}: {hostname:?} must be 1..=64 bytes"
        )));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !hostname.split('.').all(label_ok) {
        return Err(PodError::Invalid(format!(
            "{field}: {hostname:?} is not an RFC 1123 hostname"
        )));
    }
    Ok(hostname)
}

/// CRI: `run_as_group` may only be set together with `run_as_user` or
/// `run_as_username`.
fn run_as_group_needs_user(config: &PodSandboxConfig) -> Result<(), PodError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if let Some(sc) = sc {
        if sc.run_as_group.is_some() && sc.run_as_user.is_none() {
            return Err(PodError::Invalid(
                "config.linux.security_context.run_as_group: only allowed together with run_as_user"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn host_network(config: &PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == NamespaceMode::Node as i32)
}

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
fn attachment<'a>(
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
    /// The sandbox manager; `cni` is None when no network is configured.
    pub fn new(
        config: Config,
        store: Store,
        cni: Option<CniNetwork>,
        locks: PodLocks,
        agents: AgentPool,
    ) -> Self {
        Self {
            config,
            store,
            cni,
            locks,
            agents,
        }
    }

    /// The CNI network, if one is configured.
    pub fn network(&self) -> Option<&CniNetwork> {
        self.cni.as_ref()
    }

    fn netns_dir(&self) -> PathBuf {
        self.config.run_dir.join("netns")
    }

    /// Every sandbox record.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, PodError> {
        Ok(self.store.values(SANDBOXES)?)
    }

    /// One sandbox by its full id. Prefixes are not resolved: a CRI client
    /// resolves them (as crictl does) so that a short id never removes
    /// another pod.
    pub fn get(&self, id: &str) -> Result<SandboxRecord, PodError> {
        if id.is_empty() {
            return Err(PodError::Invalid("pod_sandbox_id: required".into()));
        }
        self.store
            .get(SANDBOXES, id)?
            .ok_or_else(|| PodError::NotFound(id.to_string()))
    }

    /// Records the node's pod CIDRs kubelet sends (UpdateRuntimeConfig's
    /// `pod_cidr`), for the CNI `ipRanges` capability of later pods.
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<(), PodError> {
        let cidrs = crate::network::capability_args::parse_pod_cidrs(pod_cidr).map_err(|e| {
            PodError::Invalid(format!("runtime_config.network_config.pod_cidr: {e}"))
        })?;
        self.store.put(RUNTIME, POD_CIDRS, &cidrs)?;
        Ok(())
    }

    /// The node's pod CIDRs, as kubelet last sent them (none until it does).
    pub fn pod_cidrs(&self) -> Result<Vec<String>, PodError> {
        Ok(self.store.get(RUNTIME, POD_CIDRS)?.unwrap_or_default())
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
        let host_net = host_network(&config);
        if !host_net && self.cni.is_none() {
            return Err(PodError::Precondition(format!(
                "no CNI network configured in {}: pods need one (or host networking)",
                self.config.cni_conf_dir.display()
            )));
        }
        let id = crate::ids::new_id().map_err(|e| failed(format!("reading /dev/urandom: {e}")))?;
        let _guard = self.locks.lock(&id).await;
        let (vcpus, memory_mib) = vm_size(&config, &handler);
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            runtime_handler: handler_name.to_string(),
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
            vcpus,
            memory_mib,
            exit_reason: None,
            guest: Default::default(),
        };
        // Recorded first, so a crash part-way is cleaned up at the next start.
        self.store.put(SANDBOXES, &id, &rec)?;
        let md = rec.metadata();
        tracing::info!(%id, pod = %md.name, namespace = %md.namespace, vcpus, memory_mib, "creating pod sandbox");
        let mut boots = 0;
        loop {
            boots += 1;
            match self.bring_up(&mut rec, &handler).await {
                Ok(()) => {
                    rec.state = SandboxState::Ready;
                    self.store.put(SANDBOXES, &id, &rec)?;
                    return Ok(id);
                }
                Err(e) => {
                    tracing::warn!(%id, "pod sandbox failed to start: {e}");
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

    async fn bring_up(
        &self,
        rec: &mut SandboxRecord,
        handler: &crate::config::RuntimeHandler,
    ) -> Result<(), PodError> {
        let started = std::time::Instant::now();
        let mut netns = None;
        let mut net = None;
        let mut guest_nic = None;
        if let (false, Some(cni)) = (host_network(&rec.config), &self.cni) {
            let ns = NetNs::create(&self.netns_dir(), &rec.id)
                .map_err(|e| failed(format!("creating the pod netns: {e}")))?;
            rec.netns = Some(ns.path().to_path_buf());
            self.store.put(SANDBOXES, &rec.id, rec)?;
            let md = rec.metadata();
            let args =
                capability_args(&rec.config, &self.pod_cidrs()?).map_err(PodError::Invalid)?;
            let result = cni
                .add(&attachment(&rec.id, &md, ns.path(), &args))
                .await
                .map_err(failed)?;
            rec.ips = result
                .ips()
                .iter()
                .map(|ip| ip.address.split('/').next().unwrap_or("").to_string())
                .collect();
            rec.cni = Some(result);
            self.store.put(SANDBOXES, &rec.id, rec)?;
            let info = tap::setup(&ns, POD_IFNAME, POD_TAP)
                .map_err(|e| failed(format!("pod TAP: {e}")))?;
            guest_nic = Some((info.mac.clone(), info.mtu));
            net = Some(NetConfig {
                tap: Some(info.tap),
                tap_fd: None,
                mac: Some(info.mac),
            });
            netns = Some(ns);
        }
        let network_ms = started.elapsed().as_millis() as u64;
        let mut vm = VmConfig::new(handler.kernel.clone());
        vm.initrd = Some(handler.initramfs.clone());
        vm.cpus = rec.vcpus;
        vm.memory_mib = rec.memory_mib;
        vm.blk_slots = handler.blk_slots;
        vm.net = net;
        let spec = VmSpec {
            vmm: handler.vmm_binary(),
            vm,
        };
        let (vm, mut child) =
            launch(&spec, &rec.vm_paths, netns.as_ref()).map_err(|e| failed(format!("{e:#}")))?;
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
                    _ => failed(format!("{e:#}")),
                }
            })?;
        // moatd reaps its own child; after a restart the VMM is watched by pid.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let booted_ms = started.elapsed().as_millis() as u64;
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
                share_uts: true,
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

    /// Stops the VM and releases the network; leaves the record.
    async fn tear_down(&self, rec: &mut SandboxRecord) {
        if let Some(vm) = rec.vm.take() {
            if vm.is_alive() {
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
        for sock in [rec.vm_paths.vsock(), rec.vm_paths.api()] {
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
        if let Err(e) = std::fs::remove_dir_all(&rec.vm_paths.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(failed(format!(
                    "removing {}: {e}",
                    rec.vm_paths.dir.display()
                )));
            }
        }
        self.store.delete(SANDBOXES, &rec.id)?;
        drop(guard);
        self.locks.forget(&rec.id).await;
        tracing::info!(id = %rec.id, "pod sandbox removed");
        Ok(())
    }

    /// Refreshes a record's state from its VM (a dead VM makes it NotReady).
    pub fn refresh(&self, mut rec: SandboxRecord) -> Result<SandboxRecord, PodError> {
        if rec.state == SandboxState::Ready && !rec.vm.is_some_and(|vm| vm.is_alive()) {
            rec.state = SandboxState::NotReady;
            rec.exit_reason = Some(format!(
                "the pod VM stopped: {}",
                crate::vm::launch::tail(&rec.vm_paths.vmm_log(), 1)
            ));
            rec.vm = None;
            self.store.put(SANDBOXES, &rec.id, &rec)?;
        }
        Ok(rec)
    }

    /// At start: keeps sandboxes whose VM still runs, marks dead ones
    /// NotReady, and releases what half-created ones took.
    pub async fn recover(&self) -> Result<(), PodError> {
        for rec in self.list()? {
            match rec.state {
                SandboxState::Creating => {
                    tracing::warn!(id = %rec.id, "cleaning up a sandbox left half-created");
                    let mut rec = rec;
                    self.tear_down(&mut rec).await;
                    let _ = std::fs::remove_dir_all(&rec.vm_paths.dir);
                    self.store.delete(SANDBOXES, &rec.id)?;
                }
                SandboxState::Ready => {
                    let rec = self.refresh(rec)?;
                    tracing::info!(id = %rec.id, state = ?rec.state, "recovered pod sandbox");
                }
                SandboxState::NotReady => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::PodSandboxMetadata;

    #[test]
    fn metadata_fields_are_required() {
        let mut c = PodSandboxConfig::default();
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("config.metadata"));
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "".into(),
            attempt: 0,
        });
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("config.metadata.uid"));
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        assert!(validate(&c).is_ok());
        // Names go into CNI_ARGS, which cannot escape `;` or `=`.
        c.metadata = Some(PodSandboxMetadata {
            name: "web;IP=10.0.0.9".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        let e = validate(&c).unwrap_err().to_string();
        assert!(
            e.contains("config.metadata.name") && e.contains("CNI_ARGS"),
            "{e}"
        );
        c.metadata = Some(PodSandboxMetadata {
            name: "a".into(),
            namespace: "b".into(),
            uid: "u".into(),
            attempt: 0,
        });
        c.log_directory = "/var/log/pods/../../../run".into();
        let e = validate(&c).unwrap_err().to_string();
        assert!(e.contains("config.log_directory"), "{e}");
    }

    #[test]
    fn hostname_defaults_to_the_pod_name_as_kubelet_cuts_it() {
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("{}-{}", "a".repeat(62), "b".repeat(40)),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        // 63 characters end in '-': trimmed, as kubelet does.
        assert_eq!(pod_hostname(&c).unwrap(), "a".repeat(62));
        assert!(validate(&c).is_ok());
        c.hostname = "web-0".into();
        assert_eq!(pod_hostname(&c).unwrap(), "web-0");
        c.hostname = "x".repeat(65);
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("config.hostname"));
        c.hostname = "bad_name".into();
        assert!(validate(&c).unwrap_err().to_string().contains("RFC 1123"));
    }

    #[test]
    fn run_as_group_alone_is_refused() {
        use moat_proto::cri::{Int64Value, LinuxPodSandboxConfig, LinuxSandboxSecurityContext};
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "p".into(),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    run_as_group: Some(Int64Value { value: 5 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("run_as_group"));
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(Int64Value { value: 5 });
        }
        if let Some(l) = c.linux.as_mut() {
            l.sysctls.insert("kernel.pid_max".into(), "1000".into());
        }
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("kernel.pid_max"));
        if let Some(l) = c.linux.as_mut() {
            l.sysctls.clear();
            l.sysctls
                .insert("kernel.shm_rmid_forced".into(), "1".into());
        }
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(Int64Value { value: 5 });
        }
        assert!(validate(&c).is_ok());
    }

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
