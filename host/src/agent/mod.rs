//! gRPC client for the guest agent, reached through the VMM's hybrid vsock.
//!
//! - this file: dialling one agent;
//! - [`pool`]: the channels kept open to each running pod's agent, and the
//!   [`Dialer`] that reaches them (vsock, or in unit tests `fake`, an
//!   in-process fake agent).

#[cfg(test)]
pub mod fake;
pub mod pool;

pub use pool::{AgentError, AgentPool, Dialer, AGENT_CALL};

use moat_proto::agent::agent_client::AgentClient;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

/// How often an idle agent connection is pinged.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping may go unanswered. Generous: a guest under memory
/// pressure or a tight CPU quota answers late, and a dropped connection
/// fails every call on it.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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
    connect_to(AgentAddr::Vsock(uds, port), call_timeout).await
}

/// Where a pod's agent listens.
#[derive(Debug, Clone)]
pub enum AgentAddr {
    /// In a pod VM: the VMM's hybrid-vsock Unix socket and the port.
    Vsock(PathBuf, u32),
    /// Beside a native pod on the host: its own Unix socket.
    Unix(PathBuf),
}

/// Connects a tonic channel to the agent at `addr`, with a limit on every
/// call when given.
pub async fn connect_to(
    addr: AgentAddr,
    call_timeout: Option<std::time::Duration>,
) -> anyhow::Result<AgentClient<Channel>> {
    // The URI is required by tonic but unused: the connector below dials.
    // HTTP/2 pings find a connection that died silently (a long wait or
    // output stream would otherwise hang on it forever).
    let mut endpoint = Endpoint::try_from("http://agent.vsock")?
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let addr = addr.clone();
            async move {
                let stream = match addr {
                    AgentAddr::Vsock(uds, port) => crate::vsock::connect(&uds, port).await?,
                    AgentAddr::Unix(path) => tokio::net::UnixStream::connect(&path).await?,
                };
                Ok::<_, anyhow::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}
