//! Exec and attach sessions against an in-process fake agent, through
//! their channels (no carrier): what reaches the client, how the end is
//! told, and what happens to a command whose client left.

use super::channels::{AbortOnDrop, Channels, Incoming, ERROR, STDERR, STDOUT};
use super::*;
use crate::agent::fake::{FakeAgent, FakeDialer, Script};
use crate::agent::AgentPool;
use crate::config::Config;
use crate::container::{ContainerRecord, ContainerState};
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
    let rec = ContainerRecord {
        id: "c1".into(),
        sandbox_id: sb.id.clone(),
        config: Default::default(),
        image_ref: "img".into(),
        image_id: "sha256:0".into(),
        image_digest: String::new(),
        slot: 1,
        spec: Default::default(),
        log_path: None,
        state: ContainerState::Created,
        created_at: 1,
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        pid: 0,
        resources: None,
    };
    store.put(CONTAINERS, "c1", &rec).unwrap();
    containers.start("c1", &sb).await.unwrap();
    let server = Arc::new(StreamingServer {
        base_url: "http://test".into(),
        requests: TokenCache::new(TOKEN_TTL),
        containers,
        pods,
        idle: Duration::from_secs(3600),
    });
    Fixture {
        _dir: dir,
        server,
        agent,
    }
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
