//! The channels moatd keeps open to the agents of running pod VMs: one
//! place that dials, caches, limits calls in time and forgets a pod's agent.

use crate::pod::SandboxRecord;
use moat_proto::agent::agent_client::AgentClient;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// How long the agent may take to answer one call on a [`AgentPool::calls`]
/// channel.
pub const AGENT_CALL: Duration = Duration::from_secs(60);

/// How long dialling an agent may take.
const DIAL: Duration = Duration::from_secs(10);

/// Why no channel to a pod's agent could be had.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not accept a connection in time.
    #[error("pod {0}: the agent did not answer")]
    NoAnswer(String),
    /// Connecting failed.
    #[error("pod {pod}: reaching the agent: {source:#}")]
    Connect {
        /// The pod.
        pod: String,
        /// What failed.
        #[source]
        source: anyhow::Error,
    },
}

/// Open channels, keyed by pod id and whether their calls are time-limited.
type Channels = HashMap<(String, bool), AgentClient<Channel>>;

/// A dial in progress.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = anyhow::Result<AgentClient<Channel>>> + Send + 'a>>;

/// How the pool reaches a pod's agent: through the VM's hybrid vsock, or
/// (in unit tests) an in-process fake agent.
pub trait Dialer: Send + Sync {
    /// Opens a channel to the agent of `sb`, each call limited to
    /// `call_limit` when given.
    fn dial<'a>(&'a self, sb: &'a SandboxRecord, call_limit: Option<Duration>) -> Dialing<'a>;
}

/// Dials the agent through the VM's hybrid-vsock Unix socket, or a native
/// pod's agent on its own socket.
struct VsockDialer;

impl Dialer for VsockDialer {
    fn dial<'a>(&'a self, sb: &'a SandboxRecord, call_limit: Option<Duration>) -> Dialing<'a> {
        let addr = match sb.kind {
            crate::config::HandlerKind::Microvm => {
                super::AgentAddr::Vsock(sb.vm_paths.vsock(), moat_proto::AGENT_VSOCK_PORT)
            }
            crate::config::HandlerKind::Oci => super::AgentAddr::Unix(sb.vm_paths.agent()),
        };
        Box::pin(super::connect_to(addr, call_limit))
    }
}

/// Agent channels per pod VM (HTTP/2, multiplexed), each kind dialled when
/// first needed; clones share them.
#[derive(Clone)]
pub struct AgentPool {
    channels: Arc<Mutex<Channels>>,
    dialer: Arc<dyn Dialer>,
}

impl Default for AgentPool {
    fn default() -> Self {
        Self::with_dialer(Arc::new(VsockDialer))
    }
}

impl AgentPool {
    /// A pool reaching agents through `dialer` (the default one uses vsock).
    pub fn with_dialer(dialer: Arc<dyn Dialer>) -> Self {
        Self {
            channels: Arc::default(),
            dialer,
        }
    }

    /// The channel for calls that answer at once: each call fails after
    /// [`AGENT_CALL`], so a stuck guest cannot hold a CRI request forever.
    pub async fn calls(&self, sb: &SandboxRecord) -> Result<AgentClient<Channel>, AgentError> {
        self.channel(sb, true).await
    }

    /// The channel without a time limit, for waits and output streams.
    pub async fn waits(&self, sb: &SandboxRecord) -> Result<AgentClient<Channel>, AgentError> {
        self.channel(sb, false).await
    }

    /// Drops the pod's channels: its VM stopped, or a call showed them
    /// broken (the next use dials again).
    pub fn forget(&self, pod_id: &str) {
        if let Ok(mut m) = self.channels.lock() {
            m.retain(|(pod, _), _| pod != pod_id);
        }
    }

    async fn channel(
        &self,
        sb: &SandboxRecord,
        bounded: bool,
    ) -> Result<AgentClient<Channel>, AgentError> {
        let key = (sb.id.clone(), bounded);
        if let Some(c) = self.channels.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let limit = bounded.then_some(AGENT_CALL);
        let client = tokio::time::timeout(DIAL, self.dialer.dial(sb, limit))
            .await
            .map_err(|_| AgentError::NoAnswer(sb.id.clone()))?
            .map_err(|source| AgentError::Connect {
                pod: sb.id.clone(),
                source,
            })?;
        if let Ok(mut m) = self.channels.lock() {
            m.insert(key, client.clone());
        }
        Ok(client)
    }
}
