//! Exec and attach sessions as crictl runs them: the URL the CRI call
//! answers, opened as a WebSocket with `v5.channel.k8s.io`; this
//! terminal's stdin, raw mode and size passed on with `-i`/`-t`; the
//! command's output printed; its exit code returned.

use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Runs the session at `url`; exits with the command's exit code unless it
/// is 0.
pub async fn run_and_exit(url: &str, stdin: bool, tty: bool) -> anyhow::Result<()> {
    let code = run(url, stdin, tty).await?;
    if code != 0 {
        std::process::exit(code.clamp(1, 255));
    }
    Ok(())
}

/// Runs the session at `url`; answers the command's exit code.
pub async fn run(url: &str, stdin: bool, tty: bool) -> anyhow::Result<i32> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let addr = ws_url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("unexpected streaming URL {url}"))?
        .to_string();
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
    let (mut sink, mut stream) = ws.split();
    let raw = if tty { RawMode::enter() } else { None };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    if tty {
        send_size(&tx).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                send_size(&tx).await;
            }
        });
    }
    if stdin {
        let tx = tx.clone();
        // A thread: reading a terminal or pipe blocks.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut input = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut m = vec![0u8];
                        m.extend_from_slice(&buf[..n]);
                        if tx.blocking_send(m).is_err() {
                            return;
                        }
                    }
                }
            }
            // v5: stdin is done, the output keeps coming.
            let _ = tx.blocking_send(vec![255, 0]);
        });
    }
    drop(tx);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
    });
    let mut status = Vec::new();
    while let Some(Ok(m)) = stream.next().await {
        let data: Vec<u8> = match m {
            Message::Binary(b) => b.into(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, rest)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => {
                let mut o = std::io::stdout();
                o.write_all(rest)?;
                o.flush()?;
            }
            2 => {
                let mut e = std::io::stderr();
                e.write_all(rest)?;
                e.flush()?;
            }
            3 => status.extend_from_slice(rest),
            _ => {}
        }
    }
    drop(raw);
    exit_code(&status)
}

/// The exit code a `metav1.Status` tells (an empty one: the connection
/// ended without a status).
fn exit_code(status: &[u8]) -> anyhow::Result<i32> {
    if status.is_empty() {
        anyhow::bail!("the session ended without telling how the command ended");
    }
    let s: serde_json::Value = serde_json::from_slice(status)?;
    if s["status"] == "Success" {
        return Ok(0);
    }
    if s["reason"] == "NonZeroExitCode" {
        if let Some(code) = s["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
        {
            return Ok(code);
        }
    }
    anyhow::bail!("{}", s["message"].as_str().unwrap_or("the command failed"))
}

/// Sends this terminal's size on the resize channel.
async fn send_size(tx: &tokio::sync::mpsc::Sender<Vec<u8>>) {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we own.
    let rc = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &raw mut ws) };
    if rc != 0 || ws.ws_col == 0 {
        return;
    }
    let mut m = vec![4u8];
    m.extend_from_slice(
        serde_json::json!({"Width": ws.ws_col, "Height": ws.ws_row})
            .to_string()
            .as_bytes(),
    );
    let _ = tx.send(m).await;
}

/// This terminal in raw mode while a TTY session runs; restored on drop.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
            0
        );
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        assert_eq!(exit_code(failed).unwrap(), 7);
        assert!(exit_code(br#"{"status":"Failure","message":"boom"}"#).is_err());
        assert!(exit_code(b"").is_err());
    }
}
