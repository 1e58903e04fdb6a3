//! Container images: pulled from OCI registries into a content store,
//! unpacked once per image and turned into a read-only erofs block image that
//! every pod using the image attaches to its VM.
//!
//! - [`hosts`]: registry mirrors and per-registry TLS and headers
//!   (containerd's `hosts.toml`): the directory lookup, the file's parsing,
//!   its values, CA files and client certificates.
//! - `registry`: HTTP to one registry host: GETs, challenges and tokens,
//!   bodies within a cap.
//! - [`pull`]: the registry client for one pull: its hosts, and layers
//!   fetched with their declared sizes and digests enforced.
//! - [`resolve`]: a reference → its linux/amd64 manifest and config, each
//!   read within a size cap.
//! - [`unpack`]: layers applied in order with whiteouts.
//! - [`block`]: the erofs block image.
//! - [`service`]: the image store behind the CRI ImageService.

pub mod block;
pub mod hosts;
pub mod pull;
mod registry;
pub mod resolve;
pub mod service;
#[cfg(test)]
mod test_registry;
pub mod unpack;

pub use service::{ImageError, ImageRecord, ImageService};
