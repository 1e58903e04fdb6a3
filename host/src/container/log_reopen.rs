//! ReopenContainerLog.

use super::manager::Containers;
use super::record::ContainerState;
use super::ContainerError;

impl Containers {
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
                    .map_err(ContainerError::caused("reopening the log"))
            }
            None => Err(ContainerError::Precondition(format!(
                "container {} has no log path",
                rec.id
            ))),
        }
    }
}
