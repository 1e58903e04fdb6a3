//! Locks by name: holding one name's lock excludes every other holder of
//! that name and no one else (one pod's operations; one image's pull).

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A lock per name; clones share them.
#[derive(Clone, Default)]
pub struct KeyedLocks(Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>);

impl KeyedLocks {
    /// Waits for `name`'s lock; holding the guard excludes every other
    /// holder of that name.
    pub async fn lock(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .await
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Drops the lock of a name no longer in use.
    pub async fn forget(&self, name: &str) {
        self.0.lock().await.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_name_other_names_free() {
        let locks = KeyedLocks::default();
        let held = locks.lock("a").await;
        let other = locks.clone();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.lock("a"))
                .await
                .is_err(),
            "a second holder of a"
        );
        let _b = tokio::time::timeout(Duration::from_millis(50), other.lock("b"))
            .await
            .expect("b is free");
        drop(held);
        let _a = tokio::time::timeout(Duration::from_millis(50), other.lock("a"))
            .await
            .expect("a after release");
    }
}
