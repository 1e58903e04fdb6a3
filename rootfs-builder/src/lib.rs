//! moat-rootfs: what the guest boots from.
//!
//! - [`cpio`]: a reproducible newc archive writer (the initramfs format).
//! - [`initramfs`]: the guest initramfs layout, with moat-agent as `/init`.

pub mod cpio;
pub mod initramfs;
