//! One lock per pod, taken by pod and container operations alike, so that
//! CreateContainer and StopPodSandbox on one pod (or two container changes
//! that pick image slots) never interleave.

/// The locks of all pods, by pod id; clones share them.
pub type PodLocks = crate::keyed_locks::KeyedLocks;
