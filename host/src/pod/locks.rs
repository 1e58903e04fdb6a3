//! One lock per pod, taken by pod and container operations alike, so that
//! CreateContainer and StopPodSandbox on one pod (or two container changes
//! that pick image slots) never interleave.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The locks of all pods; clones share them.
#[derive(Clone, Default)]
pub struct PodLocks(Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>);

impl PodLocks {
    /// Waits for the pod's lock; holding the guard excludes every other
    /// operation on that pod.
    pub async fn lock(&self, pod_id: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .await
            .entry(pod_id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Drops the lock of a removed pod.
    pub async fn forget(&self, pod_id: &str) {
        self.0.lock().await.remove(pod_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_pod_at_a_time_other_pods_free() {
        let locks = PodLocks::default();
        let held = locks.lock("a").await;
        let other = locks.clone();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.lock("a"))
                .await
                .is_err(),
            "a second holder of pod a"
        );
        let _b = tokio::time::timeout(Duration::from_millis(50), other.lock("b"))
            .await
            .expect("pod b is free");
        drop(held);
        let _a = tokio::time::timeout(Duration::from_millis(50), other.lock("a"))
            .await
            .expect("pod a after release");
    }
}
