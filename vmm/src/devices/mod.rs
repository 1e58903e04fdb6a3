//! Emulated devices: the I/O buses, legacy PC devices and virtio devices.

pub mod bus;
pub mod legacy;
pub mod virtio;

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a thread panicked while holding it
/// (device state stays usable; a panic is already logged).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
