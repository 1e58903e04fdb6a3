//! Fetching images from OCI registries with `oci-client`.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
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

impl PullAuth {
    fn to_registry_auth(&self) -> RegistryAuth {
        if !self.registry_token.is_empty() {
            RegistryAuth::Bearer(self.registry_token.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
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

/// True for registries on the loopback interface, which are spoken to over
/// plain HTTP like containerd does for localhost.
fn is_loopback_registry(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// Makes rustls use *ring* for TLS to registries (once per process; a
/// provider installed earlier by the embedding program is kept).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A manifest resolved for linux/amd64 and its config.
pub struct ResolvedImage {
    /// The platform manifest.
    pub manifest: OciImageManifest,
    /// Its digest.
    pub manifest_digest: String,
    /// The digest of the index it was picked from, if any.
    pub index_digest: Option<String>,
    /// The raw config JSON (checked against the manifest's config digest).
    pub config: String,
}

/// A registry client for one pull.
pub struct Puller {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
}

impl Puller {
    /// Prepares a pull of `reference`; `insecure` lists extra registries
    /// spoken to over plain HTTP.
    pub fn new(reference: Reference, auth: &PullAuth, insecure: &[String]) -> Self {
        install_crypto_provider();
        let mut plain: Vec<String> = insecure.to_vec();
        let registry = reference.resolve_registry().to_string();
        if is_loopback_registry(&registry) {
            plain.push(registry);
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Self {
            client: Client::new(config),
            auth: auth.to_registry_auth(),
            reference,
        }
    }

    fn registry_err(&self, e: impl std::fmt::Display) -> PullError {
        PullError::Registry {
            reference: self.reference.whole(),
            reason: e.to_string(),
        }
    }

    /// Fetches the manifest (picking linux/amd64 from an index) and config.
    pub async fn resolve(&self) -> Result<ResolvedImage, PullError> {
        let (manifest, manifest_digest, config, index_digest) = self
            .client
            .pull_manifest_and_config_and_list_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.registry_err(e))?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(config.as_bytes())));
        if got != manifest.config.digest {
            return Err(PullError::BadContent {
                reference: self.reference.whole(),
                reason: format!(
                    "config digest {got} does not match the manifest's {}",
                    manifest.config.digest
                ),
            });
        }
        Ok(ResolvedImage {
            manifest,
            manifest_digest,
            index_digest,
            config,
        })
    }

    /// Downloads blob `digest` (a layer of the resolved manifest) to `dest`,
    /// verifying its sha256 while writing.
    pub async fn fetch_blob(
        &self,
        layer: &oci_client::manifest::OciDescriptor,
        dest: &Path,
    ) -> Result<u64, PullError> {
        let io = |context: &str| {
            let reference = self.reference.whole();
            let context = context.to_string();
            move |source| PullError::Io {
                reference,
                context,
                source,
            }
        };
        let Some(want) = layer.digest.strip_prefix("sha256:") else {
            return Err(PullError::BadContent {
                reference: self.reference.whole(),
                reason: format!("unsupported digest algorithm in {}", layer.digest),
            });
        };
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(io("creating the blob file"))?;
        let mut writer = HashingWriter {
            inner: tokio::io::BufWriter::new(file),
            hasher: Sha256::new(),
            len: 0,
        };
        self.client
            .pull_blob(&self.reference, layer, &mut writer)
            .await
            .map_err(|e| self.registry_err(e))?;
        writer.inner.flush().await.map_err(io("writing the blob"))?;
        writer
            .inner
            .get_mut()
            .sync_all()
            .await
            .map_err(io("syncing the blob"))?;
        let got = hex::encode(writer.hasher.finalize());
        if got != want {
            return Err(PullError::BadContent {
                reference: self.reference.whole(),
                reason: format!("layer {} arrived with digest sha256:{got}", layer.digest),
            });
        }
        Ok(writer.len)
    }
}

/// An AsyncWrite that hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
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
    fn loopback_registries_use_http() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("registry.example.com"));
        assert!(!is_loopback_registry("localhost.evil.com:5000"));
    }
}
