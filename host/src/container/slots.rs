//! A pod VM's virtio-blk slots (images and block devices) as its VMM
//! holds them: attaching and detaching
//! that a retry after a crash can repeat, and the attached set recovery
//! compares with the records.

use super::ContainerError;
use crate::vm::ControlClient;
use moat_vmm::api::Request;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Slot → the file attached to it, as the VMM reports.
pub(super) async fn attached(
    control: &ControlClient,
) -> Result<BTreeMap<u32, PathBuf>, ContainerError> {
    let state = control
        .call(&Request::State {})
        .await
        .map_err(ContainerError::caused("asking the VMM for its slots"))?;
    Ok(state["slots"]
        .as_array()
        .map(|slots| {
            slots
                .iter()
                .filter_map(|s| {
                    let slot = u32::try_from(s["slot"].as_u64()?).ok()?;
                    Some((slot, PathBuf::from(s["path"].as_str()?)))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Attaches `path` to `slot` (`read_only` or for writing too), opened
/// here and passed to the VMM (a jailed VMM cannot open it); a slot already
/// holding `path` (a crash between attaching and recording) is left as it
/// is. The VMM's state is asked only when the attach fails, off the usual
/// path.
pub(super) async fn attach(
    control: &ControlClient,
    slot: u32,
    path: &Path,
    read_only: bool,
) -> Result<(), ContainerError> {
    let req = Request::AttachDrive {
        slot,
        path: path.to_path_buf(),
        read_only,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| {
            ContainerError::caused("opening the drive")(anyhow::anyhow!("{}: {e}", path.display()))
        })?;
    match control.call_with_file(&req, Some(&file)).await {
        Ok(_) => Ok(()),
        Err(_) if attached(control).await?.get(&slot).map(PathBuf::as_path) == Some(path) => Ok(()),
        Err(e) => Err(ContainerError::caused("attaching the drive")(e)),
    }
}

/// Detaches `slot`; an empty slot (a crash between detaching and
/// forgetting the record) is done already.
pub(super) async fn detach(control: &ControlClient, slot: u32) -> Result<(), ContainerError> {
    match control.call(&Request::DetachDrive { slot }).await {
        Ok(_) => Ok(()),
        Err(_) if !attached(control).await?.contains_key(&slot) => Ok(()),
        Err(e) => Err(ContainerError::caused("detaching the drive")(e)),
    }
}

/// Detaches `slots`, undoing a CreateContainer that failed part-way; what
/// cannot be detached now, recovery finds with no record and detaches.
pub(super) async fn detach_quietly(control: &ControlClient, slots: Vec<u32>) {
    for s in slots {
        let _ = detach(control, s).await;
    }
}
