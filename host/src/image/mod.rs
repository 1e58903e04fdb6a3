//! Container images: pulled from OCI registries into a content store,
//! unpacked once per image and turned into a read-only erofs block image that
//! every pod using the image attaches to its VM.
//!
//! - [`hosts`]: registry mirrors and per-registry TLS (containerd's `hosts.toml`):
//!   the directory lookup, the file's parsing, its values and CA files.
//! - [`pull`]: the registry client (manifest lists → linux/amd64, digest checks).
//! - [`unpack`]: layers applied in order with whiteouts.
//! - [`block`]: the erofs block image.
//! - [`service`]: the image store behind the CRI ImageService.

pub mod block;
pub mod hosts;
pub mod pull;
pub mod service;
#[cfg(test)]
mod test_registry;
pub mod unpack;

pub use service::{ImageError, ImageRecord, ImageService};
