//! moatd: the CRI server that turns each pod sandbox into a microVM.
//!
//! - [`config`]: the daemon's TOML configuration (socket, dirs, runtime handlers).
//! - [`vsock`]: the host side of moat-vmm's hybrid vsock (Unix socket + CONNECT).
//! - [`agent`]: a gRPC client for the guest agent over that vsock.
//! - [`image`]: pulling images and turning them into block images.
//! - [`logs`]: container logs in the CRI format.
//! - [`network`]: pod network namespaces, CNI, TAP.
//! - [`store`]: the durable state (redb).

pub mod agent;
pub mod config;
pub mod image;
pub mod logs;
pub mod network;
pub mod store;
pub mod vsock;
