//! A pull's registry hosts (mirrors, then the server) and its layers,
//! fetched with their declared sizes and digests enforced.

use super::hosts::{RegistryHost, RegistryHosts, Role};
use super::registry::{HostClient, Object, RequestError};
use oci_client::Reference;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// Credentials for a pull (CRI `AuthConfig`).
#[derive(Debug, Clone, Default)]
pub struct PullAuth {
    /// User name for HTTP basic auth.
    pub username: String,
    /// Password for HTTP basic auth.
    pub password: String,
    /// A registry token used as a bearer token.
    pub registry_token: String,
}

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// As given.
        reference: String,
        /// Parser's complaint.
        reason: String,
    },
    /// The registry failed or refused.
    #[error("pulling {reference}: {reason}")]
    Registry {
        /// The image.
        reference: String,
        /// What the client said.
        reason: String,
    },
    /// Content did not match its digest, or has an unsupported form.
    #[error("pulling {reference}: {reason}")]
    BadContent {
        /// The image.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// Every host configured for the registry failed.
    #[error("pulling {reference}: every registry host failed to {what}: {}", .failures.join("; "))]
    AllHostsFailed {
        /// The image.
        reference: String,
        /// What was being done.
        what: String,
        /// `<host>: <failure>` for each host tried, in order.
        failures: Vec<String>,
    },
    /// The registry host configuration (hosts.toml) cannot be used.
    #[error("pulling {reference}: {source}")]
    HostsConfig {
        /// The image.
        reference: String,
        /// What is wrong, naming the file and key.
        source: super::hosts::HostsError,
    },
    /// Local I/O failed.
    #[error("pulling {reference}: {context}: {source}")]
    Io {
        /// The image.
        reference: String,
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl PullError {
    /// The error without the "pulling <image>" prefix.
    pub fn reason(&self) -> String {
        match self {
            PullError::BadReference { reason, .. }
            | PullError::Registry { reason, .. }
            | PullError::BadContent { reason, .. } => reason.clone(),
            PullError::AllHostsFailed { what, failures, .. } => {
                format!(
                    "every registry host failed to {what}: {}",
                    failures.join("; ")
                )
            }
            PullError::HostsConfig { source, .. } => source.to_string(),
            PullError::Io {
                context, source, ..
            } => format!("{context}: {source}"),
        }
    }
}

/// Parses an image reference, normalized the way kubelet and containerd do
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(image: &str) -> Result<Reference, PullError> {
    let trimmed = image.trim();
    if trimmed.is_empty() {
        return Err(PullError::BadReference {
            reference: image.into(),
            reason: "empty".into(),
        });
    }
    trimmed
        .parse::<Reference>()
        .map_err(|e| PullError::BadReference {
            reference: image.into(),
            reason: e.to_string(),
        })
}

/// Makes rustls use *ring* for TLS to registries (once per process; a
/// provider installed earlier by the embedding program is kept).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One host a pull may use, with its own client (TLS settings are per
/// client) and the reference as that host is asked for it.
pub(super) struct Endpoint {
    pub(super) host: RegistryHost,
    /// HTTP to the host, with its settings and the authorization it took.
    pub(super) client: HostClient,
    /// The image's reference, with the host set as its mirror when the host
    /// is not the registry itself (requests then carry `?ns=<registry>`,
    /// as containerd sends).
    pub(super) reference: Reference,
    /// `mirror http://…` / `server https://…`, for logs and errors.
    pub(super) label: String,
}

/// A registry client for one pull: the image's reference as the user gave
/// it, and the hosts to fetch it from, in order (mirrors, then the server).
pub struct Puller {
    pub(super) reference: Reference,
    pub(super) auth: PullAuth,
    pub(super) endpoints: Vec<Endpoint>,
    /// Endpoints that failed to connect during this pull; later blobs skip
    /// them instead of waiting for each connect to fail again.
    unreachable: std::sync::Mutex<Vec<bool>>,
}

/// An error with its sources (reqwest's own message omits the cause, such
/// as "Connection refused").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    msg
}

impl Puller {
    /// Prepares a pull of `reference` from `hosts` (see
    /// [`super::hosts::registry_hosts`]).
    pub fn new(
        reference: Reference,
        auth: &PullAuth,
        hosts: &RegistryHosts,
    ) -> Result<Self, PullError> {
        install_crypto_provider();
        let mut endpoints = Vec::new();
        for host in &hosts.hosts {
            let registry = host.registry();
            let mut host_ref = reference.clone();
            if registry != reference.registry() {
                host_ref.set_mirror_registry(registry);
            }
            let role = match host.role {
                Role::Mirror => "mirror",
                Role::Server => "server",
            };
            let label = format!(
                "{role} {}://{}",
                host.scheme.as_str(),
                host_ref.resolve_registry()
            );
            let client =
                HostClient::new(host, &host_ref, auth).map_err(|e| PullError::Registry {
                    reference: reference.whole(),
                    reason: format!("setting up a client for {label}: {e}"),
                })?;
            endpoints.push(Endpoint {
                host: host.clone(),
                client,
                reference: host_ref,
                label,
            });
        }
        let unreachable = std::sync::Mutex::new(vec![false; endpoints.len()]);
        Ok(Self {
            reference,
            auth: auth.clone(),
            endpoints,
            unreachable,
        })
    }

    /// The hosts this pull tries, in order (`mirror http://…`, `server https://…`).
    pub fn hosts(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.label.clone()).collect()
    }

    pub(super) fn mark_unreachable(&self, i: usize) {
        if let Ok(mut u) = self.unreachable.lock() {
            u[i] = true;
        }
    }

    fn is_unreachable(&self, i: usize) -> bool {
        self.unreachable.lock().map(|u| u[i]).unwrap_or(false)
    }

    /// The error once every host failed: a single host's error as it is,
    /// else every host with its failure.
    pub(super) fn all_failed(
        &self,
        what: &str,
        mut failures: Vec<(String, PullError)>,
    ) -> PullError {
        if failures.len() == 1 {
            return failures.remove(0).1;
        }
        PullError::AllHostsFailed {
            reference: self.reference.whole(),
            what: what.to_string(),
            failures: failures
                .into_iter()
                .map(|(label, e)| format!("{label}: {}", e.reason()))
                .collect(),
        }
    }

    /// A request's failure on one host, and whether it was a failure to
    /// reach it.
    pub(super) fn request_err(&self, e: RequestError) -> (PullError, bool) {
        (
            PullError::Registry {
                reference: self.reference.whole(),
                reason: e.reason,
            },
            e.connect,
        )
    }

    /// Downloads blob `digest` (a layer of the resolved manifest) to `dest`,
    /// verifying its sha256 and its declared size while writing, from the
    /// first host with the `pull` capability that serves it; a layer over
    /// `max_bytes` (declared or sent) is refused. Returns its size and the
    /// host.
    pub async fn fetch_blob(
        &self,
        layer: &oci_client::manifest::OciDescriptor,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(u64, String), PullError> {
        let Some(want) = layer.digest.strip_prefix("sha256:") else {
            return Err(PullError::BadContent {
                reference: self.reference.whole(),
                reason: format!("unsupported digest algorithm in {}", layer.digest),
            });
        };
        let declared = u64::try_from(layer.size).map_err(|_| PullError::BadContent {
            reference: self.reference.whole(),
            reason: format!("layer {} declares a size of {}", layer.digest, layer.size),
        })?;
        if declared > max_bytes {
            return Err(PullError::BadContent {
                reference: self.reference.whole(),
                reason: format!(
                    "layer {} declares {declared} bytes, over image_limits.max_layer_bytes ({max_bytes})",
                    layer.digest
                ),
            });
        }
        let mut failures = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if !ep.host.capabilities.pull {
                continue;
            }
            if self.is_unreachable(i) {
                failures.push((
                    ep.label.clone(),
                    PullError::Registry {
                        reference: self.reference.whole(),
                        reason: "skipped: unreachable earlier in this pull".into(),
                    },
                ));
                continue;
            }
            match self.fetch_blob_from(ep, layer, want, declared, dest).await {
                Ok(len) => {
                    if !failures.is_empty() {
                        tracing::info!(image = %self.reference, layer = %layer.digest, host = %ep.label, skipped = failures.len(), "layer served by a later host");
                    }
                    return Ok((len, ep.label.clone()));
                }
                Err((e, connect)) => {
                    if matches!(e, PullError::Io { .. }) {
                        return Err(e);
                    }
                    if connect {
                        self.mark_unreachable(i);
                    }
                    tracing::warn!(image = %self.reference, layer = %layer.digest, host = %ep.label, "fetching the layer failed, trying the next host: {}", e.reason());
                    failures.push((ep.label.clone(), e));
                }
            }
        }
        if failures.is_empty() {
            return Err(PullError::Registry {
                reference: self.reference.whole(),
                reason: format!(
                    "no configured host may pull layer {} (hosts: {})",
                    layer.digest,
                    self.hosts().join(", ")
                ),
            });
        }
        Err(self.all_failed(&format!("fetch layer {}", layer.digest), failures))
    }

    async fn fetch_blob_from(
        &self,
        ep: &Endpoint,
        layer: &oci_client::manifest::OciDescriptor,
        want: &str,
        declared: u64,
        dest: &Path,
    ) -> Result<u64, (PullError, bool)> {
        let io = |context: &str| {
            let reference = self.reference.whole();
            let context = context.to_string();
            move |source| {
                (
                    PullError::Io {
                        reference,
                        context,
                        source,
                    },
                    false,
                )
            }
        };
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(io("creating the blob file"))?;
        let mut writer = HashingWriter {
            inner: tokio::io::BufWriter::new(file),
            hasher: Sha256::new(),
            len: 0,
            limit: declared,
        };
        let resp = ep
            .client
            .get_ok(Object::Blob, &layer.digest, None, &self.auth)
            .await
            .map_err(|e| self.request_err(e))?;
        let sent = writer.copy_body(resp).await;
        if writer.len > declared {
            return Err((
                PullError::BadContent {
                    reference: self.reference.whole(),
                    reason: format!(
                        "layer {} sent more than the {declared} bytes its manifest declares",
                        layer.digest
                    ),
                },
                false,
            ));
        }
        sent.map_err(|e| match e {
            CopyError::Read(reason) => self.request_err(RequestError {
                reason: format!("layer {}: {reason}", layer.digest),
                connect: false,
            }),
            CopyError::Write(source) => (
                PullError::Io {
                    reference: self.reference.whole(),
                    context: "writing the blob".into(),
                    source,
                },
                false,
            ),
        })?;
        if writer.len != declared {
            return Err((
                PullError::BadContent {
                    reference: self.reference.whole(),
                    reason: format!(
                        "layer {} ended after {} of the {declared} bytes its manifest declares",
                        layer.digest, writer.len
                    ),
                },
                false,
            ));
        }
        writer.inner.flush().await.map_err(io("writing the blob"))?;
        writer
            .inner
            .get_mut()
            .sync_all()
            .await
            .map_err(io("syncing the blob"))?;
        let got = hex::encode(writer.hasher.finalize());
        if got != want {
            return Err((
                PullError::BadContent {
                    reference: self.reference.whole(),
                    reason: format!("layer {} arrived with digest sha256:{got}", layer.digest),
                },
                false,
            ));
        }
        Ok(writer.len)
    }
}

/// An AsyncWrite that hashes what passes through, and refuses bytes past
/// `limit` (the layer's declared size).
pub(super) struct HashingWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Sha256,
    pub(super) len: u64,
    pub(super) limit: u64,
}

/// Why copying a response body failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
    /// The connection failed mid-body.
    #[error("{0}")]
    Read(String),
    /// Writing failed (also: more bytes than the limit).
    #[error("{0}")]
    Write(std::io::Error),
}

impl<W: tokio::io::AsyncWrite + Unpin> HashingWriter<W> {
    /// Writes `resp`'s body through, stopping at the first byte past the
    /// limit (`len` then counts it, so the caller can tell why).
    pub(super) async fn copy_body(&mut self, mut resp: reqwest::Response) -> Result<(), CopyError> {
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| CopyError::Read(error_chain(&e)))?
        {
            self.write_all(&chunk).await.map_err(CopyError::Write)?;
        }
        Ok(())
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.len.saturating_add(buf.len() as u64) > this.limit {
            // Counted, so the caller can tell why the write failed.
            this.len = this.len.saturating_add(buf.len() as u64);
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "more bytes than the layer's declared size",
            )));
        }
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
            this.len += *n as u64;
        }
        poll
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::hosts::Scheme;
    use super::*;

    #[test]
    fn references_normalize_like_kubelet() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let r = parse_reference("127.0.0.1:5000/moat/busybox:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), Some("v1"));
        assert!(parse_reference("").is_err());
        assert!(parse_reference("UPPER/Case:x").is_err());
        assert!(parse_reference("a:b:c:d").is_err());
    }

    #[test]
    fn pullers_try_mirrors_in_order_then_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.toml");
        let hosts = super::super::hosts::parse_hosts_file(
            "[host.\"http://10.0.0.9:5000\"]\ncapabilities = [\"pull\"]\n[host.\"https://mirror.example/cache\"]\n",
            dir.path(),
            &file,
            "docker.io",
            Scheme::Https,
        )
        .unwrap();
        let reference = parse_reference("busybox").unwrap();
        let hosts = RegistryHosts {
            dir: Some(dir.path().to_path_buf()),
            hosts,
        };
        let p = Puller::new(reference.clone(), &PullAuth::default(), &hosts).unwrap();
        assert_eq!(
            p.hosts(),
            [
                "mirror http://10.0.0.9:5000",
                "mirror https://mirror.example/cache",
                "server https://index.docker.io"
            ]
        );
        // Mirrors are asked with the image's own registry as `ns`; the
        // image keeps its name.
        assert_eq!(p.endpoints[0].reference.namespace(), Some("docker.io"));
        assert_eq!(p.endpoints[2].reference.namespace(), None);
        assert_eq!(p.reference.whole(), "docker.io/library/busybox:latest");
    }

    use super::super::test_registry::digest_of;

    /// Layers must arrive with exactly their declared size, within the
    /// limit: a registry sending more, less, or declaring too much is
    /// refused, naming the layer.
    #[tokio::test]
    async fn layers_are_held_to_their_declared_size_and_the_limit() {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = vec![7u8; 4096];
        let layer_digest = digest_of(&layer);
        let manifest = |size: usize| {
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digest_of(config), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": size}]
            })
            .to_string()
            .into_bytes()
        };
        let files = vec![
            ("/v2/short/manifests/latest".to_string(), manifest(1000)),
            ("/v2/long/manifests/latest".to_string(), manifest(8192)),
            ("/v2/exact/manifests/latest".to_string(), manifest(4096)),
            (
                format!("/v2/short/blobs/{}", digest_of(config)),
                config.to_vec(),
            ),
            (
                format!("/v2/long/blobs/{}", digest_of(config)),
                config.to_vec(),
            ),
            (
                format!("/v2/exact/blobs/{}", digest_of(config)),
                config.to_vec(),
            ),
            (format!("/v2/short/blobs/{layer_digest}"), layer.clone()),
            (format!("/v2/long/blobs/{layer_digest}"), layer.clone()),
            (format!("/v2/exact/blobs/{layer_digest}"), layer.clone()),
        ];
        let addr = super::super::test_registry::serve(files, None).await;
        let dir = tempfile::tempdir().unwrap();
        let fetch = |name: &'static str, limit: u64| {
            let addr = addr.clone();
            let dest = dir.path().join(name);
            async move {
                let reference = parse_reference(&format!("{addr}/{name}:latest")).unwrap();
                let hosts =
                    super::super::hosts::registry_hosts(None, reference.registry(), &[]).unwrap();
                let p = Puller::new(reference, &PullAuth::default(), &hosts).unwrap();
                let resolved = p.resolve(&Default::default()).await.unwrap();
                p.fetch_blob(&resolved.manifest.layers[0], &dest, limit)
                    .await
            }
        };
        // Declared 1000, sent 4096: stopped at the declared size.
        let e = fetch("short", 1 << 30).await.unwrap_err().reason();
        assert!(e.contains("more than the 1000 bytes"), "{e}");
        // Declared 8192, sent 4096.
        let e = fetch("long", 1 << 30).await.unwrap_err().reason();
        assert!(e.contains("ended after 4096 of the 8192 bytes"), "{e}");
        // Honest, but over the limit: refused before downloading.
        let e = fetch("exact", 4095).await.unwrap_err().reason();
        assert!(e.contains("over image_limits.max_layer_bytes"), "{e}");
        let (n, _) = fetch("exact", 4096).await.unwrap();
        assert_eq!(n, 4096);
    }
}
