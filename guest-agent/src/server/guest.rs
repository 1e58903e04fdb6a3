//! Guest-wide RPCs: ping, details, health, clock, entropy, shutdown.

use super::validate::invalid;
use super::R;
use crate::state::State;
use moat_proto::agent::*;
use std::os::fd::AsRawFd;
use tonic::{Response, Status};

fn uptime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub(super) fn ping() -> R<PingResponse> {
    Ok(Response::new(PingResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ns: uptime_ns(),
    }))
}

pub(super) fn details() -> R<GuestDetailsResponse> {
    let uname = nix::sys::utsname::uname().map_err(|e| Status::internal(format!("uname: {e}")))?;
    let info =
        nix::sys::sysinfo::sysinfo().map_err(|e| Status::internal(format!("sysinfo: {e}")))?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Ok(Response::new(GuestDetailsResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        online_cpus: cpus,
        memory_total_bytes: info.ram_total(),
    }))
}

pub(super) fn health() -> R<HealthCheckResponse> {
    Ok(Response::new(HealthCheckResponse {
        status: health_check_response::ServingStatus::Serving as i32,
    }))
}

pub(super) fn set_time(req: SetTimeRequest) -> R<SetTimeResponse> {
    if req.nanos >= 1_000_000_000 {
        return Err(invalid("nanos: must be below 1000000000"));
    }
    if req.seconds < 0 {
        return Err(invalid("seconds: must not be negative"));
    }
    let ts = nix::sys::time::TimeSpec::new(req.seconds, i64::from(req.nanos));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| Status::internal(format!("clock_settime: {e}")))?;
    tracing::info!(seconds = req.seconds, "clock set by the host");
    Ok(Response::new(SetTimeResponse {}))
}

/// RNDADDENTROPY = _IOW('R', 0x03, int[2]).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

pub(super) fn add_entropy(req: AddEntropyRequest) -> R<AddEntropyResponse> {
    if req.data.is_empty() || req.data.len() > 4096 {
        return Err(invalid("data: must be 1..=4096 bytes"));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| Status::internal(format!("/dev/random: {e}")))?;
    let bits = (req.data.len() * 8) as i32;
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut buf = Vec::with_capacity(8 + req.data.len() + 4);
    buf.extend_from_slice(&bits.to_ne_bytes());
    buf.extend_from_slice(&(req.data.len() as i32).to_ne_bytes());
    buf.extend_from_slice(&req.data);
    buf.resize(buf.len().div_ceil(4) * 4, 0);
    // SAFETY: the buffer holds a complete rand_pool_info with buf_size bytes.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, buf.as_ptr()) };
    if r != 0 {
        return Err(Status::internal(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(Response::new(AddEntropyResponse {
        bits_credited: bits as u32,
    }))
}

pub(super) async fn shutdown(state: &State) -> R<ShutdownResponse> {
    tracing::info!("shutdown requested by the host");
    super::sandbox::teardown_all(state).await;
    let pid1 = state.config.is_pid1;
    if pid1 {
        // The guest's own disks; an agent on the host has none to flush.
        nix::unistd::sync();
    }
    // Answer first, then power off (or, when not PID 1, exit) from a
    // separate thread so the reply has a chance to leave the guest.
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if pid1 {
            crate::power::poweroff();
        }
        std::process::exit(0);
    });
    Ok(Response::new(ShutdownResponse {}))
}

/// ConfigureNetwork: validates the whole request first, then applies it.
pub async fn configure_network(
    req: ConfigureNetworkRequest,
) -> Result<Response<ConfigureNetworkResponse>, Status> {
    use crate::network::{configure, parse_cidr, InterfaceConfig};
    let mut interfaces = Vec::new();
    for (i, itf) in req.interfaces.iter().enumerate() {
        let mac_ok = itf.mac.len() == 17
            && itf.mac.split(':').count() == 6
            && itf
                .mac
                .split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if !mac_ok {
            return Err(Status::invalid_argument(format!(
                "interfaces[{i}].mac: {:?} is not a MAC address",
                itf.mac
            )));
        }
        if itf.mtu != 0 && !(68..=65535).contains(&itf.mtu) {
            return Err(Status::invalid_argument(format!(
                "interfaces[{i}].mtu: {} is out of range",
                itf.mtu
            )));
        }
        let mut addresses = Vec::new();
        for (j, a) in itf.addresses.iter().enumerate() {
            addresses.push(parse_cidr(a).map_err(|e| {
                Status::invalid_argument(format!("interfaces[{i}].addresses[{j}]: {e}"))
            })?);
        }
        interfaces.push(InterfaceConfig {
            mac: itf.mac.clone(),
            addresses,
            mtu: itf.mtu,
        });
    }
    let mut routes = Vec::new();
    for (i, r) in req.routes.iter().enumerate() {
        let dst = parse_cidr(&r.destination)
            .map_err(|e| Status::invalid_argument(format!("routes[{i}].destination: {e}")))?;
        let gw = if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse::<std::net::Ipv4Addr>().map_err(|_| {
                Status::invalid_argument(format!(
                    "routes[{i}].gateway: {:?} is not an IPv4 address",
                    r.gateway
                ))
            })?)
        };
        routes.push((dst, gw));
    }
    let names = tokio::task::spawn_blocking(move || configure(&interfaces, &routes))
        .await
        .map_err(|e| Status::internal(format!("network task: {e}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Status::not_found(e.to_string()),
            _ => Status::internal(e.to_string()),
        })?;
    tracing::info!(?names, "pod network configured");
    Ok(Response::new(ConfigureNetworkResponse { names }))
}
