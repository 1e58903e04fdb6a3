//! Resolving a reference to its linux/amd64 manifest and config, each read
//! within a size cap.

use super::pull::{Endpoint, HashingWriter, PullError, Puller};
use super::registry::{read_capped, BodyError, Object, RequestError};
use crate::config::ImageLimits;
use oci_client::client::current_platform_resolver;
use oci_client::manifest::{
    OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use sha2::{Digest, Sha256};

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

/// A failure on one host, and whether it was a failure to reach it.
type HostError = (PullError, bool);

impl Puller {
    /// Fetches the manifest (picking linux/amd64 from an index) and config,
    /// from the first host that can: mirrors in order, then the server. A
    /// tag needs a host with the `resolve` capability; a digest, `pull`.
    /// Manifests over `limits.max_manifest_bytes` and configs over
    /// `limits.max_config_bytes` are refused, declared or sent.
    pub async fn resolve(&self, limits: &ImageLimits) -> Result<ResolvedImage, PullError> {
        let by_digest = self.reference.digest().is_some();
        let mut failures = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let caps = ep.host.capabilities;
            let allowed = caps.pull && (by_digest || caps.resolve);
            if !allowed {
                let why = if by_digest {
                    "it lacks the pull capability"
                } else {
                    "it lacks the pull and resolve capabilities"
                };
                tracing::info!(image = %self.reference, host = %ep.label, "not resolving from this host: {why}");
                continue;
            }
            match self.resolve_on(ep, limits).await {
                Ok(resolved) => {
                    tracing::info!(
                        image = %self.reference,
                        host = %ep.label,
                        digest = %resolved.manifest_digest,
                        skipped = failures.len(),
                        "resolved"
                    );
                    return Ok(resolved);
                }
                Err((e, connect)) => {
                    if connect {
                        self.mark_unreachable(i);
                    }
                    tracing::warn!(image = %self.reference, host = %ep.label, "resolving failed, trying the next host: {}", e.reason());
                    failures.push((ep.label.clone(), e));
                }
            }
        }
        if failures.is_empty() {
            return Err(PullError::Registry {
                reference: self.reference.whole(),
                reason: format!(
                    "no configured host may resolve it (hosts: {}; a tag needs the pull and resolve capabilities)",
                    self.hosts().join(", ")
                ),
            });
        }
        Err(self.all_failed("resolve", failures))
    }

    fn bad(&self, reason: String) -> HostError {
        (
            PullError::BadContent {
                reference: self.reference.whole(),
                reason,
            },
            false,
        )
    }

    async fn resolve_on(
        &self,
        ep: &Endpoint,
        limits: &ImageLimits,
    ) -> Result<ResolvedImage, HostError> {
        let target = ep
            .reference
            .digest()
            .or(ep.reference.tag())
            .unwrap_or("latest")
            .to_string();
        let (body, digest) = self
            .get_manifest(ep, &target, limits.max_manifest_bytes)
            .await?;
        if let Some(want) = self.reference.digest() {
            if digest != want {
                return Err(self.bad(format!("the host served {digest} for {want}")));
            }
        }
        let parse = |body: &[u8]| {
            serde_json::from_slice::<OciManifest>(body)
                .map_err(|e| self.bad(format!("unreadable manifest: {e}")))
        };
        let (manifest, manifest_digest, index_digest) = match parse(&body)? {
            OciManifest::Image(m) => (m, digest, None),
            OciManifest::ImageIndex(index) => {
                let Some(pick) = current_platform_resolver(&index.manifests) else {
                    return Err(self.bad("the image index has no linux/amd64 manifest".into()));
                };
                let (body, got) = self
                    .get_manifest(ep, &pick, limits.max_manifest_bytes)
                    .await?;
                match parse(&body)? {
                    OciManifest::Image(m) => (m, got, Some(digest)),
                    OciManifest::ImageIndex(_) => {
                        return Err(self.bad(format!("{pick} is an index inside an index")))
                    }
                }
            }
        };
        let config = self
            .get_config(ep, &manifest, limits.max_config_bytes)
            .await?;
        Ok(ResolvedImage {
            manifest,
            manifest_digest,
            index_digest,
            config,
        })
    }

    /// GETs manifest `target` (a tag or a digest) from `ep`, reading at
    /// most `max` bytes. Returns the body and its digest, checked against
    /// the digest asked for and the one the host names.
    async fn get_manifest(
        &self,
        ep: &Endpoint,
        target: &str,
        max: u64,
    ) -> Result<(Vec<u8>, String), HostError> {
        let url = ep.client.url(Object::Manifest, target);
        let accept = [
            OCI_IMAGE_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ]
        .join(", ");
        let resp = ep
            .client
            .get_ok(Object::Manifest, target, Some(&accept), &self.auth)
            .await
            .map_err(|e| self.request_err(e))?;
        let named = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, max).await.map_err(|e| match e {
            BodyError::TooLarge => self.bad(format!(
                "manifest {target} is over image_limits.max_manifest_bytes ({max})"
            )),
            BodyError::Read(reason) => self.request_err(RequestError {
                reason: format!("GET {url}: {reason}"),
                connect: false,
            }),
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if target.contains(':') && target != digest {
            return Err(self.bad(format!("manifest {target} arrived with digest {digest}")));
        }
        if let Some(named) = named.filter(|n| n.starts_with("sha256:")) {
            if named != digest {
                return Err(self.bad(format!(
                    "manifest {target} arrived with digest {digest}, the host named {named}"
                )));
            }
        }
        Ok((body, digest))
    }

    /// The image config, read into a buffer that takes at most its
    /// declared size, itself at most `max`.
    async fn get_config(
        &self,
        ep: &Endpoint,
        manifest: &OciImageManifest,
        max: u64,
    ) -> Result<String, HostError> {
        let desc = &manifest.config;
        let declared = u64::try_from(desc.size)
            .map_err(|_| self.bad(format!("the config declares a size of {}", desc.size)))?;
        if declared > max {
            return Err(self.bad(format!(
                "the config declares {declared} bytes, over image_limits.max_config_bytes ({max})"
            )));
        }
        let resp = ep
            .client
            .get_ok(Object::Blob, &desc.digest, None, &self.auth)
            .await
            .map_err(|e| self.request_err(e))?;
        let mut writer = HashingWriter {
            inner: Vec::new(),
            hasher: Sha256::new(),
            len: 0,
            limit: declared,
        };
        let sent = writer.copy_body(resp).await;
        if writer.len > declared {
            return Err(self.bad(format!(
                "the config sent more than the {declared} bytes its manifest declares"
            )));
        }
        sent.map_err(|e| {
            self.request_err(RequestError {
                reason: format!("the config {}: {e}", desc.digest),
                connect: false,
            })
        })?;
        let got = format!("sha256:{}", hex::encode(writer.hasher.finalize()));
        if got != desc.digest {
            return Err(self.bad(format!(
                "config digest {got} does not match the manifest's {}",
                desc.digest
            )));
        }
        String::from_utf8(writer.inner).map_err(|_| self.bad("the config is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::hosts::registry_hosts;
    use super::super::pull::{parse_reference, PullAuth};
    use super::super::test_registry::{digest_of, manifest, serve};
    use super::*;

    const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

    async fn resolve(
        addr: &str,
        name: &str,
        limits: &ImageLimits,
    ) -> Result<ResolvedImage, String> {
        let reference = parse_reference(&format!("{addr}/{name}")).unwrap();
        let hosts = registry_hosts(None, reference.registry(), &[]).unwrap();
        let p = Puller::new(reference, &PullAuth::default(), &hosts).unwrap();
        p.resolve(limits).await.map_err(|e| e.reason())
    }

    /// Manifests and configs are held to the limits, declared or sent; an
    /// index yields its linux/amd64 manifest.
    #[tokio::test]
    async fn manifests_and_configs_are_held_to_their_limits() {
        let limits = ImageLimits {
            max_manifest_bytes: 4096,
            max_config_bytes: 1024,
            ..Default::default()
        };
        let honest = manifest(CONFIG, &[]);
        // Padding a manifest with spaces keeps it valid JSON.
        let mut huge = honest.clone();
        huge.extend(std::iter::repeat_n(b' ', 8192));
        let big_config = format!(r#"{{"os":"linux","pad":"{}"}}"#, "x".repeat(2048)).into_bytes();
        let lying = String::from_utf8(manifest(CONFIG, &[]))
            .unwrap()
            .replace(&format!("\"size\":{}", CONFIG.len()), "\"size\":10")
            .into_bytes();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest_of(b"{}"),
                 "size": 2, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest_of(&honest),
                 "size": honest.len(), "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        })
        .to_string()
        .into_bytes();
        let mut files = vec![
            ("/v2/honest/manifests/latest".to_string(), honest.clone()),
            ("/v2/huge/manifests/latest".to_string(), huge),
            (
                "/v2/big/manifests/latest".to_string(),
                manifest(&big_config, &[]),
            ),
            ("/v2/lying/manifests/latest".to_string(), lying),
            ("/v2/multi/manifests/latest".to_string(), index),
            (
                format!("/v2/multi/manifests/{}", digest_of(&honest)),
                honest.clone(),
            ),
            (
                format!("/v2/big/blobs/{}", digest_of(&big_config)),
                big_config.clone(),
            ),
            (
                format!("/v2/honest/manifests/{}", digest_of(b"something else")),
                honest.clone(),
            ),
        ];
        for name in ["honest", "lying", "multi"] {
            files.push((
                format!("/v2/{name}/blobs/{}", digest_of(CONFIG)),
                CONFIG.to_vec(),
            ));
        }
        let addr = serve(files, None).await;

        let r = resolve(&addr, "honest:latest", &limits).await.unwrap();
        assert_eq!(r.config.as_bytes(), CONFIG);
        assert_eq!(r.manifest_digest, digest_of(&honest));
        let e = resolve(&addr, "huge:latest", &limits).await.err().unwrap();
        assert!(
            e.contains("over image_limits.max_manifest_bytes (4096)"),
            "{e}"
        );
        let e = resolve(&addr, "big:latest", &limits).await.err().unwrap();
        assert!(
            e.contains("over image_limits.max_config_bytes (1024)"),
            "{e}"
        );
        let e = resolve(&addr, "lying:latest", &limits).await.err().unwrap();
        assert!(e.contains("more than the 10 bytes"), "{e}");
        let r = resolve(&addr, "multi:latest", &limits).await.unwrap();
        assert_eq!(r.manifest_digest, digest_of(&honest));
        assert!(r.index_digest.is_some());
        // Pinned by digest: the bytes must hash to it.
        let pinned = format!("honest@{}", digest_of(b"something else"));
        let e = resolve(&addr, &pinned, &limits).await.err().unwrap();
        assert!(e.contains("arrived with digest"), "{e}");
    }
}
