//! Containers after a moatd restart.

use super::manager::{set_log, Containers};
use super::monitor::monitor;
use super::record::ContainerState;
use super::ContainerError;
use crate::logs::cri_log::CriLogWriter;
use crate::pod::SandboxRecord;
use crate::store::CONTAINERS;
use std::sync::{Arc, Mutex as StdMutex};

impl Containers {
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
}
