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
//! - [`clock`]: CRI timestamps and overflow-free deadlines.
//! - [`files`]: reading files named by requests without following tricks.
//! - [`ids`]: ids for pods, containers and exec processes.
//! - [`procfs`]: the fields of `/proc/PID/stat` moatd reads.
//! - [`vm`]: starting a pod's moat-vmm and reaching its agent.

pub mod agent;
pub mod clock;
pub mod config;
pub mod container;
pub mod cri;
pub mod files;
pub mod ids;
pub mod image;
pub mod logs;
pub mod network;
pub mod pod;
pub mod procfs;
pub mod store;
pub mod vm;
pub mod vsock;
