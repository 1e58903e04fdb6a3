//! TAP devices: open by name (`/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) or adopt an inherited fd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

/// Size of `virtio_net_hdr_v1`, which every frame carries (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;

mod ioctls {
    #![allow(missing_docs)]
    use super::ioctl_iow_nr;
    ioctl_iow_nr!(TUNSETIFF, 0x54, 202, ::std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, 0x54, 216, ::std::os::raw::c_int);
}
use ioctls::{TUNSETIFF, TUNSETVNETHDRSZ};

/// `struct ifreq` as TUNSETIFF uses it (name + flags, padded to 40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is unusable.
    #[error("invalid TAP name {0:?}")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun: {0}")]
    Open(std::io::Error),
    /// An ioctl failed.
    #[error("{0} on TAP {1}: {2}")]
    Ioctl(&'static str, String, std::io::Error),
}

/// Something that moves whole frames (each with a virtio-net header).
pub trait FrameIo: Send {
    /// Reads one frame; `WouldBlock` when none is queued.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// The fd to poll.
    fn raw_fd(&self) -> RawFd;
}

/// An open TAP device.
pub struct Tap {
    file: File,
}

impl Tap {
    /// Opens the existing TAP interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= 16 || bytes.contains(&0) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads a `struct ifreq`; `IfReq` has its layout and
        // size, and lives for the duration of the call.
        let r = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) };
        if r < 0 {
            return Err(TapError::Ioctl(
                "TUNSETIFF",
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        let tap = Self { file };
        tap.set_vnet_hdr_size(name)?;
        Ok(tap)
    }

    /// Adopts an inherited, already configured TAP fd (it must have been
    /// opened with `IFF_VNET_HDR`). The fd is owned from now on.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: the caller hands the fd over (config `tap_fd`); it is not
        // used elsewhere in this process.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: plain fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Ioctl(
                "F_SETFL",
                format!("fd {fd}"),
                std::io::Error::last_os_error(),
            ));
        }
        let tap = Self { file };
        tap.set_vnet_hdr_size(&format!("fd {fd}"))?;
        Ok(tap)
    }

    fn set_vnet_hdr_size(&self, name: &str) -> Result<(), TapError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let r = unsafe { ioctl_with_ref(&self.file, TUNSETVNETHDRSZ(), &size) };
        if r < 0 {
            return Err(TapError::Ioctl(
                "TUNSETVNETHDRSZ",
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A datagram socket keeps frame boundaries like a TAP (used in tests and
/// usable as a userspace backend).
impl FrameIo for UnixDatagram {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv(buf)
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_and_names() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-very-long-tap-name"),
            Err(TapError::Name(_))
        ));
    }
}
