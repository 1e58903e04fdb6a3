//! CRI streaming end to end: Exec answers a single-use URL on moatd's
//! streaming server, and a WebSocket client moat did not write (Debian's
//! python3-websocket, `tests/python/ws_channels.py`) runs the session
//! against a container in a real pod VM: output and exit codes over
//! `v4.channel.k8s.io`, `v4.base64.channel.k8s.io` and `v5.channel.k8s.io`,
//! stdin with v5's close signal, a terminal and its resize, a missing
//! program, a reused or forged URL, and a client that disconnects (its
//! command is killed); Attach to a shell reading its stdin. The same exec
//! over SPDY/3.1 (what kubelet and
//! crictl speak) is driven by a small client here, playing spdystream's
//! part with moatd's frame module.
//!
//! PortForward: kubelet's WebSocket form through Debian's python3-websocket
//! (`tests/python/ws_portforward.py`), and SPDY through `moatctl
//! port-forward` with curl as the local client: a server bound only to the
//! pod's 127.0.0.1, a refused port, several connections, 64 MiB intact, and
//! nothing left open afterwards.
//!
//! Needs `make artifacts`, release builds, python3-websocket and curl
//! (scripts/install-deps.sh).

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, Moatd};
use moat_tests::websocket::{channel, status, try_ws, ws, ws_forward};
use moatd::streaming::spdy::frame::{self, Frame, HeaderCodec, FLAG_FIN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(900);

/// An exec over SPDY/3.1 as kubectl's executor does it: upgrade, open
/// the error, stdin, stdout and stderr streams, send `stdin` and close it,
/// read until the error stream ends. Answers (stdout, stderr, status).
fn spdy_exec(url: &str, stdin: &[u8]) -> (String, String, Value) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    let mut codec = HeaderCodec::new();
    for (id, ty) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        s.write_all(&frame::syn_stream(&mut codec, id, 0, &[("streamtype", ty)]))
            .unwrap();
    }
    s.write_all(&frame::data(3, 0, stdin)).unwrap();
    s.write_all(&frame::data(3, FLAG_FIN, b"")).unwrap();
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    'read: loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection ended before the error stream did");
        buf.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = frame::parse(&buf, &mut codec).unwrap() {
            buf.drain(..used);
            if let Frame::Data {
                stream,
                flags,
                data,
            } = f
            {
                match stream {
                    5 => out.extend(data),
                    7 => err.extend(data),
                    1 => status.extend(data),
                    _ => {}
                }
                if stream == 1 && flags & FLAG_FIN != 0 {
                    break 'read;
                }
            }
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        serde_json::from_slice(&status).unwrap_or_else(|e| panic!("status: {e}")),
    )
}

async fn exec_url(rt: &mut Rt, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

fn streaming_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("streams", &logs)).await;
        let c = create(&mut rt, &pod, container_config(&m, "app", "sleep 1000"))
            .await
            .unwrap();
        start(&mut rt, &c).await;
        let moatd_pid = m.pid().unwrap();

        // Bad requests are refused before any URL exists.
        let bad = |cmd: &[&str], tty: bool, stderr: bool| ExecRequest {
            container_id: c.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin: false,
            stdout: true,
            stderr,
        };
        for (req, what) in [
            (bad(&[], false, true), "no command"),
            (bad(&["true"], true, true), "tty with stderr"),
        ] {
            assert_code(rt.exec(req).await, tonic::Code::InvalidArgument, what);
        }
        assert_code(
            rt.exec(ExecRequest {
                container_id: "nope".into(),
                ..bad(&["true"], false, true)
            })
            .await,
            tonic::Code::NotFound,
            "unknown container",
        );

        // Output on both streams and a non-zero exit, v4.
        let cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"];
        let url = exec_url(&mut rt, &c, &cmd, false, false).await;
        let (base, token) = url.rsplit_once("/exec/").expect("an exec URL");
        assert!(base.starts_with("http://127.0.0.1:"), "{url}");
        assert_eq!(token.len(), 64, "{url}");
        let r = ws(&url, "v4.channel.k8s.io", json!([]));
        assert_eq!(r["protocol"], "v4.channel.k8s.io");
        assert_eq!(r["first"], json!([1, 0]), "the empty hello on stdout");
        assert_eq!((channel(&r, 1), channel(&r, 2)), ("out\n", "err\n"));
        let s = status(&r);
        assert_eq!(s["status"], "Failure", "{s}");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );

        // The URL works once; a forged one never.
        assert_eq!(ws(&url, "v4.channel.k8s.io", json!([]))["http_status"], 404);
        let forged = format!("{base}/exec/{}", "0".repeat(64));
        assert_eq!(
            ws(&forged, "v4.channel.k8s.io", json!([]))["http_status"],
            404
        );

        // Success, base64 framing.
        let url = exec_url(&mut rt, &c, &["echo", "fine"], false, false).await;
        let r = ws(&url, "v4.base64.channel.k8s.io", json!([]));
        assert_eq!(channel(&r, 1), "fine\n");
        assert_eq!(status(&r)["status"], "Success");
        // What moatd holds once its agent channels are up and no session
        // is open: every later session must leave it as it was.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = (fds(moatd_pid), sessions_and_tasks(&mut rt).await.1);

        // stdin round trip, ended by v5's close signal.
        let url = exec_url(&mut rt, &c, &["cat"], true, false).await;
        let r = ws(
            &url,
            "v5.channel.k8s.io",
            json!([["send", 0, "hello\n"], ["send", 0, "world\n"], ["close", 0]]),
        );
        assert_eq!(r["protocol"], "v5.channel.k8s.io");
        assert_eq!(channel(&r, 1), "hello\nworld\n", "{r}");
        assert_eq!(status(&r)["status"], "Success");

        // A terminal: its size follows the client's resize.
        let url = exec_url(&mut rt, &c, &["sh", "-c", "read x; stty size"], true, true).await;
        let r = ws(
            &url,
            "v5.channel.k8s.io",
            json!([
                ["send", 4, "{\"Width\":100,\"Height\":30}"],
                ["sleep", 0.5],
                ["send", 0, "go\r"]
            ]),
        );
        assert!(channel(&r, 1).contains("30 100"), "{r}");
        assert_eq!(status(&r)["status"], "Success");

        // A program that does not exist: exit 127 and why, on stderr.
        let url = exec_url(&mut rt, &c, &["/no/such/program"], false, false).await;
        let r = ws(&url, "v4.channel.k8s.io", json!([]));
        let s = status(&r);
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "127"}]),
            "{r}"
        );
        assert!(!channel(&r, 2).is_empty(), "the reason on stderr: {r}");

        // SPDY/3.1: stdin in, both streams out, the exit code in the status.
        let url = exec_url(
            &mut rt,
            &c,
            &["sh", "-c", "cat; echo oops >&2; exit 4"],
            true,
            false,
        )
        .await;
        let (out, err, s) = tokio::task::spawn_blocking(move || spdy_exec(&url, b"over spdy\n"))
            .await
            .unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("over spdy\n", "oops\n"));
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "4"}]),
            "{s}"
        );

        // Attach to a shell reading its stdin: what it prints reaches the
        // client on both streams and the CRI log too; it exits, the
        // session ends with Success.
        let mut cfg = container_config(&m, "shell", "exec sh");
        cfg.stdin = true;
        let shell = create(&mut rt, &pod, cfg).await.unwrap();
        start(&mut rt, &shell).await;
        let attach = |stdin: bool, id: &str| AttachRequest {
            container_id: id.to_string(),
            stdin,
            tty: false,
            stdout: true,
            stderr: true,
        };
        assert_code(
            rt.attach(attach(true, &c)).await,
            tonic::Code::FailedPrecondition,
            "stdin of a container created without it",
        );
        let url = rt
            .attach(attach(true, &shell))
            .await
            .unwrap()
            .into_inner()
            .url;
        assert!(url.contains("/attach/"), "{url}");
        let r = ws(
            &url,
            "v5.channel.k8s.io",
            json!([
                ["send", 0, "echo hi-from-attach\n"],
                ["sleep", 1],
                ["send", 0, "echo to-err >&2; exit 0\n"]
            ]),
        );
        assert!(channel(&r, 1).contains("hi-from-attach"), "{r}");
        assert!(channel(&r, 2).contains("to-err"), "{r}");
        assert_eq!(status(&r)["status"], "Success", "{r}");
        let log = logs.join("streams/shell/0.log");
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(logged.contains(" stdout F hi-from-attach"), "{logged}");

        // A client that goes away: its command gets EOF, then SIGKILL.
        let url = exec_url(&mut rt, &c, &["sleep", "777"], true, false).await;
        assert_eq!(
            ws(&url, "v5.channel.k8s.io", json!([["disconnect"]]))["disconnected"],
            true
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ps = exec_ok(&mut rt, &c, "ps -o args").await;
            if !ps.contains("sleep 777") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the command outlived its client: {ps}\n{}",
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // 16 sessions at once, each its own output and status.
        let mut urls = Vec::new();
        for i in 0..16 {
            let cmd = format!("echo session-{i}; sleep 2; echo done-{i} >&2");
            urls.push(exec_url(&mut rt, &c, &["sh", "-c", &cmd], false, false).await);
        }
        let runs: Vec<_> = urls
            .into_iter()
            .map(|u| tokio::task::spawn_blocking(move || ws(&u, "v4.channel.k8s.io", json!([]))))
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            let r = r.await.unwrap();
            assert_eq!(channel(&r, 1), format!("session-{i}\n"), "{r}");
            assert_eq!(channel(&r, 2), format!("done-{i}\n"), "{r}");
            assert_eq!(status(&r)["status"], "Success", "{r}");
        }

        // 64 MiB of output to a client that reads nothing for 30 s: neither
        // moatd nor the VM (its agent) holds it; then all of it arrives,
        // byte-identical.
        let sum = exec_ok(
            &mut rt,
            &c,
            "head -c 67108864 /dev/urandom > /tmp/big && sha256sum /tmp/big",
        )
        .await;
        let digest = sum.split_whitespace().next().unwrap().to_string();
        let vmm = vmm_pid(&mut rt, &pod).await;
        let rss_before = (rss_mib(moatd_pid), rss_mib(vmm));
        let url = exec_url(&mut rt, &c, &["cat", "/tmp/big"], false, false).await;
        let t = Instant::now();
        let slow = tokio::task::spawn_blocking(move || {
            try_ws(&url, "v5.channel.k8s.io", json!([["sleep", 30], ["digest"]]))
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        let idle = (rss_mib(moatd_pid), rss_mib(vmm));
        println!(
            "RSS (MiB) before / with a 64 MiB exec output unread for 25 s: moatd {} / {}, VMM {} / {}",
            rss_before.0, idle.0, rss_before.1, idle.1
        );
        assert!(
            idle.0 < rss_before.0 + 24,
            "moatd grew: {rss_before:?} -> {idle:?}"
        );
        assert!(
            idle.1 < rss_before.1 + 24,
            "the VM grew: {rss_before:?} -> {idle:?}"
        );
        let r = slow.await.unwrap().unwrap_or_else(|e| {
            // Where the bytes stopped: the VMM's vsock counters, moatd's
            // and the VM's own logs.
            panic!(
                "{e}\nvsock: {}\nmoatd:\n{}\n{}",
                m.vmm_control(&pod, r#"{"op":"counters"}"#),
                tail(&m.log(), 60),
                m.vm_logs()
            )
        });
        println!(
            "64 MiB exec stdout (WebSocket) after the idle 30 s: {:.1} s",
            t.elapsed().as_secs_f64() - 30.0
        );
        assert_eq!(
            r["channels"]["1"],
            json!({"len": 64 << 20, "sha256": digest}),
            "{r}"
        );
        exec_ok(&mut rt, &c, "rm /tmp/big").await;

        // Nothing left behind in moatd.
        nothing_left(&mut rt, moatd_pid, before).await;
        remove_pod(&mut rt, &pod).await;
    });
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// moatd's open streaming sessions and live tasks (Status, verbose).
async fn sessions_and_tasks(rt: &mut Rt) -> (u64, u64) {
    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let v: Value = serde_json::from_str(&s.info["streaming"]).unwrap();
    (
        v["openSessions"].as_u64().unwrap(),
        v["tasks"].as_u64().unwrap(),
    )
}

/// Waits until moatd has no session open and no more descriptors and tasks
/// than at `before` (a little slack for its agent connections).
async fn nothing_left(rt: &mut Rt, pid: u32, before: (usize, u64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sessions, tasks) = sessions_and_tasks(rt).await;
        let now = fds(pid);
        if sessions == 0 && now <= before.0 + 2 && tasks <= before.1 + 4 {
            println!(
                "moatd after the sessions: fds {} -> {now}, tasks {} -> {tasks}",
                before.0, before.1
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind in moatd: {sessions} sessions, fds {} -> {now}, tasks {} -> {tasks}",
            before.0,
            before.1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The pid of pod `pod`'s VMM (PodSandboxStatus, verbose).
async fn vmm_pid(rt: &mut Rt, pod: &str) -> u32 {
    let info = pod_info(rt, pod).await;
    u32::try_from(info["vmmPid"].as_u64().unwrap()).unwrap()
}

moat_tests::vm_test!(exec_over_websocket, TIMEOUT, streaming_body);

/// curl (Debian's) through a forwarded local port: (exit status, body).
fn curl(port: u16, path: &str) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "300"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl (scripts/install-deps.sh)");
    (out.status.success(), out.stdout)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connections to port 8080 in the pod that are still established.
async fn established_8080(rt: &mut Rt, c: &str) -> usize {
    let tcp = exec_ok(rt, c, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").await;
    tcp.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(":1F90") && f[3] == "01"
        })
        .count()
}

/// moatd's open file descriptors.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn port_forward_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("forwards", &logs)).await;
        // A web server bound only to the pod's localhost, with a 64 MiB
        // file of random bytes and its digest.
        let web = create(
            &mut rt,
            &pod,
            container_config(
                &m,
                "web",
                "mkdir -p /www && echo hello-from-localhost > /www/index.html && \
                 head -c 67108864 /dev/urandom > /www/big && sha256sum /www/big > /www/big.sha && \
                 exec httpd -f -p 127.0.0.1:8080 -h /www",
            ),
        )
        .await
        .unwrap();
        start(&mut rt, &web).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        let digest = loop {
            let out = exec_ok(&mut rt, &web, "cat /www/big.sha 2>/dev/null; true").await;
            if let Some(d) = out.split_whitespace().next() {
                break d.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the web container never got ready"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let moatd_pid = m.pid().unwrap();
        let before = (fds(moatd_pid), sessions_and_tasks(&mut rt).await.1);

        // Bad requests are refused before any URL exists.
        for (req, code) in [
            (
                PortForwardRequest {
                    pod_sandbox_id: "nope".into(),
                    port: vec![80],
                },
                tonic::Code::NotFound,
            ),
            (
                PortForwardRequest {
                    pod_sandbox_id: pod.clone(),
                    port: vec![70000],
                },
                tonic::Code::InvalidArgument,
            ),
        ] {
            assert_code(rt.port_forward(req).await, code, "bad PortForward");
        }

        // WebSocket (kubelet's form), ports from the request: an HTTP
        // request through the data channel of port 8080.
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        assert!(url.contains("/portforward/"), "{url}");
        let r = ws_forward(
            &url,
            "v4.channel.k8s.io",
            "GET /index.html HTTP/1.0\r\n\r\n",
        );
        assert_eq!(r["ports"], json!({"0": 8080, "1": 8080}), "{r}");
        assert!(channel(&r, 0).contains("hello-from-localhost"), "{r}");
        assert_eq!(channel(&r, 1), "", "{r}");
        // A port nobody listens on, named in the URL, base64 framing.
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let r = ws_forward(&format!("{url}?port=9999"), "v4.base64.channel.k8s.io", "x");
        assert!(
            channel(&r, 1).contains("port 9999") && channel(&r, 1).contains("refused"),
            "{r}"
        );

        // SPDY (kubectl's and crictl's form) through moatctl port-forward,
        // curl as the local client.
        let mut pf = Command::new(moat_tests::artifacts::binary("moatctl").unwrap())
            .arg("--socket")
            .arg(&m.socket)
            .args(["port-forward", &pod, ":8080", ":9999"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(pf.stdout.take().unwrap());
        let mut local = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
            // "Forwarding from 127.0.0.1:PORT -> REMOTE"
            let port: u16 = line
                .split(':')
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("moatctl said {line:?}"));
            local.push(port);
        }
        let (web_port, closed_port) = (local[0], local[1]);
        let (ok, body) = tokio::task::spawn_blocking(move || curl(web_port, "/index.html"))
            .await
            .unwrap();
        assert!(ok && body == b"hello-from-localhost\n", "{body:?}");
        // Several connections at once.
        let many: Vec<_> = (0..4)
            .map(|_| tokio::task::spawn_blocking(move || curl(web_port, "/index.html")))
            .collect();
        for c in many {
            let (ok, body) = c.await.unwrap();
            assert!(ok && body == b"hello-from-localhost\n", "{body:?}");
        }
        // A refused port fails that connection only.
        let (ok, _) = tokio::task::spawn_blocking(move || curl(closed_port, "/"))
            .await
            .unwrap();
        assert!(!ok, "a connection to a closed port succeeded");
        // 64 MiB, byte-identical.
        let t = Instant::now();
        let (ok, big) = tokio::task::spawn_blocking(move || curl(web_port, "/big"))
            .await
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(ok && big.len() == 64 << 20, "got {} bytes", big.len());
        assert_eq!(sha256_hex(&big), digest);
        println!(
            "64 MiB through port-forward (SPDY) in {secs:.1} s: {:.1} MiB/s",
            64.0 / secs
        );
        drop(big);
        // A local client that leaves mid-transfer: the session carries on.
        let cut = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "1"])
                .arg(format!("http://127.0.0.1:{web_port}/big"))
                .status()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!cut.success(), "64 MiB in under a second?");
        let (ok, body) = tokio::task::spawn_blocking(move || curl(web_port, "/index.html"))
            .await
            .unwrap();
        assert!(
            ok && body == b"hello-from-localhost\n",
            "the session ended: {body:?}"
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pf.id() as i32, libc::SIGINT) };
        let out = pf.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error forwarding port 9999") && stderr.contains("refused"),
            "moatctl's stderr: {stderr}"
        );

        // Nothing left behind: no connection in the pod, nothing in moatd.
        let deadline = Instant::now() + Duration::from_secs(30);
        while established_8080(&mut rt, &web).await > 0 {
            assert!(
                Instant::now() < deadline,
                "connections left open in the pod"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        nothing_left(&mut rt, moatd_pid, before).await;
        remove_pod(&mut rt, &pod).await;
    });
}

moat_tests::vm_test!(
    port_forward_to_the_pods_localhost,
    TIMEOUT,
    port_forward_body
);
