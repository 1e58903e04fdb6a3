//! CreateContainer: attaches the image's block image to a free virtio-blk
//! slot of the pod's VM (containers of one pod that use the same image
//! share its slot) and each of its block volumes to one of their own,
//! binds the mounts into the pod's volume share (live over virtio-fs) and
//! has the agent create the container from the OCI spec, with the block
//! volumes as device nodes.

use super::devices;
use super::manager::{agent_err, Containers};
use super::mounts;
use super::record::{ContainerRecord, ContainerState};
use super::slots;
use super::spec::{self, SpecInput};
use super::ContainerError;
use crate::agent::AGENT_CALL;
use crate::config::HandlerKind;
use crate::crash_point;
use crate::image::ImageRecord;
use crate::pod::{SandboxRecord, SandboxState};
use crate::store::SANDBOXES;
use crate::vm::ControlClient;
use moat_proto::agent::{block_device, BlockDevice, ContainerDevice};
use moat_proto::cri::{ContainerConfig, ContainerEventType};
use std::time::Instant;

impl Containers {
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
        let _pod = self.inner.pod_locks.lock(&sb.id).await;
        // Read under the lock: the pod may have been stopped meanwhile.
        let current: Option<SandboxRecord> = self.inner.store.get(SANDBOXES, &sb.id)?;
        let ready = current.is_some_and(|s| s.state == SandboxState::Ready)
            && sb.vm.is_some_and(|v| v.is_alive());
        if !ready {
            return Err(ContainerError::Precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let log_path = crate::logs::location::log_file(&sb.config.log_directory, &config.log_path)
            .map_err(ContainerError::Invalid)?;
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
        let native = sb.kind == HandlerKind::Oci;
        let handler = self.handlers.get(&sb.runtime_handler);
        let privileged = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if privileged && !native && !handler.is_some_and(|h| h.guest_privileged) {
            return Err(ContainerError::Invalid(format!(
                "config.linux.security_context.privileged: {}",
                crate::pod::VM_PRIVILEGED
            )));
        }
        // A pod VM's devices are block volumes in slots of their own; a
        // native pod's are the host's nodes, in its spec.
        let (volumes, host_devices) = match native {
            true => (Vec::new(), devices::host_devices(&config)?),
            false => (devices::block_volumes(&config)?, Vec::new()),
        };
        // Containers of one pod VM that use the same image share its slot;
        // each block volume takes one of its own. A native pod has none.
        let total = match (native, handler) {
            (false, Some(h)) => h.blk_slots,
            _ => 0,
        };
        let mut used: Vec<u32> = siblings.iter().flat_map(ContainerRecord::slots).collect();
        let mut take_free = |what: &str| {
            let free = (0..total).find(|s| !used.contains(s)).ok_or_else(|| {
                ContainerError::Exhausted(format!(
                    "pod sandbox {}: no free slot for {what}: all {total} virtio-blk slots of \
                     its VM are in use (one per distinct image and one per block volume)",
                    sb.id
                ))
            })?;
            used.push(free);
            Ok::<u32, ContainerError>(free)
        };
        let (slot, attach) = match siblings.iter().find(|r| r.image_id == image.id) {
            _ if native => (0, false),
            Some(r) => (r.slot, false),
            None => (take_free("the image")?, true),
        };
        let device_slots = volumes
            .iter()
            .map(|v| take_free(&format!("the block volume {}", v.container_path)))
            .collect::<Result<Vec<u32>, _>>()?;
        let localhost_seccomp = read_localhost_seccomp(&config)?;
        let mut agent = self.agent(sb).await?;
        let id = crate::ids::new_id().map_err(ContainerError::caused("reading /dev/urandom"))?;
        let (shared, binds) = match native {
            true => (mounts::host_binds(&config.mounts)?, None),
            false => {
                let (shared, binds) = mounts::share_live(&sb.vm_paths, &id, &config.mounts)?;
                (shared, Some(binds))
            }
        };
        let mut oci = spec::build(&SpecInput {
            native,
            config: &config,
            image_config: &image.config_json(),
            passwd: &image.passwd,
            group: &image.group,
            guest: &sb.guest,
            mounts: &shared,
            localhost_seccomp: localhost_seccomp.as_deref(),
        })
        .map_err(|e| ContainerError::Invalid(e.0))?;
        devices::add_host_devices(&mut oci, &host_devices)?;
        let spec_json =
            serde_json::to_vec(&oci).map_err(ContainerError::caused("encoding the OCI spec"))?;
        let control = ControlClient::new(&sb.vm_paths.api());
        if attach {
            slots::attach(&control, slot, &image.block_image, true).await?;
        }
        for (i, (v, &s)) in volumes.iter().zip(&device_slots).enumerate() {
            if let Err(e) = slots::attach(&control, s, &v.host_path, v.read_only).await {
                let undo = device_slots[..i].iter().chain(attach.then_some(&slot));
                slots::detach_quietly(&control, undo.copied().collect()).await;
                return Err(e);
            }
        }
        if attach || !device_slots.is_empty() {
            crash_point::here(crash_point::CREATE_CONTAINER_ATTACHED);
        }
        let created = tokio::time::timeout(
            AGENT_CALL,
            agent.create_container(moat_proto::agent::CreateContainerRequest {
                container_id: id.clone(),
                oci_spec: spec_json,
                rootfs: Some(match native {
                    true => BlockDevice {
                        id: Some(block_device::Id::ImageFile(
                            image.block_image.display().to_string(),
                        )),
                        fstype: "erofs".into(),
                        timeout_ms: 0,
                    },
                    false => BlockDevice {
                        fstype: "erofs".into(),
                        ..slot_device(slot)
                    },
                }),
                scratch_size_bytes: 0,
                stdin: config.stdin,
                devices: volumes
                    .iter()
                    .zip(&device_slots)
                    .map(|(v, s)| ContainerDevice {
                        device: Some(slot_device(*s)),
                        container_path: v.container_path.clone(),
                        read_only: v.read_only,
                    })
                    .collect(),
            }),
        )
        .await
        .map_err(|_| ContainerError::Failed("agent CreateContainer timed out".into()))
        .and_then(|r| r.map_err(agent_err("agent CreateContainer")));
        let pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(e) => {
                let undo = device_slots.iter().chain(attach.then_some(&slot));
                slots::detach_quietly(&control, undo.copied().collect()).await;
                return Err(e);
            }
        };
        // A crash from here to the record leaves a guest container and a
        // slot no record names; recovery removes both.
        crash_point::here(crash_point::CREATE_CONTAINER_IN_GUEST);
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
            device_slots,
            spec: oci,
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
        if let Some(b) = binds {
            b.keep();
        }
        tracing::info!(%id, pod = %sb.id, name = %name, slot, ms = started.elapsed().as_millis() as u64, "container created");
        self.inner
            .events
            .publish(&id, ContainerEventType::ContainerCreatedEvent, None);
        Ok(id)
    }
}

/// The device of virtio-blk slot `slot`, as the guest finds it (by the
/// serial the VMM gives each slot), waited for up to 30 s.
fn slot_device(slot: u32) -> BlockDevice {
    BlockDevice {
        id: Some(block_device::Id::Serial(format!("moat-blk-{slot}"))),
        fstype: String::new(),
        timeout_ms: 30_000,
    }
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
