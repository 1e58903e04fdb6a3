//! Finding the block device the host attached for a container image.
//!
//! The host names a virtio-blk device either by its serial
//! (`/sys/block/vdX/serial`) or by the base address of its virtio-mmio
//! transport. The device's sysfs path runs through the transport's platform
//! device, named `<hex base>.virtio_mmio` (device tree / ACPI) or
//! `virtio-mmio.<n>` (kernel command line; its base is then read from
//! `/proc/iomem`). Lookups take the sysfs and iomem locations as arguments
//! so they are tested against fake trees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a request identifies a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceId {
    /// virtio-blk serial.
    Serial(String),
    /// virtio-mmio base address.
    MmioAddress(u64),
    /// A device node path.
    Path(PathBuf),
}

/// Finds the `/sys/block` entry whose `serial` file equals `serial`.
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Option<String> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(s) = std::fs::read_to_string(e.path().join("serial")) {
            if s.trim_end_matches(['\n', '\0']) == serial {
                return Some(name);
            }
        }
    }
    None
}

/// Base addresses of platform devices from `/proc/iomem` text: maps a
/// resource name (e.g. `virtio-mmio.0`) to its start address.
pub fn iomem_starts(iomem: &str) -> Vec<(String, u64)> {
    iomem
        .lines()
        .filter_map(|l| {
            let (range, name) = l.split_once(" : ")?;
            let start = range.trim().split('-').next()?;
            Some((
                name.trim().to_string(),
                u64::from_str_radix(start, 16).ok()?,
            ))
        })
        .collect()
}

/// The virtio-mmio base address a sysfs block device path runs through.
fn mmio_base_of(link: &Path, iomem: &str) -> Option<u64> {
    for c in link.components() {
        let c = c.as_os_str().to_string_lossy();
        if let Some(hex) = c.strip_suffix(".virtio_mmio") {
            return u64::from_str_radix(hex, 16).ok();
        }
        if c.starts_with("virtio-mmio.") {
            return iomem_starts(iomem)
                .into_iter()
                .find(|(n, _)| *n == c)
                .map(|(_, a)| a);
        }
    }
    None
}

/// Finds the `/sys/block` entry whose device sits behind the virtio-mmio
/// transport at `addr`.
pub fn find_by_mmio(sys_block: &Path, iomem: &str, addr: u64) -> Option<String> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if mmio_base_of(&link, iomem) == Some(addr) {
            return Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// Resolves `id` to a device node once, without waiting.
pub fn resolve_once(id: &DeviceId) -> Option<PathBuf> {
    let sys_block = Path::new("/sys/block");
    let name = match id {
        DeviceId::Path(p) => {
            return is_block_device(p).then(|| p.clone());
        }
        DeviceId::Serial(s) => find_by_serial(sys_block, s)?,
        DeviceId::MmioAddress(a) => {
            let iomem = std::fs::read_to_string("/proc/iomem").unwrap_or_default();
            find_by_mmio(sys_block, &iomem, *a)?
        }
    };
    let dev = Path::new("/dev").join(name);
    is_block_device(&dev).then_some(dev)
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// False while a block device reports no media (size 0): moat-vmm's slots
/// exist from boot and get their capacity when the host attaches an image.
fn has_media(dev: &Path) -> bool {
    let Some(name) = dev.file_name() else {
        return true;
    };
    match std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("size")) {
        Ok(size) => size.trim() != "0",
        // No sysfs entry to ask (tests, unusual setups): take the device as is.
        Err(_) => true,
    }
}

/// Waits up to `timeout` for the device to appear with media (an image
/// attached to an existing slot shows up a little after the host attaches it).
pub async fn wait_for(id: &DeviceId, timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = resolve_once(id).filter(|p| has_media(p)) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn finds_by_serial_and_mmio_address() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("devices/platform");
        let block = t.path().join("block");
        std::fs::create_dir_all(&block).unwrap();
        for (name, transport) in [("vda", "d0000000.virtio_mmio"), ("vdb", "virtio-mmio.1")] {
            let d = devices.join(transport).join("virtio1/block").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), format!("ser-{name}\n")).unwrap();
            symlink(&d, block.join(name)).unwrap();
        }
        assert_eq!(find_by_serial(&block, "ser-vdb").as_deref(), Some("vdb"));
        assert_eq!(find_by_serial(&block, "nope"), None);
        let iomem = "d0000000-d00001ff : d0000000.virtio_mmio\nd0001000-d00011ff : virtio-mmio.1\n  d0001000-d00011ff : virtio-mmio\n";
        assert_eq!(
            find_by_mmio(&block, iomem, 0xd000_0000).as_deref(),
            Some("vda")
        );
        assert_eq!(
            find_by_mmio(&block, iomem, 0xd000_1000).as_deref(),
            Some("vdb")
        );
        assert_eq!(find_by_mmio(&block, iomem, 0xd000_2000), None);
    }

    #[tokio::test]
    async fn waiting_times_out() {
        let id = DeviceId::Path("/nonexistent/dev".into());
        let t = Instant::now();
        assert_eq!(wait_for(&id, Duration::from_millis(60)).await, None);
        assert!(t.elapsed() >= Duration::from_millis(60));
        // A regular file is not a block device.
        assert_eq!(
            resolve_once(&DeviceId::Path("/proc/self/status".into())),
            None
        );
    }
}
