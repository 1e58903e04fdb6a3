//! gRPC client for the guest agent, reached through the VMM's hybrid vsock.

use moat_proto::agent::agent_client::AgentClient;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects a tonic channel to the agent of the VM whose vsock Unix socket
/// is `uds`. Each (re)connection does a fresh CONNECT handshake.
pub async fn connect(uds: PathBuf, port: u32) -> anyhow::Result<AgentClient<Channel>> {
    // The URI is required by tonic but unused: the connector below dials.
    let channel = Endpoint::try_from("http://agent.vsock")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let uds = uds.clone();
            async move {
                let stream = crate::vsock::connect(&uds, port).await?;
                Ok::<_, crate::vsock::VsockError>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}
