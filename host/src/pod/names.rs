//! Sandbox names, as containerd reserves them: a pod's name, namespace,
//! uid and attempt belong to one sandbox from RunPodSandbox until
//! RemovePodSandbox, so a repeated RunPodSandbox (a retry after the
//! caller's deadline, say) never boots a second VM for the same pod.

use super::manager::{PodError, Pods};
use moat_proto::cri::PodSandboxMetadata;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The name a sandbox holds.
pub fn sandbox_name(md: &PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt)
}

/// Names of sandboxes being created (their records may not exist yet).
#[derive(Default, Clone)]
pub struct Reserved(Arc<Mutex<HashMap<String, String>>>);

/// Holds a name while its sandbox is created; released on drop (by then
/// the sandbox's record holds it, or the sandbox failed and has none).
pub struct Reservation {
    reserved: Reserved,
    name: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut m) = self.reserved.0.lock() {
            m.remove(&self.name);
        }
    }
}

impl Pods {
    /// Reserves `md`'s name for new sandbox `id`; AlreadyExists names the
    /// sandbox that holds it.
    pub(super) fn reserve_name(
        &self,
        md: &PodSandboxMetadata,
        id: &str,
    ) -> Result<Reservation, PodError> {
        let name = sandbox_name(md);
        let mut m = self
            .reserved
            .0
            .lock()
            .map_err(|_| PodError::Failed("the name table is poisoned".into()))?;
        let holder = match m.get(&name) {
            Some(h) => Some(h.clone()),
            None => self
                .list()?
                .into_iter()
                .find(|r| sandbox_name(&r.metadata()) == name)
                .map(|r| r.id),
        };
        if let Some(holder) = holder {
            return Err(PodError::NameTaken { name, holder });
        }
        m.insert(name.clone(), id.to_string());
        Ok(Reservation {
            reserved: self.reserved.clone(),
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentPool;
    use crate::config::Config;
    use crate::store::{Store, SANDBOXES};

    fn md(attempt: u32) -> PodSandboxMetadata {
        PodSandboxMetadata {
            name: "web".into(),
            namespace: "prod".into(),
            uid: "u1".into(),
            attempt,
        }
    }

    #[test]
    fn a_name_belongs_to_one_sandbox_until_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pods = Pods::new(
            Config::default(),
            store.clone(),
            None,
            Default::default(),
            AgentPool::default(),
        );
        // In flight: a second call with the same metadata is refused.
        let first = pods.reserve_name(&md(0), "a").unwrap();
        let e = pods.reserve_name(&md(0), "b").err().unwrap();
        assert!(
            matches!(&e, PodError::NameTaken { holder, .. } if holder == "a"),
            "{e}"
        );
        // Another attempt is another name.
        let _other = pods.reserve_name(&md(1), "c").unwrap();
        drop(first);
        // Recorded: the record holds the name.
        let mut rec = crate::agent::fake::ready_pod(dir.path());
        rec.config.metadata = Some(md(0));
        store.put(SANDBOXES, &rec.id, &rec).unwrap();
        let e = pods.reserve_name(&md(0), "d").err().unwrap();
        assert!(e.to_string().contains(&rec.id), "{e}");
        // Removed: free again.
        store.delete(SANDBOXES, &rec.id).unwrap();
        assert!(pods.reserve_name(&md(0), "e").is_ok());
    }
}
