//! A forwarded TCP connection to a port on a pod's localhost, opened by
//! the pod's agent in the guest (the pod's network namespace).

use super::manager::{failed, PodError, Pods};
use super::record::SandboxRecord;
use futures_util::StreamExt;
use moat_proto::agent::{PortForwardInput, PortForwardOutput};
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks queued toward the pod before the sender waits.
const QUEUE: usize = 4;

/// How long the agent may take to connect.
const CONNECT: Duration = Duration::from_secs(20);

/// One open connection to a port in a pod.
pub struct PortConnection {
    /// Bytes for the pod; dropping it shuts the connection's write side.
    pub to_pod: mpsc::Sender<Vec<u8>>,
    /// Bytes from the pod; ends when the pod closes its side.
    pub from_pod: tonic::Streaming<PortForwardOutput>,
}

impl Pods {
    /// Connects to `port` on the localhost of ready pod `sb`. A refused
    /// connection is an error that names the port and why.
    pub async fn connect_port(
        &self,
        sb: &SandboxRecord,
        port: u16,
    ) -> Result<PortConnection, PodError> {
        let mut agent = self
            .agents
            .waits(sb)
            .await
            .map_err(super::manager::caused("reaching the pod's agent"))?;
        let (to_pod, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let first = PortForwardInput {
            port: u32::from(port),
            data: Vec::new(),
        };
        let input = futures_util::stream::once(async move { first }).chain(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|data| PortForwardInput { port: 0, data }),
        );
        let connect = async {
            let mut from_pod = agent.port_forward(input).await?.into_inner();
            // The agent's first (empty) message says it is connected.
            match from_pod.message().await? {
                Some(_) => Ok(from_pod),
                None => Err(tonic::Status::unavailable("the agent ended the call")),
            }
        };
        match tokio::time::timeout(CONNECT, connect).await {
            Ok(Ok(from_pod)) => Ok(PortConnection { to_pod, from_pod }),
            Ok(Err(s)) => Err(failed(s.message())),
            Err(_) => Err(failed(format!(
                "connecting to port {port}: no answer in {CONNECT:?}"
            ))),
        }
    }
}
