//! The agent's gRPC service (`moat.agent.v1.Agent`).

use moat_proto::agent::agent_server::{Agent, AgentServer};
use moat_proto::agent::*;
use tonic::{Request, Response, Status};

/// Serves the agent API on vsock `port` until the listener fails.
pub async fn serve(port: u32) -> anyhow::Result<()> {
    let incoming = crate::vsock::incoming(port)
        .map_err(|e| anyhow::anyhow!("binding vsock port {port}: {e}"))?;
    tracing::info!(port, "serving agent API on vsock");
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Implementation of the agent API.
pub struct AgentService;

fn uptime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ns: uptime_ns(),
        }))
    }

    async fn guest_details(
        &self,
        _req: Request<GuestDetailsRequest>,
    ) -> Result<Response<GuestDetailsResponse>, Status> {
        let uname =
            nix::sys::utsname::uname().map_err(|e| Status::internal(format!("uname: {e}")))?;
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

    async fn shutdown(
        &self,
        _req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("shutdown requested by the host");
        // Answer first, then power off from a separate thread so the reply
        // has a chance to leave the guest.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            crate::power::poweroff();
        });
        Ok(Response::new(ShutdownResponse {}))
    }
}
