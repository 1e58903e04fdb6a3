//! moat-agent as a library: the container engine and the agent service, so
//! integration tests can drive them directly. The binary (`main.rs`) is PID 1
//! of the guest.

pub mod cgroups;
pub mod cmdline;
pub mod container;
pub mod devices;
pub mod loop_device;
pub mod network;
pub mod paths;
pub mod pid1;
pub mod pod_files;
pub mod power;
pub mod reaper;
pub mod server;
pub mod state;
pub mod stdio;
pub mod storage;
pub mod volumes;
pub mod vsock;
pub mod watched;

/// Serialises unit tests that fork or reap, so a reaping test never steals
/// another test's child.
#[cfg(test)]
pub(crate) static FORK_TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
