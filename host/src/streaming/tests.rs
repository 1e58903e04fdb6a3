//! Exec and attach sessions against an in-process fake agent, through
//! their channels (no carrier): what reaches the client, how the end is
//! told, and what happens to a command whose client left.

use super::channels::{AbortOnDrop, Channels, Incoming, ERROR, STDERR, STDOUT};
use super::*;
use crate::agent::fake::{FakeAgent, FakeDialer, Script};
use crate::agent::AgentPool;
use crate::config::Config;
use crate::cri::events::EventBus;
use crate::pod::PodLocks;
use crate::store::{Store, CONTAINERS, SANDBOXES};
use tokio::sync::mpsc;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Arc<StreamingServer>,
    agent: Arc<FakeAgent>,
}

/// A ready pod (its "VM" this process, its agent the fake) with a running
/// container "c1".
async fn fixture() -> Fixture {
    let (dir, containers, pods, agent) = parts().await;
    let server = Arc::new(StreamingServer {
        base_url: "http://test".into(),
        requests: TokenCache::new(TOKEN_TTL),
        containers,
        pods,
        idle: Duration::from_secs(3600),
        sessions: Default::default(),
    });
    Fixture {
        _dir: dir,
        server,
        agent,
    }
}

/// What a streaming server serves: the fixture's pod and container.
async fn parts() -> (tempfile::TempDir, Containers, Arc<Pods>, Arc<FakeAgent>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let agent = FakeAgent::new(Script::default());
    let pool = AgentPool::with_dialer(Arc::new(FakeDialer(agent.clone())));
    let locks = PodLocks::default();
    let config = Config::default();
    let containers = Containers::new(
        &config,
        store.clone(),
        EventBus::new(),
        locks.clone(),
        pool.clone(),
    );
    let pods = Arc::new(Pods::new(config, store.clone(), None, locks, pool));
    let sb = crate::agent::fake::ready_pod(dir.path());
    store.put(SANDBOXES, &sb.id, &sb).unwrap();
    agent.has_container("c1");
    let rec = crate::agent::fake::created_record("c1", &sb.id);
    store.put(CONTAINERS, "c1", &rec).unwrap();
    containers.start("c1", &sb).await.unwrap();
    (dir, containers, pods, agent)
}

/// Everything a session sent, once it ended.
type Sent = tokio::task::JoinHandle<Vec<(u8, Vec<u8>)>>;

/// Channels whose client side the test holds: what the session sends is
/// collected once it ends.
fn channels(version: u8) -> (Channels, mpsc::Sender<Incoming>, Sent) {
    let (out, mut out_rx) = mpsc::channel(channels::QUEUE);
    let (in_tx, input) = mpsc::channel(channels::QUEUE);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let done = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(m) = out_rx.recv().await {
            got.push(m);
        }
        let _ = done_tx.send(got);
    });
    let collected = tokio::spawn(async move { done_rx.await.unwrap_or_default() });
    let ch = Channels {
        out,
        input,
        version,
        done,
        reader: AbortOnDrop(tokio::spawn(async {})),
    };
    (ch, in_tx, collected)
}

fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    }
}

fn on(got: &[(u8, Vec<u8>)], channel: u8) -> String {
    got.iter()
        .filter(|(c, _)| *c == channel)
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn output_and_success_reach_the_client() {
    let f = fixture().await;
    let (ch, _client, got) = channels(4);
    exec::session(f.server.clone(), ch, exec_req(&["echo", "hi"])).await;
    let got = got.await.unwrap();
    assert_eq!(on(&got, STDOUT), "hi\n");
    let status: serde_json::Value = serde_json::from_str(&on(&got, ERROR)).unwrap();
    assert_eq!(status["status"], "Success");
}

#[tokio::test(start_paused = true)]
async fn a_non_zero_exit_is_told_with_its_code() {
    let f = fixture().await;
    let (ch, _client, got) = channels(4);
    exec::session(f.server.clone(), ch, exec_req(&["exit", "3"])).await;
    let status: serde_json::Value = serde_json::from_str(&on(&got.await.unwrap(), ERROR)).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    // Before v4 a failure is a plain message.
    let (ch, _client, got) = channels(2);
    exec::session(f.server.clone(), ch, exec_req(&["exit", "3"])).await;
    assert_eq!(
        on(&got.await.unwrap(), ERROR),
        "command terminated with non-zero exit code: exit status 3"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_program_exits_127_with_the_reason_on_stderr() {
    let f = fixture().await;
    let (ch, _client, got) = channels(4);
    exec::session(f.server.clone(), ch, exec_req(&["/nope/prog"])).await;
    let got = got.await.unwrap();
    assert!(on(&got, STDERR).contains("No such file"), "{got:?}");
    let status: serde_json::Value = serde_json::from_str(&on(&got, ERROR)).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "127");
}

#[tokio::test(start_paused = true)]
async fn a_command_whose_client_left_is_killed_after_the_grace_period() {
    let f = fixture().await;
    let (ch, client, got) = channels(5);
    let session = tokio::spawn(exec::session(
        f.server.clone(),
        ch,
        exec_req(&["sleep", "1000"]),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.send(Incoming::End).await.unwrap();
    let t = tokio::time::Instant::now();
    session.await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(10), "{:?}", t.elapsed());
    let calls = f.agent.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("SignalProcess c1 9 all=false")),
        "{calls:?}"
    );
    // Nobody is left to tell.
    assert_eq!(on(&got.await.unwrap(), ERROR), "");
}

#[tokio::test(start_paused = true)]
async fn an_exec_of_an_unknown_container_is_an_error_status() {
    let f = fixture().await;
    let (ch, _client, got) = channels(4);
    let mut req = exec_req(&["true"]);
    req.container_id = "gone".into();
    exec::session(f.server.clone(), ch, req).await;
    let status: serde_json::Value = serde_json::from_str(&on(&got.await.unwrap(), ERROR)).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["code"], 500);
}

/// The fixture's pod.
fn pod(f: &Fixture) -> SandboxRecord {
    f.server.ready_pod(&"p".repeat(64)).unwrap()
}

#[tokio::test]
async fn websocket_port_forward_echoes_and_reports_a_refused_port() {
    use crate::agent::fake::ECHO_PORT;
    let f = fixture().await;
    let (ch, client, got) = channels(4);
    let echo = u16::try_from(ECHO_PORT).unwrap();
    let session = tokio::spawn(port_forward::websocket_session(
        f.server.clone(),
        ch,
        pod(&f),
        vec![echo, 8],
    ));
    client
        .send(Incoming::Data(0, b"hello ".to_vec()))
        .await
        .unwrap();
    client
        .send(Incoming::Data(0, b"pod".to_vec()))
        .await
        .unwrap();
    // Data for port 8's connection, which failed, goes nowhere.
    client
        .send(Incoming::Data(2, b"lost".to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(Incoming::End).await.unwrap();
    session.await.unwrap();
    let got = got.await.unwrap();
    // Each channel starts with its port, little-endian.
    let firsts: Vec<(u8, Vec<u8>)> = (0..4)
        .filter_map(|c| got.iter().find(|(ch, _)| *ch == c).cloned())
        .collect();
    assert_eq!(
        firsts,
        vec![
            (0, vec![7, 0]),
            (1, vec![7, 0]),
            (2, vec![8, 0]),
            (3, vec![8, 0])
        ]
    );
    assert_eq!(on(&got, 0), "\u{7}\0hello pod");
    assert_eq!(on(&got, 1), "\u{7}\0", "no error on the echo port");
    let err = on(&got, 3);
    assert!(
        err.starts_with("\u{8}\0error forwarding port 8 to pod ") && err.contains("refused"),
        "{err:?}"
    );
}

mod spdy_port_forward {
    use super::*;
    use crate::streaming::spdy::frame::{self, Frame, HeaderCodec, FLAG_FIN};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything the server wrote, as frames.
    async fn frames(
        mut rd: impl tokio::io::AsyncRead + Unpin,
        codec: &mut HeaderCodec,
    ) -> Vec<Frame> {
        let mut all = Vec::new();
        rd.read_to_end(&mut all).await.unwrap();
        let mut out = Vec::new();
        let mut rest = all.as_slice();
        while let Some((f, n)) = frame::parse(rest, codec).unwrap() {
            out.push(f);
            rest = &rest[n..];
        }
        out
    }

    fn data_of(frames: &[Frame], id: u32) -> (Vec<u8>, bool) {
        let mut bytes = Vec::new();
        let mut fin = false;
        for f in frames {
            if let Frame::Data {
                stream,
                flags,
                data,
            } = f
            {
                if *stream == id {
                    bytes.extend_from_slice(data);
                    fin |= flags & FLAG_FIN != 0;
                }
            }
        }
        (bytes, fin)
    }

    #[tokio::test]
    async fn connections_by_request_id_each_end_on_their_own() {
        let f = fixture().await;
        let (client, server_io) = tokio::io::duplex(1 << 16);
        let session = tokio::spawn(spdy::port_forward::serve(
            server_io,
            f.server.clone(),
            pod(&f),
        ));
        let (crd, mut cwr) = tokio::io::split(client);
        let mut codec = HeaderCodec::new();
        let mut open = |id: u32, ty: &str, port: &str, request: Option<&str>| {
            let mut h = vec![("streamType", ty), ("port", port)];
            if let Some(r) = request {
                h.push(("requestID", r));
            }
            frame::syn_stream(&mut codec, id, 0, &h)
        };
        // Request 0 to the echo port: error stream 1, data stream 3.
        let mut w = open(1, "error", "7", Some("0"));
        w.extend(open(3, "data", "7", Some("0")));
        // Request 1 to a refused port.
        w.extend(open(5, "error", "8", Some("1")));
        w.extend(open(7, "data", "8", Some("1")));
        // An old client without request ids: error 9, data 11.
        w.extend(open(9, "error", "7", None));
        w.extend(open(11, "data", "7", None));
        // A bad port.
        w.extend(open(13, "error", "0", Some("3")));
        w.extend(open(15, "data", "0", Some("3")));
        cwr.write_all(&w).await.unwrap();
        cwr.write_all(&frame::data(3, 0, b"ping-")).await.unwrap();
        cwr.write_all(&frame::data(3, FLAG_FIN, b"one"))
            .await
            .unwrap();
        cwr.write_all(&frame::data(11, FLAG_FIN, b"two"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cwr.write_all(&frame::go_away(15)).await.unwrap();
        session.await.unwrap();
        let mut codec = HeaderCodec::new();
        let got = frames(crd, &mut codec).await;
        assert_eq!(data_of(&got, 3), (b"ping-one".to_vec(), true));
        assert_eq!(data_of(&got, 1), (Vec::new(), true));
        assert_eq!(data_of(&got, 11), (b"two".to_vec(), true));
        let (err, fin) = data_of(&got, 5);
        let err = String::from_utf8(err).unwrap();
        assert!(
            fin && err.contains("port 8") && err.contains("refused"),
            "{err}"
        );
        let (err, _) = data_of(&got, 13);
        assert!(String::from_utf8(err).unwrap().contains("invalid port"));
        let replies = got
            .iter()
            .filter(|f| matches!(f, Frame::SynReply { .. }))
            .count();
        assert_eq!(replies, 8);
        assert!(matches!(got.last(), Some(Frame::GoAway { .. })));
        let forwards = f
            .agent
            .calls()
            .iter()
            .filter(|c| c.starts_with("PortForward"))
            .count();
        assert_eq!(forwards, 3, "no agent call for a bad port");
    }
}

/// Over TLS, with clients moatd did not write: curl gets 404 for a forged
/// URL, and Debian's python3-websocket runs an exec session (`wss://`),
/// both trusting only the test's own certificate.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_over_tls_with_clients_moat_did_not_write() {
    let (dir, containers, pods, _agent) = parts().await;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/install-deps.sh)");
    assert!(made.status.success(), "{made:?}");
    let cfg = crate::config::StreamingConfig {
        tls_cert_file: Some(cert.clone()),
        tls_key_file: Some(key),
        ..Default::default()
    };
    let server = StreamingServer::start(&cfg, containers, pods)
        .await
        .unwrap();
    assert!(server.base_url().starts_with("https://127.0.0.1:"));

    let forged = format!("{}/exec/{}", server.base_url(), "0".repeat(64));
    let cert_arg = cert.clone();
    let code = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert_arg)
            .arg(&forged)
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "404", "{code:?}");

    let url = server
        .url(Pending::Exec(exec_req(&["echo", "over tls"])))
        .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ws_channels.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args([&url, "v4.channel.k8s.io", "[[\"close\", 0]]"])
            .env("MOAT_CA_FILE", &cert)
            .output()
            .expect("python3 (scripts/install-deps.sh)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["channels"]["1"], "over tls\n", "{r}");
    let status: serde_json::Value =
        serde_json::from_str(r["channels"]["3"].as_str().unwrap()).unwrap();
    assert_eq!(status["status"], "Success");
}
