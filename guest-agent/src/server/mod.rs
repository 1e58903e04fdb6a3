//! The agent's gRPC service (`moat.agent.v1.Agent`): one file per RPC
//! group, this file only wires the trait to them.

mod container;
mod container_devices;
mod guest;
mod io;
mod port_forward;
mod process;
mod sandbox;
mod stats;
mod validate;

use crate::state::{Config, State};
use moat_proto::agent::agent_server::{Agent, AgentServer};
use moat_proto::agent::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Implementation of the agent API.
#[derive(Clone)]
pub struct AgentService {
    state: Arc<State>,
}

impl AgentService {
    /// A service with no sandbox and no containers yet.
    pub fn new(config: Config) -> Self {
        Self {
            state: Arc::new(State {
                config,
                sandbox: Default::default(),
                containers: Default::default(),
                creating: Default::default(),
            }),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self).max_decoding_message_size(MAX_REQUEST)
    }
}

/// Largest request the host may send (specs, stdin data): 16 MiB.
pub const MAX_REQUEST: usize = 16 << 20;

/// Serves the agent API on vsock `port` until the listener fails.
pub async fn serve_vsock(port: u32, config: Config) -> anyhow::Result<()> {
    let incoming = crate::vsock::incoming(port)
        .map_err(|e| anyhow::anyhow!("binding vsock port {port}: {e}"))?;
    tracing::info!(port, "serving agent API on vsock");
    tokio::spawn(crate::vsock::announce_ready());
    tonic::transport::Server::builder()
        .add_service(AgentService::new(config).into_server())
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Serves the agent API on a Unix socket (tests and development).
pub async fn serve_unix(path: &std::path::Path, config: Config) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    tracing::info!(path = %path.display(), "serving agent API on a Unix socket");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(AgentService::new(config).into_server())
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn ping(&self, _r: Request<PingRequest>) -> R<PingResponse> {
        guest::ping()
    }
    async fn guest_details(&self, _r: Request<GuestDetailsRequest>) -> R<GuestDetailsResponse> {
        guest::details()
    }
    async fn shutdown(&self, _r: Request<ShutdownRequest>) -> R<ShutdownResponse> {
        guest::shutdown(&self.state).await
    }
    async fn health_check(&self, _r: Request<HealthCheckRequest>) -> R<HealthCheckResponse> {
        guest::health()
    }
    async fn configure_network(
        &self,
        r: Request<ConfigureNetworkRequest>,
    ) -> R<ConfigureNetworkResponse> {
        guest::configure_network(r.into_inner()).await
    }
    async fn set_time(&self, r: Request<SetTimeRequest>) -> R<SetTimeResponse> {
        guest::set_time(r.into_inner())
    }
    async fn add_entropy(&self, r: Request<AddEntropyRequest>) -> R<AddEntropyResponse> {
        guest::add_entropy(r.into_inner())
    }
    async fn guest_stats(&self, _r: Request<GuestStatsRequest>) -> R<GuestStatsResponse> {
        stats::guest_stats()
    }
    async fn create_sandbox(&self, r: Request<CreateSandboxRequest>) -> R<CreateSandboxResponse> {
        sandbox::create(&self.state, r.into_inner()).await
    }
    async fn destroy_sandbox(
        &self,
        _r: Request<DestroySandboxRequest>,
    ) -> R<DestroySandboxResponse> {
        sandbox::destroy(&self.state).await
    }
    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> R<CreateContainerResponse> {
        container::create(&self.state, r.into_inner()).await
    }
    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> R<StartContainerResponse> {
        container::start(&self.state, r.into_inner()).await
    }
    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> R<RemoveContainerResponse> {
        container::remove(&self.state, r.into_inner()).await
    }
    async fn list_containers(
        &self,
        _r: Request<ListContainersRequest>,
    ) -> R<ListContainersResponse> {
        container::list(&self.state).await
    }
    async fn update_container(
        &self,
        r: Request<UpdateContainerRequest>,
    ) -> R<UpdateContainerResponse> {
        container::update(&self.state, r.into_inner()).await
    }
    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> R<ContainerStatsResponse> {
        stats::container_stats(&self.state, r.into_inner()).await
    }
    async fn list_processes(&self, r: Request<ListProcessesRequest>) -> R<ListProcessesResponse> {
        stats::list_processes(&self.state, r.into_inner()).await
    }
    async fn exec_process(&self, r: Request<ExecProcessRequest>) -> R<ExecProcessResponse> {
        process::exec(&self.state, r.into_inner()).await
    }
    async fn signal_process(&self, r: Request<SignalProcessRequest>) -> R<SignalProcessResponse> {
        process::signal(&self.state, r.into_inner()).await
    }
    async fn wait_process(&self, r: Request<WaitProcessRequest>) -> R<WaitProcessResponse> {
        process::wait(&self.state, r.into_inner()).await
    }
    type ReadOutputStream = io::OutputStream;
    async fn read_output(&self, r: Request<ReadOutputRequest>) -> R<Self::ReadOutputStream> {
        io::read_output(&self.state, r.into_inner()).await
    }
    async fn write_stdin(&self, r: Request<WriteStdinRequest>) -> R<WriteStdinResponse> {
        io::write_stdin(&self.state, r.into_inner()).await
    }
    async fn close_stdin(&self, r: Request<CloseStdinRequest>) -> R<CloseStdinResponse> {
        io::close_stdin(&self.state, r.into_inner()).await
    }
    async fn resize_tty(&self, r: Request<ResizeTtyRequest>) -> R<ResizeTtyResponse> {
        io::resize_tty(&self.state, r.into_inner()).await
    }
    type PortForwardStream = port_forward::PortForwardStream;
    async fn port_forward(
        &self,
        r: Request<tonic::Streaming<PortForwardInput>>,
    ) -> R<Self::PortForwardStream> {
        port_forward::port_forward(r.into_inner()).await
    }
}
