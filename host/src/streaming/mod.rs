//! The streaming server: where kubelet sends `kubectl exec`, `attach` and
//! `port-forward` sessions. Exec, Attach and PortForward answer with a URL
//! on this server holding a single-use token ([`tokens`]), over TLS when
//! configured ([`tls`]); the client (kubelet proxying the user, or crictl)
//! upgrades that URL to SPDY/3.1 ([`spdy`]) or a WebSocket speaking
//! Kubernetes' channel protocols ([`websocket`]); the session runs the
//! command in the container through its pod's agent ([`exec`],
//! [`attach`]) and reports its end ([`status`]), or carries connections
//! to ports on the pod's localhost ([`port_forward`]).

pub mod attach;
pub mod channels;
pub mod exec;
pub mod port_forward;
pub mod spdy;
pub mod status;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod tokens;
pub mod websocket;

use crate::config::StreamingConfig;
use crate::container::{ContainerError, Containers};
use crate::pod::{Pods, SandboxRecord, SandboxState};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use moat_proto::cri::{AttachRequest, ExecRequest, PortForwardRequest};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokens::{TokenCache, TokenError, TOKEN_TTL};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A request waiting for its stream.
#[derive(Debug, Clone)]
pub enum Pending {
    /// `kubectl exec`.
    Exec(ExecRequest),
    /// `kubectl attach`.
    Attach(AttachRequest),
    /// `kubectl port-forward`.
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment of this kind of session.
    fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Attach(_) => "attach",
            Self::PortForward(_) => "portforward",
        }
    }
}

/// The running streaming server.
pub struct StreamingServer {
    base_url: String,
    requests: TokenCache<Pending>,
    containers: Containers,
    pods: Arc<Pods>,
    idle: Duration,
    /// Sessions whose connection is open.
    sessions: std::sync::atomic::AtomicUsize,
}

impl StreamingServer {
    /// Binds the configured address and serves sessions in the background.
    pub async fn start(
        cfg: &StreamingConfig,
        containers: Containers,
        pods: Arc<Pods>,
    ) -> anyhow::Result<Arc<Self>> {
        let ip: IpAddr = cfg.address.parse()?;
        let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind((ip, cfg.port)).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Self {
            base_url: format!("{scheme}://{addr}"),
            requests: TokenCache::new(TOKEN_TTL),
            containers,
            pods,
            idle: Duration::from_secs(cfg.idle_timeout_secs),
            sessions: std::sync::atomic::AtomicUsize::new(0),
        });
        tracing::info!(%addr, tls = tls.is_some(), "streaming server listening");
        tokio::spawn(accept_loop(listener, tls, server.clone()));
        Ok(server)
    }

    /// Where the server listens (`http://ADDR:PORT`, or `https://`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// How many sessions are open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The single-use URL that opens the session of `pending`.
    pub fn url(&self, pending: Pending) -> Result<String, TokenError> {
        let kind = pending.kind();
        let token = self.requests.insert(pending)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Pod `id` if it is ready.
    fn ready_pod(&self, id: &str) -> Result<SandboxRecord, String> {
        let sb = self
            .pods
            .get(id)
            .and_then(|s| self.pods.refresh(s))
            .map_err(|_| format!("pod sandbox {id} not found"))?;
        if sb.state != SandboxState::Ready {
            return Err(format!("pod sandbox {id} is not ready"));
        }
        Ok(sb)
    }

    /// The ready pod of a container.
    fn pod_of(&self, container_id: &str) -> Result<SandboxRecord, ContainerError> {
        let rec = self.containers.get(container_id)?;
        self.ready_pod(&rec.sandbox_id)
            .map_err(|e| ContainerError::Precondition(format!("container {container_id}: {e}")))
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (server, tls) = (server.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve(stream, server).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve(s, server).await,
                        Ok(Err(e)) => tracing::debug!("streaming: TLS handshake: {e}"),
                        Err(_) => tracing::debug!("streaming: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 (and its upgrades) on one connection.
async fn serve<S>(io: S, server: Arc<StreamingServer>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| std::future::ready(route(server.clone(), req)));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r
}

/// Finds the request of the URL's token and starts its session.
fn route(
    server: Arc<StreamingServer>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let pending = match server.requests.consume(token) {
        Some(p) if p.kind() == kind => p,
        _ => {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "unknown or expired streaming URL",
            ))
        }
    };
    Ok(match pending {
        Pending::Exec(r) => upgrade(server, req, Session::Exec(r)),
        Pending::Attach(r) => upgrade(server, req, Session::Attach(r)),
        Pending::PortForward(r) => upgrade_port_forward(server, req, &r),
    })
}

/// A remote-command session: exec or attach.
enum Session {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Session {
    /// Which channels the client reads and writes: (stdin, stdout, stderr, tty).
    fn streams(&self) -> (bool, bool, bool, bool) {
        match self {
            Self::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Self::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        }
    }

    async fn run(self, server: Arc<StreamingServer>, ch: channels::Channels) {
        match self {
            Self::Exec(r) => exec::session(server, ch, r).await,
            Self::Attach(r) => attach::session(server, ch, r).await,
        }
    }
}

/// A connection that has agreed to upgrade, and what to run on it.
type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Answers the upgrade now and, once hyper hands the connection over,
/// runs `then` on it (counted as an open session meanwhile).
fn on_upgraded<F, Fut>(server: &Arc<StreamingServer>, req: &mut Request<Incoming>, then: F)
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(req);
    let open = OpenSession::new(server.clone());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => then(TokioIo::new(io)).await,
            Err(e) => tracing::debug!("streaming upgrade failed: {e}"),
        }
        drop(open);
    });
}

/// Counts a session as open while it lives.
struct OpenSession(Arc<StreamingServer>);

impl OpenSession {
    fn new(server: Arc<StreamingServer>) -> Self {
        server
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(server)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0
            .sessions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Accepts a WebSocket upgrade speaking one of `supported`: the answer,
/// and the protocol chosen; or why not (a bad request).
fn accept_websocket(
    req: &Request<Incoming>,
    supported: &[websocket::ChannelProtocol],
) -> Result<(Response<Full<Bytes>>, websocket::ChannelProtocol), String> {
    let proto = websocket::negotiate(req.headers(), supported)?;
    Ok((websocket::accept(req.headers(), &proto)?, proto))
}

/// The server side of an upgraded WebSocket connection.
async fn websocket_stream(io: Upgraded) -> tokio_tungstenite::WebSocketStream<Upgraded> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(websocket::MAX_MESSAGE))
        .max_frame_size(Some(websocket::MAX_MESSAGE));
    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// Completes the upgrade of an exec or attach URL (SPDY/3.1 or WebSocket)
/// and runs the session on the upgraded connection.
fn upgrade(
    server: Arc<StreamingServer>,
    mut req: Request<Incoming>,
    session: Session,
) -> Response<Full<Bytes>> {
    let (stdin, stdout, stderr, tty) = session.streams();
    if spdy::is_upgrade(req.headers()) {
        let (name, version) = match spdy::negotiate(req.headers(), spdy::REMOTE_COMMAND) {
            Ok(p) => p,
            Err(e) => return plain(StatusCode::FORBIDDEN, &e),
        };
        let expected = spdy::Expected {
            stdin,
            stdout,
            stderr,
            resize: tty && version >= 3,
        };
        on_upgraded(&server.clone(), &mut req, move |io| async move {
            match spdy::carry(io, version, expected).await {
                Ok(ch) => session.run(server, ch).await,
                Err(e) => tracing::info!("streaming: session not started: {e}"),
            }
        });
        return spdy::accept(name);
    }
    if !websocket::is_upgrade(req.headers()) {
        return plain(
            StatusCode::BAD_REQUEST,
            "upgrade to SPDY/3.1 or a WebSocket (v4.channel.k8s.io or v5.channel.k8s.io) to use this URL",
        );
    }
    let (response, proto) = match accept_websocket(&req, websocket::REMOTE_COMMAND) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    // Kubernetes' server says the session is up with an empty message on
    // the lowest channel the client reads.
    let hello = if stdout {
        channels::STDOUT
    } else if stderr {
        channels::STDERR
    } else {
        channels::ERROR
    };
    on_upgraded(&server.clone(), &mut req, move |io| async move {
        let ch = websocket::carry(websocket_stream(io).await, proto, Some(hello));
        session.run(server, ch).await;
    });
    response
}

/// Completes the upgrade of a port-forward URL: SPDY/3.1 with
/// `portforward.k8s.io` (ports chosen per stream), or a WebSocket carrying
/// the ports named in the URL's query (else in the PortForward request).
fn upgrade_port_forward(
    server: Arc<StreamingServer>,
    mut req: Request<Incoming>,
    pf: &PortForwardRequest,
) -> Response<Full<Bytes>> {
    let sb = match server.ready_pod(&pf.pod_sandbox_id) {
        Ok(sb) => sb,
        Err(e) => return plain(StatusCode::NOT_FOUND, &e),
    };
    if spdy::is_upgrade(req.headers()) {
        let (name, _) = match spdy::negotiate(req.headers(), spdy::PORT_FORWARD) {
            Ok(p) => p,
            Err(e) => return plain(StatusCode::FORBIDDEN, &e),
        };
        on_upgraded(&server.clone(), &mut req, move |io| {
            spdy::port_forward::serve(io, server, sb)
        });
        return spdy::accept(name);
    }
    if !websocket::is_upgrade(req.headers()) {
        return plain(
            StatusCode::BAD_REQUEST,
            "upgrade to SPDY/3.1 (portforward.k8s.io) or a WebSocket to use this URL",
        );
    }
    let mut ports = match port_forward::query_ports(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    if ports.is_empty() {
        ports = match pf
            .port
            .iter()
            .map(|p| port_forward::parse_port(&p.to_string()))
            .collect()
        {
            Ok(p) => p,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
        };
    }
    if ports.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "name the ports to forward (?port=N, or in the PortForward request)",
        );
    }
    if ports.len() > port_forward::MAX_WEBSOCKET_PORTS {
        return plain(
            StatusCode::BAD_REQUEST,
            &format!(
                "at most {} ports per WebSocket session",
                port_forward::MAX_WEBSOCKET_PORTS
            ),
        );
    }
    let (response, proto) = match accept_websocket(&req, websocket::PORT_FORWARD) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    on_upgraded(&server.clone(), &mut req, move |io| async move {
        let ch = websocket::carry(websocket_stream(io).await, proto, None);
        port_forward::websocket_session(server, ch, sb, ports).await;
    });
    response
}
