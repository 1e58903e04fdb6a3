//! The client side of a SPDY/3.1 upgrade, for moatctl (and tests): what
//! kubectl's `spdy.RoundTripper` does before the session's streams open.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 << 10;

/// Upgrades `url` (`http://HOST:PORT/PATH`) to SPDY/3.1 offering
/// `protocol`; answers the connection, ready for frames.
pub async fn upgrade(url: &str, protocol: &str) -> anyhow::Result<TcpStream> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: not an http:// URL"))?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 || head.len() > MAX_HEAD {
            anyhow::bail!("{url}: the server ended the connection before upgrading");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        let body = {
            let mut b = vec![0u8; 1024];
            let n = s.read(&mut b).await.unwrap_or(0);
            String::from_utf8_lossy(&b[..n]).trim().to_string()
        };
        anyhow::bail!("{url}: upgrade refused: {status}: {body}");
    }
    Ok(s)
}
