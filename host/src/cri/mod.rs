//! The CRI gRPC server (runtime.v1) on a Unix socket, in containerd's
//! shape: one module per RPC group over shared stores.
//!
//! - [`authority`]: the shim in front of tonic that lets clients send any
//!   HTTP/2 `:authority` (a socket path, an empty string): frame
//!   forwarding, the HPACK rewrite and the connection tonic is handed.
//! - [`client`]: a channel to the CRI socket, for clients.
//! - [`image_service`]: the ImageService.
//! - [`runtime_service`]: the RuntimeService trait, dispatching to
//!   [`runtime_info`] (Version, Status, RuntimeConfig, UpdateRuntimeConfig),
//!   [`sandbox`] (the pod sandbox RPCs), [`container`] (the container
//!   RPCs), [`stats`], [`metrics`] (cAdvisor-style metrics) and [`events`].

pub mod authority;
pub mod client;
pub mod container;
pub mod events;
pub mod image_service;
pub mod metrics;
pub mod runtime_info;
pub mod runtime_service;
pub mod sandbox;
pub mod stats;
pub mod streaming;

use crate::config::Config;
use crate::container::Containers;
use crate::image::{ImageError, ImageService};
use crate::network::CniNetwork;
use crate::pod::{PodError, Pods};
use crate::store::Store;
use crate::streaming::StreamingServer;
use anyhow::Context;
use moat_proto::cri::image_service_server::ImageServiceServer;
use moat_proto::cri::runtime_service_server::RuntimeServiceServer;
use std::sync::Arc;
use tonic::Status;

/// Maps image errors onto gRPC codes.
pub fn status_from_image_error(e: ImageError) -> Status {
    match e {
        ImageError::BadReference(_) => Status::invalid_argument(format!("image: {e}")),
        ImageError::NotFound(_) => Status::not_found(e.to_string()),
        ImageError::Pull(_) => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// Maps sandbox errors onto gRPC codes.
pub fn status_from_pod_error(e: PodError) -> Status {
    match e {
        PodError::Invalid(m) => Status::invalid_argument(m),
        PodError::NotFound(_) => Status::not_found(e.to_string()),
        PodError::Precondition(m) => Status::failed_precondition(m),
        PodError::NameTaken { .. } => Status::already_exists(e.to_string()),
        other => Status::internal(crate::chain(&other)),
    }
}

/// Runs a state-changing RPC's work to its end even when the caller goes
/// away: kubelet's deadline (`grpc-timeout`) drops the handler, and work
/// stopped half-way would leave a VM, a netns or a slot behind with no one
/// to finish it. The caller's retry then finds the result (or, for a pod,
/// its name taken by the finished sandbox).
pub async fn detached<T, Fut>(work: Fut) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(Status::internal(format!(
            "the request's handler failed: {e}"
        )))
    })
}

/// What every RPC handler shares.
pub struct Daemon {
    /// The configuration moatd started with.
    pub config: Config,
    /// Pod sandboxes.
    pub pods: Arc<Pods>,
    /// Containers in them.
    pub containers: Containers,
    /// Images.
    pub images: Arc<ImageService>,
    /// Container and sandbox events for GetContainerEvents.
    pub events: events::EventBus,
    /// Where exec sessions are served.
    pub streaming: Arc<StreamingServer>,
}

impl Daemon {
    /// Opens the state, loads the CNI network, and recovers sandboxes.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Self>> {
        for dir in [&config.state_dir, &config.run_dir, &config.log_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let store = Store::open(&config.state_dir)?;
        let images = Arc::new(
            ImageService::open(
                &config.state_dir,
                store.clone(),
                config.insecure_registries.clone(),
            )?
            .with_registry_config_dir(&config.registry_config_dir)
            .with_limits(config.image_limits),
        );
        let cni = match CniNetwork::load_dir(&config.cni_conf_dir, config.cni_bin_dirs.clone()) {
            Ok(n) => {
                tracing::info!(network = n.name(), "CNI network loaded");
                Some(n)
            }
            Err(e) => {
                tracing::warn!("{e}; pods without host networking will be refused");
                None
            }
        };
        let events = events::EventBus::new();
        let locks = crate::pod::PodLocks::default();
        let agents = crate::agent::AgentPool::default();
        let containers = Containers::new(
            &config,
            store.clone(),
            events.clone(),
            locks.clone(),
            agents.clone(),
        );
        let pods = Arc::new(Pods::new(config.clone(), store, cni, locks, agents));
        pods.recover().await?;
        containers.recover(&pods.list()?).await?;
        let streaming = StreamingServer::start(&config.streaming, containers.clone(), pods.clone())
            .await
            .context("starting the streaming server")?;
        Ok(Arc::new(Self {
            config,
            pods,
            containers,
            images,
            events,
            streaming,
        }))
    }
}

/// A listening socket at `socket`, replacing a stale one. It is bound and
/// made 0660 under a temporary name and renamed into place only once it
/// listens: a client that sees the path (kubelet polls for it) is never
/// refused for connecting between bind and listen.
fn listen_at(socket: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let mut name = socket.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    let fresh = std::path::PathBuf::from(name);
    let _ = std::fs::remove_file(&fresh);
    let listener = std::os::unix::net::UnixListener::bind(&fresh)
        .with_context(|| format!("binding {}", fresh.display()))?;
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&fresh, socket));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&fresh);
        return Err(e).with_context(|| format!("placing {}", socket.display()));
    }
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Serves CRI on the configured socket until SIGINT/SIGTERM. Pod VMs keep
/// running when moatd stops; the next moatd finds them again.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let socket = config.socket.clone();
    let daemon = Daemon::open(config).await?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = listen_at(&socket)?;
    tracing::info!(socket = %socket.display(), "serving CRI");
    // Every connection goes through the authority shim: h2 would reset the
    // streams of clients that send the socket path as `:authority`.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(authority::accept),
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stopping; pod VMs keep running");
    };
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime_service::CriRuntime::new(
            daemon.clone(),
        )))
        .add_service(ImageServiceServer::new(image_service::CriImages::new(
            daemon.images.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
