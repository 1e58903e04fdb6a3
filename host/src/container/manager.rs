//! Container lifecycle inside pod VMs: CreateContainer attaches the image's
//! block image to a free virtio-blk slot of the pod's VM, copies the mounts
//! in and has the agent create the container from the OCI spec; start runs
//! it and a monitor task streams its output to the CRI log and records how
//! it ends; stop signals (grace period, then SIGKILL); remove releases the
//! guest container, the slot and the record.

use super::io::{copy_output, OutputCap};
use super::mounts;
use super::record::{ContainerRecord, ContainerState};
use super::spec::{self, SpecInput};
use super::ContainerError;
use crate::config::Config;
use crate::cri::events::EventBus;
use crate::image::ImageRecord;
use crate::logs::cri_log::CriLogWriter;
use crate::pod::{SandboxRecord, SandboxState};
use crate::store::{Store, CONTAINERS};
use crate::vm::ControlClient;
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::{
    block_device, BlockDevice, ContainerStatsResponse, OutputStream, RemoveContainerRequest,
    SignalProcessRequest, WaitProcessRequest,
};
use moat_proto::cri::{ContainerConfig, ContainerEventType, LinuxContainerResources};
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// Most output ExecSync returns per stream; the rest is dropped.
pub const EXEC_SYNC_OUTPUT_CAP: usize = 16 << 20;

/// How long the agent may take to answer one lifecycle call.
const AGENT_CALL: Duration = Duration::from_secs(60);

fn agent_err(what: &str) -> impl Fn(tonic::Status) -> ContainerError + '_ {
    move |s| ContainerError::from_agent(what, s)
}

/// The two channels to one agent.
#[derive(Clone)]
struct AgentChannels {
    bounded: AgentClient<Channel>,
    unbounded: AgentClient<Channel>,
}

/// A log file shared by a container's output pumps and ReopenContainerLog.
type SharedLog = Arc<StdMutex<CriLogWriter>>;

struct Inner {
    store: Store,
    events: EventBus,
    /// Agent channels per pod VM (HTTP/2, multiplexed): one whose calls
    /// time out after [`AGENT_CALL`], one without a limit for waits and
    /// output streams.
    agents: StdMutex<HashMap<String, AgentChannels>>,
    /// Open logs of running containers.
    logs: StdMutex<HashMap<String, SharedLog>>,
    /// Serializes slot allocation and lifecycle changes within one pod.
    pod_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Last CPU sample per container, for usage_nano_cores.
    cpu_samples: StdMutex<HashMap<String, (i64, u64)>>,
}

/// All containers of this moatd.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
    blk_slots: HashMap<String, u32>,
}

/// A container's CPU and memory usage, as sampled from the guest.
pub struct Usage {
    /// The agent's answer.
    pub stats: ContainerStatsResponse,
    /// CPU use since the previous sample, in nanocores (None on the first).
    pub nano_cores: Option<u64>,
}

impl Containers {
    /// The container manager over the state store.
    pub fn new(config: &Config, store: Store, events: EventBus) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                agents: StdMutex::new(HashMap::new()),
                logs: StdMutex::new(HashMap::new()),
                pod_locks: Mutex::new(HashMap::new()),
                cpu_samples: StdMutex::new(HashMap::new()),
            }),
            blk_slots: config
                .runtime_handlers
                .iter()
                .map(|(k, h)| (k.clone(), h.blk_slots))
                .collect(),
        }
    }

    async fn pod_lock(&self, sandbox_id: &str) -> Arc<Mutex<()>> {
        self.inner
            .pod_locks
            .lock()
            .await
            .entry(sandbox_id.to_string())
            .or_default()
            .clone()
    }

    /// The agent of a pod's VM (cached channel).
    pub async fn agent(&self, sb: &SandboxRecord) -> Result<AgentClient<Channel>, ContainerError> {
        agent_of(&self.inner, sb).await
    }

    /// Every container record.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.inner.store.values(CONTAINERS)?)
    }

    /// One container by its full id (prefixes are the client's to
    /// resolve, as for pods).
    pub fn get(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        if id.is_empty() {
            return Err(ContainerError::Invalid("container_id: required".into()));
        }
        self.inner
            .store
            .get(CONTAINERS, id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn put(&self, rec: &ContainerRecord) -> Result<(), ContainerError> {
        Ok(self.inner.store.put(CONTAINERS, &rec.id, rec)?)
    }

    /// Brings a record in line with its pod: a container of a pod whose VM
    /// is gone has exited.
    pub fn refresh(
        &self,
        mut rec: ContainerRecord,
        sandbox: Option<&SandboxRecord>,
    ) -> Result<ContainerRecord, ContainerError> {
        let vm_alive = sandbox
            .is_some_and(|s| s.state == SandboxState::Ready && s.vm.is_some_and(|v| v.is_alive()));
        if rec.state != ContainerState::Exited && !vm_alive {
            mark_exited(&mut rec, 255, "Error", "the pod VM stopped");
            self.put(&rec)?;
        }
        Ok(rec)
    }

    /// CreateContainer.
    pub async fn create(
        &self,
        sb: &SandboxRecord,
        config: ContainerConfig,
        image: ImageRecord,
    ) -> Result<String, ContainerError> {
        let started = Instant::now();
        let name = match &config.metadata {
            Some(m) if !m.name.trim().is_empty() => m.name.clone(),
            _ => {
                return Err(ContainerError::Invalid(
                    "config.metadata.name: required".into(),
                ))
            }
        };
        if sb.state != SandboxState::Ready || !sb.vm.is_some_and(|v| v.is_alive()) {
            return Err(ContainerError::Precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let log_path = crate::logs::location::log_file(&sb.config.log_directory, &config.log_path)
            .map_err(ContainerError::Invalid)?;
        let lock = self.pod_lock(&sb.id).await;
        let _g = lock.lock().await;
        let siblings: Vec<ContainerRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sb.id)
            .collect();
        let attempt = config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
        if siblings.iter().any(|r| {
            r.config
                .metadata
                .as_ref()
                .is_some_and(|m| m.name == name && m.attempt == attempt)
        }) {
            return Err(ContainerError::Exists(format!(
                "a container named {name:?} (attempt {attempt}) already exists in pod sandbox {}",
                sb.id
            )));
        }
        // Containers of one pod that use the same image share its slot.
        let (slot, attach) = match siblings.iter().find(|r| r.image_id == image.id) {
            Some(r) => (r.slot, false),
            None => {
                let total = self
                    .blk_slots
                    .get(&sb.runtime_handler)
                    .copied()
                    .unwrap_or(0);
                let used: Vec<u32> = siblings.iter().map(|r| r.slot).collect();
                let free = (0..total).find(|s| !used.contains(s)).ok_or_else(|| {
                    ContainerError::Exhausted(format!(
                        "pod sandbox {}: all {total} image slots of its VM are in use (one per distinct image)",
                        sb.id
                    ))
                })?;
                (free, true)
            }
        };
        let localhost_seccomp = read_localhost_seccomp(&config)?;
        let mut agent = self.agent(sb).await?;
        let shared = mounts::share(&mut agent, &config.mounts).await?;
        let oci = spec::build(&SpecInput {
            config: &config,
            image_config: &image.config_json(),
            passwd: &image.passwd,
            group: &image.group,
            guest: &sb.guest,
            mounts: &shared,
            localhost_seccomp: localhost_seccomp.as_deref(),
        })
        .map_err(|e| ContainerError::Invalid(e.0))?;
        let spec_json = serde_json::to_value(&oci)
            .map_err(|e| ContainerError::Failed(format!("encoding the OCI spec: {e}")))?;
        let control = ControlClient::new(&sb.vm_paths.api());
        if attach {
            control
                .call(&moat_vmm::api::Request::AttachDrive {
                    slot,
                    path: image.block_image.clone(),
                    read_only: true,
                })
                .await
                .map_err(|e| ContainerError::Failed(format!("attaching the image: {e:#}")))?;
        }
        let id =
            crate::pod::manager::new_id().map_err(|e| ContainerError::Failed(e.to_string()))?;
        let created = tokio::time::timeout(
            AGENT_CALL,
            agent.create_container(moat_proto::agent::CreateContainerRequest {
                container_id: id.clone(),
                oci_spec: spec_json.to_string().into_bytes(),
                rootfs: Some(BlockDevice {
                    id: Some(block_device::Id::Serial(format!("moat-blk-{slot}"))),
                    fstype: "erofs".into(),
                    timeout_ms: 30_000,
                }),
                scratch_size_bytes: 0,
                stdin: config.stdin,
            }),
        )
        .await
        .map_err(|_| ContainerError::Failed("agent CreateContainer timed out".into()))
        .and_then(|r| r.map_err(agent_err("agent CreateContainer")));
        let pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(e) => {
                if attach {
                    let _ = control
                        .call(&moat_vmm::api::Request::DetachDrive { slot })
                        .await;
                }
                return Err(e);
            }
        };
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            image_ref: config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_id: image.id.clone(),
            image_digest: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            config,
            slot,
            spec: spec_json,
            log_path,
            state: ContainerState::Created,
            created_at: crate::clock::now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid,
        };
        self.put(&rec)?;
        tracing::info!(%id, pod = %sb.id, name = %name, slot, ms = started.elapsed().as_millis() as u64, "container created");
        self.inner
            .events
            .publish(&id, ContainerEventType::ContainerCreatedEvent, None);
        Ok(id)
    }

    /// StartContainer.
    pub async fn start(&self, id: &str, sb: &SandboxRecord) -> Result<(), ContainerError> {
        let started = Instant::now();
        let mut rec = self.get(id)?;
        let lock = self.pod_lock(&rec.sandbox_id).await;
        let _g = lock.lock().await;
        rec = self.get(&rec.id)?;
        if rec.state != ContainerState::Created {
            return Err(ContainerError::Precondition(format!(
                "container {} is {:?}, not created",
                rec.id, rec.state
            )));
        }
        let log = match &rec.log_path {
            Some(p) => Some(Arc::new(StdMutex::new(CriLogWriter::open(p).map_err(
                |e| ContainerError::Failed(format!("opening the log {}: {e}", p.display())),
            )?))),
            None => None,
        };
        let mut agent = self.agent(sb).await?;
        let res = tokio::time::timeout(
            AGENT_CALL,
            agent.start_container(moat_proto::agent::StartContainerRequest {
                container_id: rec.id.clone(),
            }),
        )
        .await
        .map_err(|_| ContainerError::Failed("agent StartContainer timed out".into()))
        .and_then(|r| r.map_err(agent_err("agent StartContainer")));
        if let Err(e) = res {
            mark_exited(&mut rec, 128, "StartError", &e.to_string());
            self.put(&rec)?;
            return Err(e);
        }
        rec.state = ContainerState::Running;
        rec.started_at = crate::clock::now_ns();
        self.put(&rec)?;
        if let Some(log) = &log {
            set_log(&self.inner, &rec.id, Some(log.clone()));
        }
        tracing::info!(id = %rec.id, ms = started.elapsed().as_millis() as u64,
            since_create_ms = (rec.started_at - rec.created_at) / 1_000_000, "container started");
        self.inner
            .events
            .publish(&rec.id, ContainerEventType::ContainerStartedEvent, None);
        tokio::spawn(monitor(self.inner.clone(), rec, sb.clone(), log));
        Ok(())
    }

    /// StopContainer: the image's stop signal (SIGTERM by default), then
    /// SIGKILL to every process of the container after `timeout` seconds.
    /// Stopping a stopped container succeeds.
    pub async fn stop(
        &self,
        id: &str,
        sb: Option<&SandboxRecord>,
        timeout: Duration,
        stop_signal: u32,
    ) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        let rec = self.refresh(rec, sb)?;
        let Some(sb) = sb else { return Ok(()) };
        match rec.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                let mut rec = rec;
                let mut agent = self.agent(sb).await?;
                let _ = agent
                    .remove_container(RemoveContainerRequest {
                        container_id: rec.id.clone(),
                        timeout_ms: 0,
                    })
                    .await;
                mark_exited(&mut rec, 137, "Error", "stopped before it was started");
                self.put(&rec)?;
                self.inner
                    .events
                    .publish(&rec.id, ContainerEventType::ContainerStoppedEvent, None);
                return Ok(());
            }
            ContainerState::Running => {}
        }
        let mut agent = self.agent(sb).await?;
        if !timeout.is_zero() {
            let sent = agent
                .signal_process(SignalProcessRequest {
                    container_id: rec.id.clone(),
                    exec_id: String::new(),
                    signal: stop_signal,
                    all: false,
                })
                .await;
            if sent.is_ok() && self.wait_exited(&rec.id, timeout).await? {
                return Ok(());
            }
        }
        let _ = agent
            .signal_process(SignalProcessRequest {
                container_id: rec.id.clone(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            })
            .await;
        if self.wait_exited(&rec.id, Duration::from_secs(10)).await? {
            return Ok(());
        }
        Err(ContainerError::Failed(format!(
            "container {} did not exit after SIGKILL",
            rec.id
        )))
    }

    /// Waits until the monitor records the container's exit.
    async fn wait_exited(&self, id: &str, timeout: Duration) -> Result<bool, ContainerError> {
        let deadline = crate::clock::deadline(timeout);
        loop {
            match self.inner.store.get::<ContainerRecord>(CONTAINERS, id)? {
                Some(r) if r.state != ContainerState::Exited => {}
                _ => return Ok(true),
            }
            if crate::clock::passed(deadline) {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// RemoveContainer: kills it if it runs, removes it from the guest,
    /// detaches its image slot when no other container uses it, and
    /// forgets it. Unknown ids succeed.
    pub async fn remove(&self, id: &str, sb: Option<&SandboxRecord>) -> Result<(), ContainerError> {
        let rec = match self.get(id) {
            Ok(r) => r,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rec = self.refresh(rec, sb)?;
        if rec.state != ContainerState::Exited {
            self.stop(&rec.id, sb, Duration::ZERO, libc::SIGKILL as u32)
                .await?;
        }
        let lock = self.pod_lock(&rec.sandbox_id).await;
        let _g = lock.lock().await;
        let vm_alive = sb.is_some_and(|s| s.vm.is_some_and(|v| v.is_alive()));
        if let (true, Some(sb)) = (vm_alive, sb) {
            let mut agent = self.agent(sb).await?;
            match agent
                .remove_container(RemoveContainerRequest {
                    container_id: rec.id.clone(),
                    timeout_ms: 0,
                })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(ContainerError::from_agent("agent RemoveContainer", s)),
            }
            let shared = self
                .list()?
                .iter()
                .any(|r| r.sandbox_id == rec.sandbox_id && r.id != rec.id && r.slot == rec.slot);
            if !shared {
                ControlClient::new(&sb.vm_paths.api())
                    .call(&moat_vmm::api::Request::DetachDrive { slot: rec.slot })
                    .await
                    .map_err(|e| ContainerError::Failed(format!("detaching the image: {e:#}")))?;
            }
        }
        set_log(&self.inner, &rec.id, None);
        if let Ok(mut s) = self.inner.cpu_samples.lock() {
            s.remove(&rec.id);
        }
        self.inner.store.delete(CONTAINERS, &rec.id)?;
        tracing::info!(id = %rec.id, "container removed");
        self.inner
            .events
            .publish(&rec.id, ContainerEventType::ContainerDeletedEvent, None);
        Ok(())
    }

    /// Called before a pod's VM is stopped: its containers are killed and
    /// recorded as exited, and its agent channel dropped.
    pub async fn pod_stopping(&self, sb: &SandboxRecord) -> Result<(), ContainerError> {
        let running: Vec<ContainerRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sb.id && r.state != ContainerState::Exited)
            .collect();
        let vm_alive = sb.vm.is_some_and(|v| v.is_alive());
        for rec in running {
            if vm_alive && rec.state == ContainerState::Running {
                if let Ok(mut agent) = self.agent(sb).await {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        agent.signal_process(SignalProcessRequest {
                            container_id: rec.id.clone(),
                            exec_id: String::new(),
                            signal: libc::SIGKILL as u32,
                            all: true,
                        }),
                    )
                    .await;
                    let _ = self.wait_exited(&rec.id, Duration::from_secs(3)).await;
                }
            }
            if let Some(mut r) = self
                .inner
                .store
                .get::<ContainerRecord>(CONTAINERS, &rec.id)?
            {
                if r.state != ContainerState::Exited {
                    mark_exited(&mut r, 137, "Error", "the pod sandbox was stopped");
                    self.put(&r)?;
                    self.inner.events.publish(
                        &r.id,
                        ContainerEventType::ContainerStoppedEvent,
                        None,
                    );
                }
            }
            set_log(&self.inner, &rec.id, None);
        }
        if let Ok(mut a) = self.inner.agents.lock() {
            a.remove(&sb.id);
        }
        Ok(())
    }

    /// Called when a pod is removed: forgets its containers.
    pub async fn pod_removed(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        self.inner.pod_locks.lock().await.remove(sandbox_id);
        for rec in self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
        {
            set_log(&self.inner, &rec.id, None);
            self.inner.store.delete(CONTAINERS, &rec.id)?;
            self.inner
                .events
                .publish(&rec.id, ContainerEventType::ContainerDeletedEvent, None);
        }
        if let Ok(mut a) = self.inner.agents.lock() {
            a.remove(sandbox_id);
        }
        Ok(())
    }

    /// At start: containers of running pods get their monitors back; those
    /// of stopped or vanished pods are recorded as exited or forgotten.
    pub fn recover(&self, sandboxes: &[SandboxRecord]) -> Result<(), ContainerError> {
        for rec in self.list()? {
            let Some(sb) = sandboxes.iter().find(|s| s.id == rec.sandbox_id) else {
                tracing::warn!(id = %rec.id, "forgetting a container whose pod is gone");
                self.inner.store.delete(CONTAINERS, &rec.id)?;
                continue;
            };
            let rec = self.refresh(rec, Some(sb))?;
            if rec.state == ContainerState::Running {
                let log = match &rec.log_path {
                    Some(p) => CriLogWriter::open(p)
                        .ok()
                        .map(|w| Arc::new(StdMutex::new(w))),
                    None => None,
                };
                if let Some(l) = &log {
                    set_log(&self.inner, &rec.id, Some(l.clone()));
                }
                tracing::info!(id = %rec.id, "watching a running container again");
                tokio::spawn(monitor(self.inner.clone(), rec, sb.clone(), log));
            }
        }
        Ok(())
    }

    /// ReopenContainerLog: a new file at the log path (after kubelet moved
    /// the old one away).
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let log = self
            .inner
            .logs
            .lock()
            .ok()
            .and_then(|l| l.get(&rec.id).cloned());
        match log {
            Some(l) => {
                let mut w = l
                    .lock()
                    .map_err(|_| ContainerError::Failed("log writer poisoned".into()))?;
                w.reopen()
                    .map_err(|e| ContainerError::Failed(format!("reopening the log: {e}")))
            }
            None => Err(ContainerError::Precondition(format!(
                "container {} has no log path",
                rec.id
            ))),
        }
    }

    /// ExecSync: runs `cmd` in the container and returns its exit code and
    /// output (each stream capped at [`EXEC_SYNC_OUTPUT_CAP`]); past
    /// `timeout` (if non-zero) the process is killed and DeadlineExceeded
    /// returned.
    pub async fn exec_sync(
        &self,
        id: &str,
        sb: &SandboxRecord,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("cmd: required".into()));
        }
        let rec = self.refresh(self.get(id)?, Some(sb))?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let mut process = rec.spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let exec_id = format!(
            "sync-{}",
            &crate::pod::manager::new_id().map_err(|e| ContainerError::Failed(e.to_string()))?
                [..16]
        );
        let mut agent = self.agent(sb).await?;
        agent
            .exec_process(moat_proto::agent::ExecProcessRequest {
                container_id: rec.id.clone(),
                exec_id: exec_id.clone(),
                process: process.to_string().into_bytes(),
                stdin: false,
            })
            .await
            .map_err(agent_err("agent ExecProcess"))?;
        let streams = waiter_of(&self.inner, sb).await?;
        let out = copy_output(
            streams.clone(),
            rec.id.clone(),
            exec_id.clone(),
            OutputStream::Stdout,
            OutputCap::new(EXEC_SYNC_OUTPUT_CAP),
        );
        let err = copy_output(
            streams.clone(),
            rec.id.clone(),
            exec_id.clone(),
            OutputStream::Stderr,
            OutputCap::new(EXEC_SYNC_OUTPUT_CAP),
        );
        let mut waiter = streams;
        let run = async {
            let (o, e, w) = tokio::join!(
                out,
                err,
                waiter.wait_process(WaitProcessRequest {
                    container_id: rec.id.clone(),
                    exec_id: exec_id.clone(),
                })
            );
            let w = w.map_err(agent_err("agent WaitProcess"))?.into_inner();
            Ok::<_, ContainerError>((w.exit_code, o.into_bytes(), e.into_bytes()))
        };
        if timeout.is_zero() {
            return run.await;
        }
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                let _ = agent
                    .signal_process(SignalProcessRequest {
                        container_id: rec.id.clone(),
                        exec_id,
                        signal: libc::SIGKILL as u32,
                        all: false,
                    })
                    .await;
                Err(ContainerError::Timeout(format!(
                    "command {cmd:?} timed out after {} s",
                    timeout.as_secs()
                )))
            }
        }
    }

    /// UpdateContainerResources.
    pub async fn update(
        &self,
        id: &str,
        sb: &SandboxRecord,
        resources: LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let mut rec = self.refresh(self.get(id)?, Some(sb))?;
        if rec.state == ContainerState::Exited {
            return Err(ContainerError::Precondition(format!(
                "container {} has exited",
                rec.id
            )));
        }
        let oci = spec::resources(&resources);
        let json = serde_json::to_vec(&oci)
            .map_err(|e| ContainerError::Failed(format!("encoding resources: {e}")))?;
        let mut agent = self.agent(sb).await?;
        agent
            .update_container(moat_proto::agent::UpdateContainerRequest {
                container_id: rec.id.clone(),
                resources: json,
            })
            .await
            .map_err(agent_err("agent UpdateContainer"))?;
        rec.resources = Some(resources);
        self.put(&rec)
    }

    /// A running container's usage from the guest's cgroup.
    pub async fn usage(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<Usage, ContainerError> {
        let mut agent = self.agent(sb).await?;
        let stats = agent
            .container_stats(moat_proto::agent::ContainerStatsRequest {
                container_id: rec.id.clone(),
            })
            .await
            .map_err(agent_err("agent ContainerStats"))?
            .into_inner();
        let usage = stats.cpu.as_ref().map(|c| c.usage_ns).unwrap_or(0);
        let ts = crate::clock::now_ns();
        let nano_cores = self.inner.cpu_samples.lock().ok().and_then(|mut m| {
            let prev = m.insert(rec.id.clone(), (ts, usage));
            prev.and_then(|(pts, pu)| {
                let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
                let du = usage.checked_sub(pu)? as u128;
                u64::try_from(du * 1_000_000_000 / dt).ok()
            })
        });
        Ok(Usage { stats, nano_cores })
    }
}

impl Containers {
    /// How many processes run in a container (from the guest).
    pub async fn process_count(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<u64, ContainerError> {
        let mut agent = self.agent(sb).await?;
        let list = agent
            .list_processes(moat_proto::agent::ListProcessesRequest {
                container_id: rec.id.clone(),
            })
            .await
            .map_err(agent_err("agent ListProcesses"))?
            .into_inner();
        Ok(list.processes.len() as u64)
    }
}

fn mark_exited(rec: &mut ContainerRecord, code: i32, reason: &str, message: &str) {
    rec.state = ContainerState::Exited;
    rec.finished_at = crate::clock::now_ns();
    rec.exit_code = code;
    rec.reason = reason.to_string();
    rec.message = message.to_string();
}

/// Sets (or with None drops) the open log of a container.
fn set_log(inner: &Inner, id: &str, log: Option<SharedLog>) {
    if let Ok(mut logs) = inner.logs.lock() {
        match log {
            Some(l) => {
                logs.insert(id.to_string(), l);
            }
            None => {
                logs.remove(id);
            }
        }
    }
}

/// The agent of a pod's VM: its channel with call time limits.
async fn agent_of(
    inner: &Inner,
    sb: &SandboxRecord,
) -> Result<AgentClient<Channel>, ContainerError> {
    Ok(channels_of(inner, sb).await?.bounded)
}

/// The agent of a pod's VM: its channel without call time limits.
async fn waiter_of(
    inner: &Inner,
    sb: &SandboxRecord,
) -> Result<AgentClient<Channel>, ContainerError> {
    Ok(channels_of(inner, sb).await?.unbounded)
}

async fn channels_of(inner: &Inner, sb: &SandboxRecord) -> Result<AgentChannels, ContainerError> {
    if let Some(a) = inner
        .agents
        .lock()
        .ok()
        .and_then(|m| m.get(&sb.id).cloned())
    {
        return Ok(a);
    }
    let dial = |limit| async move {
        tokio::time::timeout(
            Duration::from_secs(10),
            crate::agent::connect_with(sb.vm_paths.vsock(), moat_proto::AGENT_VSOCK_PORT, limit),
        )
        .await
        .map_err(|_| ContainerError::Failed(format!("pod {}: the agent did not answer", sb.id)))?
        .map_err(|e| ContainerError::Failed(format!("pod {}: reaching the agent: {e:#}", sb.id)))
    };
    let channels = AgentChannels {
        bounded: dial(Some(AGENT_CALL)).await?,
        unbounded: dial(None).await?,
    };
    if let Ok(mut m) = inner.agents.lock() {
        m.insert(sb.id.clone(), channels.clone());
    }
    Ok(channels)
}

/// Reads the `Localhost` seccomp profile the request names, if any.
fn read_localhost_seccomp(config: &ContainerConfig) -> Result<Option<String>, ContainerError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let choice = super::seccomp::choice(sc).map_err(|e| ContainerError::Invalid(e.0))?;
    let super::seccomp::SeccompChoice::Localhost(path) = choice else {
        return Ok(None);
    };
    let field = "security_context.seccomp";
    let data = crate::files::read_regular(&path, 1 << 20)
        .map_err(|e| ContainerError::Invalid(format!("{field}: {}: {e}", path.display())))?;
    String::from_utf8(data)
        .map(Some)
        .map_err(|_| ContainerError::Invalid(format!("{field}: {} is not UTF-8", path.display())))
}

/// Watches a running container: copies its output to the log and records
/// how it ended. Survives agent reconnects while the VM lives.
async fn monitor(
    inner: Arc<Inner>,
    rec: ContainerRecord,
    sb: SandboxRecord,
    log: Option<SharedLog>,
) {
    let id = rec.id.clone();
    let tty = rec.config.tty;
    let mut pumps = Vec::new();
    if let Some(log) = &log {
        let streams: &[OutputStream] = if tty {
            &[OutputStream::Stdout]
        } else {
            &[OutputStream::Stdout, OutputStream::Stderr]
        };
        for &s in streams {
            pumps.push(tokio::spawn(super::io::pump_to_log(
                inner_agent_source(inner.clone(), sb.clone()),
                id.clone(),
                s,
                log.clone(),
            )));
        }
    }
    let mut failures = 0u32;
    let outcome = loop {
        let mut agent = match waiter_of(&inner, &sb).await {
            Ok(a) => a,
            Err(e) => {
                if !sb.vm.is_some_and(|v| v.is_alive()) {
                    break Err("the pod VM stopped".to_string());
                }
                failures += 1;
                if failures > 30 {
                    break Err(format!("lost the agent: {e}"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match agent
            .wait_process(WaitProcessRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(w) => break Ok(w.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                break Err(format!("the guest no longer has it: {}", s.message()))
            }
            Err(s) => {
                if let Ok(mut m) = inner.agents.lock() {
                    m.remove(&sb.id);
                }
                if !sb.vm.is_some_and(|v| v.is_alive()) {
                    break Err("the pod VM stopped".to_string());
                }
                failures += 1;
                if failures > 30 {
                    break Err(format!("waiting for it failed: {}", s.message()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Let the pumps drain what the process wrote last.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    if let Some(log) = &log {
        if let Ok(mut w) = log.lock() {
            let _ = w.flush_partial();
        }
    }
    let Ok(Some(mut cur)) = inner.store.get::<ContainerRecord>(CONTAINERS, &id) else {
        return; // removed meanwhile
    };
    if cur.state == ContainerState::Exited {
        return;
    }
    match outcome {
        Ok(w) => {
            let reason = if w.oom_killed {
                "OOMKilled"
            } else if w.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let message = if w.signal != 0 {
                format!("killed by signal {}", w.signal)
            } else {
                String::new()
            };
            mark_exited(&mut cur, w.exit_code, reason, &message);
        }
        Err(why) => mark_exited(&mut cur, 255, "Error", &why),
    }
    tracing::info!(%id, exit_code = cur.exit_code, reason = %cur.reason, "container exited");
    if inner.store.put(CONTAINERS, &id, &cur).is_ok() {
        inner
            .events
            .publish(&id, ContainerEventType::ContainerStoppedEvent, None);
    }
    set_log(&inner, &id, None);
}

/// Where output pumps get (and re-get) their agent channel.
fn inner_agent_source(inner: Arc<Inner>, sb: SandboxRecord) -> super::io::AgentSource {
    Arc::new(move || {
        let inner = inner.clone();
        let sb = sb.clone();
        Box::pin(async move {
            if !sb.vm.is_some_and(|v| v.is_alive()) {
                return None;
            }
            waiter_of(&inner, &sb).await.ok()
        })
    })
}
