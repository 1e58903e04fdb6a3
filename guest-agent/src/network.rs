//! The guest side of pod networking: the NIC whose MAC is the pod's CNI
//! interface's gets the pod's IPv4 addresses and MTU, comes up with
//! loopback, and the pod's routes are added.
//!
//! Done with the classic socket ioctls (SIOCSIFADDR, SIOCSIFNETMASK,
//! SIOCSIFMTU, SIOCSIFFLAGS, SIOCADDRT) rather than a netlink crate: they
//! cover IPv4 addresses and routes completely, need no extra dependency in
//! the static agent, and keep the guest free of an `ip` binary.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix: u8,
}

/// Parses `a.b.c.d/n` (a bare address is /32).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .map_err(|_| format!("{s:?}: bad prefix length"))?,
        ),
        None => (s, 32),
    };
    if prefix > 32 {
        return Err(format!("{s:?}: prefix length above 32"));
    }
    let addr = addr
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("{s:?}: not an IPv4 address"))?;
    Ok(Cidr { addr, prefix })
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// The interface in `sys_class_net` whose address is `mac` (case-insensitive).
pub fn find_by_mac(sys_class_net: &Path, mac: &str) -> Option<String> {
    let want = mac.trim().to_ascii_lowercase();
    std::fs::read_dir(sys_class_net)
        .ok()?
        .flatten()
        .find_map(|e| {
            let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
            (addr.trim().to_ascii_lowercase() == want)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the AF_INET layout back out of it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// `struct rtentry` of <linux/route.h> (x86_64).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// A socket to issue interface ioctls on.
struct IoctlSocket(OwnedFd);

impl IoctlSocket {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::other(format!(
                "bad interface name {name:?}"
            )));
        }
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(req)
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> std::io::Result<()> {
        // SAFETY: `arg` is the structure this request expects, valid for the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg as *mut T) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    fn set_addr(&self, name: &str, cidr: Cidr) -> std::io::Result<()> {
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(cidr.addr);
        self.ioctl(
            libc::SIOCSIFADDR,
            &mut req,
            &format!("setting {} on {name}", cidr.addr),
        )?;
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(cidr.prefix));
        self.ioctl(
            libc::SIOCSIFNETMASK,
            &mut req,
            &format!("setting /{} on {name}", cidr.prefix),
        )
    }

    fn set_mtu(&self, name: &str, mtu: u32) -> std::io::Result<()> {
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        self.ioctl(
            libc::SIOCSIFMTU,
            &mut req,
            &format!("setting MTU {mtu} on {name}"),
        )
    }

    fn up(&self, name: &str) -> std::io::Result<()> {
        let mut req = Self::ifreq(name)?;
        self.ioctl(
            libc::SIOCGIFFLAGS,
            &mut req,
            &format!("reading flags of {name}"),
        )?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bringing {name} up"))
    }

    fn add_route(&self, dst: Cidr, gateway: Option<Ipv4Addr>, dev: &str) -> std::io::Result<()> {
        let mut dev_name: Vec<libc::c_char> = dev.bytes().map(|b| b as libc::c_char).collect();
        dev_name.push(0);
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(dst.addr),
            rt_gateway: sockaddr_in(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            rt_genmask: sockaddr_in(netmask(dst.prefix)),
            rt_flags: RTF_UP | if gateway.is_some() { RTF_GATEWAY } else { 0 },
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev_name.as_mut_ptr(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        let what = format!(
            "adding route {}/{} via {gateway:?} dev {dev}",
            dst.addr, dst.prefix
        );
        match self.ioctl(libc::SIOCADDRT, &mut rt, &what) {
            // The route a new address implies already exists: fine.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

/// One interface to configure.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// Its MAC.
    pub mac: String,
    /// Its addresses.
    pub addresses: Vec<Cidr>,
    /// MTU, 0 to keep.
    pub mtu: u32,
}

/// Configures the interfaces and routes; returns the interfaces' names.
/// Routes go through the first interface.
pub fn configure(
    interfaces: &[InterfaceConfig],
    routes: &[(Cidr, Option<Ipv4Addr>)],
) -> std::io::Result<Vec<String>> {
    let sock = IoctlSocket::new()?;
    sock.up("lo")?;
    let mut names = Vec::new();
    for itf in interfaces {
        let name = find_by_mac(Path::new("/sys/class/net"), &itf.mac).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no interface with MAC {}", itf.mac),
            )
        })?;
        if itf.mtu != 0 {
            sock.set_mtu(&name, itf.mtu)?;
        }
        for a in &itf.addresses {
            sock.set_addr(&name, *a)?;
        }
        sock.up(&name)?;
        names.push(name);
    }
    if let Some(dev) = names.first() {
        for (dst, gw) in routes {
            sock.add_route(*dst, *gw, dev)?;
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_masks() {
        assert_eq!(
            parse_cidr("10.88.0.5/16").unwrap(),
            Cidr {
                addr: Ipv4Addr::new(10, 88, 0, 5),
                prefix: 16
            }
        );
        assert_eq!(parse_cidr("1.2.3.4").unwrap().prefix, 32);
        for bad in ["10.0.0.1/33", "fe80::1/64", "x/8", "10.0.0.1/x", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn interfaces_are_found_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "2a:bb:cc:dd:ee:01")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            find_by_mac(dir.path(), "2A:BB:CC:DD:EE:01").as_deref(),
            Some("eth0")
        );
        assert_eq!(find_by_mac(dir.path(), "2a:bb:cc:dd:ee:02"), None);
    }

    #[test]
    fn rtentry_has_the_kernel_size() {
        // struct rtentry is 120 bytes on x86_64.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
