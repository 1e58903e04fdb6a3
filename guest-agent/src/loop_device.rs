//! Read-only loop devices for image files: an agent serving a native pod on
//! the host mounts the pod's erofs images through them. Each device is set up
//! with `LO_FLAGS_AUTOCLEAR`, so it frees itself when its last user (the
//! image's mount) goes and nothing needs detaching.
//!
//! Three ioctls, written here: the loop-device crates generate their
//! bindings with bindgen, which needs libclang at build time.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to an image file; the binding lasts while this is
/// open or the device is mounted.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    _device: File,
}

/// Binds `image` read-only to a free loop device.
pub fn attach_read_only(image: &Path) -> std::io::Result<LoopDevice> {
    let backing = File::open(image)?;
    let open_control = || {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
    };
    let control = match open_control() {
        // The loop driver is a module not loaded yet: load it, as mount(8)
        // would.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::process::Command::new("modprobe")
                .arg("loop")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            open_control().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("/dev/loop-control (after modprobe loop): {e}"),
                )
            })?
        }
        other => other?,
    };
    // Another process may take the free device between the two calls: try
    // again with the next one.
    let mut last = std::io::Error::other("no loop device");
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        // devtmpfs makes a new device's node at once, or very nearly.
        let mut opened = File::options().read(true).open(&path);
        for _ in 0..50 {
            match &opened {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    opened = File::options().read(true).open(&path);
                }
                _ => break,
            }
        }
        let device = opened
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut name = [0u8; 64];
        let bytes = image.as_os_str().as_encoded_bytes();
        let len = bytes.len().min(63);
        name[..len].copy_from_slice(&bytes[..len]);
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which
        // `config` is, laid out as the kernel's.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
            return Ok(LoopDevice {
                path,
                _device: device,
            });
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            break;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_is_the_kernels() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn an_image_is_readable_through_its_device_and_the_device_clears_itself() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: needs root and /dev/loop-control");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, vec![7u8; 8192]).unwrap();
        let dev = match attach_read_only(&image) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped: no loop device here: {e}");
                return;
            }
        };
        let mut data = Vec::new();
        use std::io::Read;
        File::open(&dev.path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data, vec![7u8; 8192]);
        // Read-only: a write fails (whether at open or at the write).
        let written = File::options()
            .write(true)
            .open(&dev.path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &[0u8; 512]).and_then(|()| f.sync_all())
            });
        assert!(written.is_err(), "a read-only loop device took a write");
        let name = dev.path.file_name().unwrap().to_string_lossy().into_owned();
        drop(dev);
        let backing = format!("/sys/block/{name}/loop/backing_file");
        for _ in 0..100 {
            if !Path::new(&backing).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{name} still bound after its last close");
    }
}
