//! moatd: the CRI server that turns each pod sandbox into a microVM.
//!
//! - [`cri`]: the CRI gRPC server.
//! - [`config`]: the daemon's TOML configuration (socket, dirs, runtime handlers).
//! - [`vsock`]: the host side of moat-vmm's hybrid vsock (Unix socket + CONNECT).
//! - [`agent`]: a gRPC client for the guest agent over that vsock.
//! - [`image`]: pulling images and turning them into block images.
//! - [`logs`]: container logs in the CRI format.
//! - [`network`]: pod network namespaces, CNI, TAP.
//! - [`pod`]: pod sandboxes, each a microVM.
//! - [`container`]: containers inside pod VMs.
//! - [`store`]: the durable state (redb).
//! - [`streaming`]: the streaming server of exec, attach and port-forward
//!   sessions (SPDY/3.1, WebSocket).
//! - [`clock`]: CRI timestamps and overflow-free deadlines.
//! - [`crash_point`]: test-only points where moatd kills itself.
//! - [`files`]: reading files named by requests without following tricks.
//! - [`ids`]: ids for pods, containers and exec processes.
//! - [`keyed_locks`]: a lock per name (a pod, an image).
//! - [`procfs`]: the fields of `/proc/PID/stat` moatd reads.
//! - [`vm`]: starting a pod's moat-vmm and reaching its agent.
//!
//! Errors that wrap another keep it as their [`Cause`]; [`chain`] renders
//! the whole story for logs and gRPC messages.

pub mod agent;
pub mod clock;
pub mod config;
pub mod container;
pub mod crash_point;
pub mod cri;
pub mod files;
pub mod ids;
pub mod image;
pub mod keyed_locks;
pub mod logs;
pub mod network;
pub mod pod;
pub mod procfs;
pub mod store;
pub mod streaming;
pub mod vm;
pub mod vsock;

/// The error an operation that failed keeps as its cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An error with its causes, "what: why: deeper why" (a cause whose text
/// the message already ends with is not repeated).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let why = c.to_string();
        if !msg.ends_with(&why) {
            msg.push_str(": ");
            msg.push_str(&why);
        }
        cur = c.source();
    }
    msg
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn chain_tells_every_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let e = container::ContainerError::caused("opening the log /x")(io);
        assert_eq!(chain(&e), "opening the log /x: disk on fire");
        let inner = anyhow::anyhow!("socket gone").context("dialling");
        let e = container::ContainerError::caused("attaching the image")(inner);
        assert_eq!(chain(&e), "attaching the image: dialling: socket gone");
        // A message that already tells its cause is not repeated.
        let codec = serde_json::from_str::<u8>("x").unwrap_err();
        let e = store::StoreError::Codec {
            table: "t",
            key: "k".into(),
            source: codec,
        };
        assert_eq!(chain(&e), e.to_string());
    }
}
