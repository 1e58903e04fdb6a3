//! A registry for unit tests, on 127.0.0.1: each path answers with a fixed
//! body (manifests with the OCI media type), and a blob can be made to
//! trickle. It serves whatever it is given, lies included.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// `sha256:` and the hex digest of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI manifest of `config` and `layers` (each with its true size).
pub fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": digest_of(l), "size": l.len()})
        })
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(config), "size": config.len()},
        "layers": layers
    })
    .to_string()
    .into_bytes()
}

/// Serves `files` (path, body); the body of path `slow`, if given, one
/// byte a second. Answers the `host:port`.
pub async fn serve(files: Vec<(String, Vec<u8>)>, slow: Option<String>) -> String {
    serve_with(files, slow, Guard::default()).await
}

/// What a guarded registry asks of its clients.
#[derive(Clone, Default)]
pub struct Guard {
    /// Content needs `Bearer <TOKEN>`; the realm `/token` gives it to
    /// these basic credentials only (`None`: content is open).
    pub token_for: Option<(String, String)>,
    /// Every request must carry this header and value (else 400).
    pub header: Option<(String, String)>,
}

/// The token a guarded registry's realm gives.
pub const TOKEN: &str = "t0ken";

/// Like [`serve`], asking what `guard` says: a distribution-style Bearer
/// challenge and token realm, and a required header.
pub async fn serve_with(
    files: Vec<(String, Vec<u8>)>,
    slow: Option<String>,
    guard: Guard,
) -> String {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (files, slow, guard) = (files.clone(), slow.clone(), guard.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let path = req.uri().path().to_string();
                    let refused = refusal(&req, &guard, &addr.to_string());
                    let found = files.iter().find(|(p, _)| *p == path).map(|f| f.1.clone());
                    let trickle = slow.as_deref() == Some(path.as_str());
                    async move {
                        if let Some(r) = refused {
                            return Ok(r);
                        }
                        let body = found.clone().unwrap_or_default();
                        let chunks: Vec<Bytes> = if trickle {
                            body.iter().map(|b| Bytes::from(vec![*b])).collect()
                        } else {
                            vec![Bytes::from(body)]
                        };
                        let stream = futures_util::stream::unfold(
                            (chunks.into_iter(), trickle),
                            |(mut it, trickle)| async move {
                                let c = it.next()?;
                                if trickle {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                Some((
                                    Ok::<_, std::convert::Infallible>(Frame::data(c)),
                                    (it, trickle),
                                ))
                            },
                        );
                        let mut r = http::Response::new(StreamBody::new(stream).boxed());
                        if found.is_none() && path != "/v2/" {
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        if path.contains("/manifests/") {
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "application/vnd.oci.image.manifest.v1+json",
                                ),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr.to_string()
}

/// A response body of any kind.
type Body = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::convert::Infallible>;

/// The answer to a request `guard` does not let through, if any.
fn refusal<B>(req: &http::Request<B>, guard: &Guard, addr: &str) -> Option<http::Response<Body>> {
    use http_body_util::{BodyExt, Full};
    let answer = |status: http::StatusCode, body: String| {
        let mut r = http::Response::new(Full::new(hyper::body::Bytes::from(body)).boxed());
        *r.status_mut() = status;
        r
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some((name, value)) = &guard.header {
        if header(name).as_deref() != Some(value.as_str()) {
            return Some(answer(
                http::StatusCode::BAD_REQUEST,
                format!("missing header {name}"),
            ));
        }
    }
    let (user, password) = guard.token_for.as_ref()?;
    if req.uri().path() == "/token" {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let query = req.uri().query().unwrap_or("");
        if header("authorization") != Some(format!("Basic {basic}"))
            || !query.contains("scope=repository")
        {
            return Some(answer(
                http::StatusCode::UNAUTHORIZED,
                "bad credentials".into(),
            ));
        }
        return Some(answer(
            http::StatusCode::OK,
            serde_json::json!({ "token": TOKEN }).to_string(),
        ));
    }
    if header("authorization") != Some(format!("Bearer {TOKEN}")) {
        let mut r = answer(http::StatusCode::UNAUTHORIZED, "token needed".into());
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_str(&format!(
                "Bearer realm=\"http://{addr}/token\",service=\"test\""
            ))
            .ok()?,
        );
        return Some(r);
    }
    None
}
