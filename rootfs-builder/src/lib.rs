//! moat-rootfs: what the guest boots from.
//!
//! - [`cpio`]: a reproducible newc archive writer (the initramfs format).
//! - [`initramfs`]: the guest initramfs layout, with moat-agent as `/init`.
//! - [`poweroff_init`]: the boot benchmark's tiny `/init` that powers off.

pub mod cpio;
pub mod initramfs;
pub mod poweroff_init;
