//! HTTP to one registry host as the OCI distribution spec defines it: GETs
//! of manifests and blobs under the host's API root, answered challenges
//! (`Bearer`: a token from the challenge's realm; `Basic`: the pull's
//! credentials), and bodies read within a cap.
//!
//! moatd speaks this itself over reqwest rather than through oci-client's
//! client: that client cannot present a client certificate, send
//! hosts.toml's `header`s, or stop reading at a size cap, and it takes no
//! reqwest client from its caller. oci-client still supplies the reference
//! and manifest types.

use super::hosts::RegistryHost;
use super::pull::{error_chain, PullAuth};
use oci_client::Reference;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use std::time::Duration;

/// The largest token response read from a realm.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Why a request failed, and whether the host could not be reached at all.
#[derive(Debug)]
pub(super) struct RequestError {
    /// What failed, naming the URL.
    pub(super) reason: String,
    /// The host did not answer (connect failure or timeout).
    pub(super) connect: bool,
}

impl RequestError {
    fn new(reason: String) -> Self {
        Self {
            reason,
            connect: false,
        }
    }

    fn http(url: &str, e: &reqwest::Error) -> Self {
        Self {
            reason: format!("GET {url}: {}", error_chain(e)),
            connect: e.is_connect() || e.is_timeout(),
        }
    }
}

/// What a GET asks for under the repository.
#[derive(Debug, Clone, Copy)]
pub(super) enum Object {
    /// `manifests/<tag or digest>`.
    Manifest,
    /// `blobs/<digest>`.
    Blob,
}

/// One registry host as one pull uses it: a client with the host's TLS,
/// proxy and header settings, where the image lives there, and the
/// authorization the host last accepted.
pub(super) struct HostClient {
    http: reqwest::Client,
    /// `scheme://host[:port][prefix]/v2/<repository>`.
    repository_url: String,
    /// `?ns=<registry>` on a mirror's requests (as containerd sends).
    query: String,
    repository: String,
    /// The `Authorization` to send; `None` until a challenge asks for one.
    authorization: tokio::sync::Mutex<Option<HeaderValue>>,
}

impl HostClient {
    /// A client for `reference` (as this host is asked for it) on `host`.
    pub(super) fn new(
        host: &RegistryHost,
        reference: &Reference,
        auth: &PullAuth,
    ) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("moatd/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(host.skip_verify)
            .connect_timeout(host.dial_timeout.unwrap_or(Duration::from_secs(10)))
            .read_timeout(Duration::from_secs(60));
        for (path, pem) in &host.ca {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| format!("CA {}: {}", path.display(), error_chain(&e)))?;
            b = b.add_root_certificate(cert);
        }
        if let Some(client) = &host.client {
            let identity = reqwest::Identity::from_pem(&client.pem).map_err(|e| {
                format!(
                    "client certificate {}: {}",
                    client.files.0.display(),
                    error_chain(&e)
                )
            })?;
            b = b.identity(identity);
        }
        if let Some(p) = &host.proxy {
            let proxy = reqwest::Proxy::all(p).map_err(|e| format!("proxy {p}: {e}"))?;
            b = b.proxy(proxy);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &host.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?}"))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| format!("header value {value:?}"))?;
            headers.append(name, value);
        }
        let http = b
            .default_headers(headers)
            .build()
            .map_err(|e| error_chain(&e))?;
        let registry = host.registry();
        let query = if registry != reference.registry() {
            format!("?ns={}", reference.registry())
        } else {
            String::new()
        };
        let authorization = (!auth.registry_token.is_empty())
            .then(|| HeaderValue::from_str(&format!("Bearer {}", auth.registry_token)).ok())
            .flatten();
        Ok(Self {
            http,
            repository_url: format!(
                "{}://{registry}/v2/{}",
                host.scheme.as_str(),
                reference.repository()
            ),
            query,
            repository: reference.repository().to_string(),
            authorization: tokio::sync::Mutex::new(authorization),
        })
    }

    /// The URL of `object` `target` on this host.
    pub(super) fn url(&self, object: Object, target: &str) -> String {
        let kind = match object {
            Object::Manifest => "manifests",
            Object::Blob => "blobs",
        };
        format!("{}/{kind}/{target}{}", self.repository_url, self.query)
    }

    /// GETs `object` `target`, answering the host's challenge once if it
    /// asks for authorization. A response other than 401 is returned as it
    /// is, success or not.
    pub(super) async fn get(
        &self,
        object: Object,
        target: &str,
        accept: Option<&str>,
        auth: &PullAuth,
    ) -> Result<reqwest::Response, RequestError> {
        let url = self.url(object, target);
        let send = |authorization: Option<HeaderValue>| {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(a) = authorization {
                req = req.header(AUTHORIZATION, a);
            }
            req.send()
        };
        let sent = self.authorization.lock().await.clone();
        let resp = send(sent.clone())
            .await
            .map_err(|e| RequestError::http(&url, &e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let answer = self.answer(&url, &challenge, auth).await?;
        if answer.is_none() || answer == sent {
            return Err(RequestError::new(format!(
                "GET {url}: 401 Unauthorized{}",
                if auth.username.is_empty() && auth.registry_token.is_empty() {
                    " (the pull carried no credentials)"
                } else {
                    " (the credentials were refused)"
                }
            )));
        }
        *self.authorization.lock().await = answer.clone();
        send(answer).await.map_err(|e| RequestError::http(&url, &e))
    }

    /// Like [`HostClient::get`], with a response other than success turned
    /// into an error that quotes the start of its body.
    pub(super) async fn get_ok(
        &self,
        object: Object,
        target: &str,
        accept: Option<&str>,
        auth: &PullAuth,
    ) -> Result<reqwest::Response, RequestError> {
        let resp = self.get(object, target, accept, auth).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, 4096).await.unwrap_or_default();
        Err(RequestError::new(format!(
            "GET {}: {status}: {}",
            self.url(object, target),
            said(&body)
        )))
    }

    /// The `Authorization` that answers `challenge` (a `WWW-Authenticate`
    /// value): a token from a `Bearer` realm, asked with the pull's
    /// credentials if it has any, or those credentials for `Basic`.
    async fn answer(
        &self,
        url: &str,
        challenge: &str,
        auth: &PullAuth,
    ) -> Result<Option<HeaderValue>, RequestError> {
        let parsed = http_auth::parse_challenges(challenge).map_err(|e| {
            RequestError::new(format!(
                "GET {url}: 401 with an unreadable challenge {challenge:?}: {e}"
            ))
        })?;
        let basic = || {
            (!auth.username.is_empty()).then(|| {
                use base64::Engine;
                let pair = format!("{}:{}", auth.username, auth.password);
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                HeaderValue::from_str(&format!("Basic {encoded}")).ok()
            })
        };
        for c in &parsed {
            if c.scheme.eq_ignore_ascii_case("bearer") {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                let Some(realm) = param("realm") else {
                    return Err(RequestError::new(format!(
                        "GET {url}: a Bearer challenge without a realm"
                    )));
                };
                let token = self.token(&realm, param("service"), auth).await?;
                return Ok(HeaderValue::from_str(&format!("Bearer {token}")).ok());
            }
        }
        if parsed
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            return Ok(basic().flatten());
        }
        Err(RequestError::new(format!(
            "GET {url}: 401 with no Bearer or Basic challenge ({challenge:?})"
        )))
    }

    /// Asks `realm` for a pull token for the repository (the distribution
    /// token protocol: `GET realm?scope=repository:<name>:pull&service=…`,
    /// with basic auth when the pull has credentials).
    async fn token(
        &self,
        realm: &str,
        service: Option<String>,
        auth: &PullAuth,
    ) -> Result<String, RequestError> {
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RequestError::new(format!(
                "the token realm {realm:?} is not an http(s) URL"
            )));
        }
        let scope = format!("repository:{}:pull", self.repository);
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if !auth.username.is_empty() {
            req = req.basic_auth(&auth.username, Some(&auth.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RequestError::http(realm, &e))?;
        let status = resp.status();
        let body = read_capped(resp, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| RequestError::new(format!("token from {realm}: {e}")))?;
        if !status.is_success() {
            return Err(RequestError::new(format!(
                "token from {realm}: {status}: {}",
                said(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| RequestError::new(format!("token from {realm}: unreadable: {e}")))?;
        let token = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() || HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(RequestError::new(format!(
                "token from {realm}: no usable token in the answer"
            )));
        }
        Ok(token)
    }
}

/// Reads a response body whole, refusing one over `max` bytes (declared or
/// sent).
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(error_chain(&e)))?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// Over the cap.
    #[error("over the size limit")]
    TooLarge,
    /// The connection failed mid-body.
    #[error("reading the body: {0}")]
    Read(String),
}

/// The start of an error body, for messages.
fn said(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(512)])
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::hosts::{parse_hosts_file, registry_hosts, RegistryHosts, Scheme};
    use super::super::pull::{parse_reference, PullAuth, Puller};
    use super::super::test_registry::{manifest, serve_with, Guard};
    use crate::config::ImageLimits;

    const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("/v2/app/manifests/latest".into(), manifest(CONFIG, &[])),
            (
                format!(
                    "/v2/app/blobs/{}",
                    super::super::test_registry::digest_of(CONFIG)
                ),
                CONFIG.to_vec(),
            ),
        ]
    }

    async fn resolve(
        addr: &str,
        auth: &PullAuth,
        hosts: Option<RegistryHosts>,
    ) -> Result<(), String> {
        let reference = parse_reference(&format!("{addr}/app:latest")).unwrap();
        let hosts = match hosts {
            Some(h) => h,
            None => registry_hosts(None, reference.registry(), &[]).unwrap(),
        };
        let p = Puller::new(reference, auth, &hosts).map_err(|e| e.reason())?;
        p.resolve(&ImageLimits::default())
            .await
            .map(|_| ())
            .map_err(|e| e.reason())
    }

    fn creds(user: &str, password: &str) -> PullAuth {
        PullAuth {
            username: user.into(),
            password: password.into(),
            ..Default::default()
        }
    }

    /// A Bearer challenge is answered with a token from its realm, asked
    /// with the pull's credentials; without them, or with wrong ones, the
    /// error says what the realm answered.
    #[tokio::test]
    async fn bearer_challenges_are_answered_with_a_token_from_the_realm() {
        let guard = Guard {
            token_for: Some(("moat".into(), "s3cret".into())),
            header: None,
        };
        let addr = serve_with(files(), None, guard).await;
        resolve(&addr, &creds("moat", "s3cret"), None)
            .await
            .expect("resolve with the right credentials");
        let e = resolve(&addr, &PullAuth::default(), None)
            .await
            .unwrap_err();
        assert!(e.contains("/token: 401"), "{e}");
        let e = resolve(&addr, &creds("moat", "wrong"), None)
            .await
            .unwrap_err();
        assert!(e.contains("bad credentials"), "{e}");
        // A CRI registry token is sent as it is.
        let token = PullAuth {
            registry_token: super::super::test_registry::TOKEN.into(),
            ..Default::default()
        };
        resolve(&addr, &token, None)
            .await
            .expect("resolve with a registry token");
    }

    /// hosts.toml's `header` goes with every request to the host (the
    /// guarded registry answers 400 without it), token requests included.
    #[tokio::test]
    async fn hosts_toml_headers_go_with_every_request() {
        let guard = Guard {
            token_for: Some(("moat".into(), "s3cret".into())),
            header: Some(("x-moat-tenant".into(), "blue".into())),
        };
        let addr = serve_with(files(), None, guard).await;
        let dir = tempfile::tempdir().unwrap();
        let hosts = |text: &str| RegistryHosts {
            dir: Some(dir.path().to_path_buf()),
            hosts: parse_hosts_file(
                text,
                dir.path(),
                &dir.path().join("hosts.toml"),
                &addr,
                Scheme::Http,
            )
            .unwrap(),
        };
        let e = resolve(&addr, &creds("moat", "s3cret"), Some(hosts("")))
            .await
            .unwrap_err();
        assert!(
            e.contains("400") && e.contains("missing header x-moat-tenant"),
            "{e}"
        );
        let with = hosts("[header]\n  x-moat-tenant = \"blue\"\n");
        assert_eq!(
            with.hosts[0].headers,
            [("x-moat-tenant".into(), "blue".into())]
        );
        resolve(&addr, &creds("moat", "s3cret"), Some(with))
            .await
            .expect("resolve with the header");
    }
}
