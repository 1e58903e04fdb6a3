//! The TAP device a pod's VM NIC uses, joined to the pod's CNI interface by
//! tc mirred redirects in both directions (Kata's "tcfilter" model): what
//! arrives on `eth0` leaves through the TAP into the guest, and back.
//!
//! Done with iproute2's `ip` and `tc` run inside the pod's namespace rather
//! than a netlink crate: the u32 filter with a mirred action is poorly
//! covered by the Rust netlink crates, and iproute2 is already required by
//! the CNI plugins.

use super::netns::NetNs;
use std::process::Command;

/// What the guest NIC must look like to receive the pod's traffic.
#[derive(Debug)]
pub struct TapInfo {
    /// TAP device name (in the pod namespace).
    pub tap: String,
    /// MAC of the CNI interface, which the guest NIC takes.
    pub mac: String,
    /// MTU of the CNI interface.
    pub mtu: u32,
    /// The TAP, open (with a virtio-net header, no packet info) for the VMM
    /// to inherit: opening it by name would need the pod's namespace and
    /// CAP_NET_ADMIN, which a jailed VMM has neither of.
    pub file: std::fs::File,
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens the existing TAP `name` in the calling thread's namespace, as
/// moat-vmm's virtio-net expects it (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
fn open_tap(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: a 16-byte name, then the flags (a short), padded to 40.
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq from a 40-byte buffer that
    // lives for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, req.as_ptr()) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::other(format!("TUNSETIFF {name}: {e}")));
    }
    Ok(file)
}

fn run(args: &[&str]) -> std::io::Result<String> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let out = Command::new(prog).args(rest).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Creates `tap` in `netns` and redirects all traffic between it and `ifname`.
pub fn setup(netns: &NetNs, ifname: &str, tap: &str) -> std::io::Result<TapInfo> {
    if !valid_ifname(ifname) || !valid_ifname(tap) {
        return Err(std::io::Error::other(format!(
            "invalid interface name {ifname:?} or {tap:?}"
        )));
    }
    let (ifname, tap) = (ifname.to_string(), tap.to_string());
    netns.run(move || {
        let link = run(&["ip", "-j", "link", "show", "dev", &ifname])?;
        let v: serde_json::Value = serde_json::from_str(&link).map_err(std::io::Error::other)?;
        let mac = v[0]["address"]
            .as_str()
            .ok_or_else(|| std::io::Error::other(format!("{ifname} has no MAC")))?
            .to_string();
        let mtu = v[0]["mtu"].as_u64().unwrap_or(1500) as u32;
        run(&[
            "ip", "tuntap", "add", "dev", &tap, "mode", "tap", "vnet_hdr",
        ])?;
        run(&[
            "ip",
            "link",
            "set",
            "dev",
            &tap,
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        for (from, to) in [(&ifname, &tap), (&tap, &ifname)] {
            run(&["tc", "qdisc", "add", "dev", from, "ingress"])?;
            run(&[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ])?;
        }
        let file = open_tap(&tap)?;
        Ok(TapInfo {
            tap,
            mac,
            mtu,
            file,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_ifname("eth0") && valid_ifname("tap0_kata"));
        for bad in ["", "a b", "x/y", "0123456789abcdef", "-o", "a;b"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }
}
