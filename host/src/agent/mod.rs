//! gRPC client for the guest agent, reached through the VMM's hybrid vsock.
//!
//! - this file: dialling one agent;
//! - [`pool`]: the channels kept open to each running pod's agent.

pub mod pool;

pub use pool::{AgentError, AgentPool, AGENT_CALL};

use moat_proto::agent::agent_client::AgentClient;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects a tonic channel to the agent of the VM whose vsock Unix socket
/// is `uds`. Each (re)connection does a fresh CONNECT handshake.
pub async fn connect(uds: PathBuf, port: u32) -> anyhow::Result<AgentClient<Channel>> {
    connect_with(uds, port, None).await
}

/// Like [`connect`], with a limit on every call of the channel (for unary
/// calls that must not wait on a stuck guest forever; not for long waits
/// or output streams).
pub async fn connect_with(
    uds: PathBuf,
    port: u32,
    call_timeout: Option<std::time::Duration>,
) -> anyhow::Result<AgentClient<Channel>> {
    // The URI is required by tonic but unused: the connector below dials.
    let mut endpoint = Endpoint::try_from("http://agent.vsock")?;
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
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
