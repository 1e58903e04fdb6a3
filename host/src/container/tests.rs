//! The container verbs against an in-process fake agent: what they ask the
//! guest, in which order, and what they record.

use super::*;
use crate::agent::fake::{FakeAgent, FakeDialer, Script};
use crate::agent::AgentPool;
use crate::config::Config;
use crate::cri::events::EventBus;
use crate::pod::{PodLocks, SandboxRecord};
use crate::store::{Store, CONTAINERS};
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    containers: Containers,
    sb: SandboxRecord,
    agent: Arc<FakeAgent>,
}

/// A ready pod whose "VM" is this test process, its agent the fake.
fn fixture(script: Script) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let agent = FakeAgent::new(script);
    let pool = AgentPool::with_dialer(Arc::new(FakeDialer(agent.clone())));
    let containers = Containers::new(
        &Config::default(),
        store,
        EventBus::new(),
        PodLocks::default(),
        pool,
    );
    let sb = crate::agent::fake::ready_pod(dir.path());
    Fixture {
        _dir: dir,
        containers,
        sb,
        agent,
    }
}

/// A container created in the guest and recorded, not yet started.
fn created(f: &Fixture, id: &str) -> ContainerRecord {
    f.agent.has_container(id);
    let rec = crate::agent::fake::created_record(id, &f.sb.id);
    f.containers.put(&rec).unwrap();
    rec
}

async fn running(f: &Fixture, id: &str) {
    created(f, id);
    f.containers.start(id, &f.sb).await.unwrap();
}

fn record(f: &Fixture, id: &str) -> ContainerRecord {
    f.containers
        .inner
        .store
        .get(CONTAINERS, id)
        .unwrap()
        .unwrap()
}

fn signals(f: &Fixture) -> Vec<String> {
    f.agent
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("SignalProcess"))
        .collect()
}

const SIGTERM: u32 = libc::SIGTERM as u32;

#[tokio::test(start_paused = true)]
async fn stop_sends_the_stop_signal_and_records_the_exit() {
    let f = fixture(Script::default());
    running(&f, "c1").await;
    // The longest grace period CRI can send (crictl stop -t MAX) is fine.
    f.containers
        .stop(
            "c1",
            Some(&f.sb),
            Duration::from_secs(i64::MAX as u64),
            SIGTERM,
        )
        .await
        .unwrap();
    let r = record(&f, "c1");
    assert_eq!(r.state, ContainerState::Exited);
    assert_eq!(r.exit_code, 143);
    assert_eq!(r.message, "killed by signal 15");
    assert_eq!(signals(&f), ["SignalProcess c1 15 all=false"]);
    // Stopping again succeeds and asks nothing more.
    f.containers
        .stop("c1", Some(&f.sb), Duration::from_secs(30), SIGTERM)
        .await
        .unwrap();
    assert_eq!(signals(&f).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_kills_every_process_after_the_grace_period() {
    let f = fixture(Script {
        ignores_sigterm: true,
        ..Script::default()
    });
    running(&f, "c1").await;
    let t = tokio::time::Instant::now();
    f.containers
        .stop("c1", Some(&f.sb), Duration::from_secs(7), SIGTERM)
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(7), "{:?}", t.elapsed());
    assert_eq!(
        signals(&f),
        [
            "SignalProcess c1 15 all=false",
            "SignalProcess c1 9 all=true"
        ]
    );
    assert_eq!(record(&f, "c1").exit_code, 137);
}

#[tokio::test(start_paused = true)]
async fn stop_asks_the_agent_when_the_monitor_misses_the_exit() {
    // The monitor's wait never answers (its connection died silently):
    // StopContainer still learns the exit from the agent.
    let f = fixture(Script {
        stuck_waits: 1,
        ..Script::default()
    });
    running(&f, "c1").await;
    f.containers
        .stop("c1", Some(&f.sb), Duration::ZERO, SIGTERM)
        .await
        .unwrap();
    let r = record(&f, "c1");
    assert_eq!((r.state, r.exit_code), (ContainerState::Exited, 137));
    assert_eq!(signals(&f), ["SignalProcess c1 9 all=true"]);
}

#[tokio::test(start_paused = true)]
async fn stopping_a_created_container_removes_it_from_the_guest() {
    let f = fixture(Script::default());
    created(&f, "c1");
    f.containers
        .stop("c1", Some(&f.sb), Duration::from_secs(30), SIGTERM)
        .await
        .unwrap();
    let r = record(&f, "c1");
    assert_eq!((r.state, r.exit_code), (ContainerState::Exited, 137));
    assert_eq!(f.agent.calls(), ["RemoveContainer c1"]);
    // It can no longer be started.
    assert!(matches!(
        f.containers.start("c1", &f.sb).await,
        Err(ContainerError::Precondition(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn exec_sync_returns_output_and_exit_code() {
    let f = fixture(Script::default());
    running(&f, "c1").await;
    let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, out, err) = f
        .containers
        .exec_sync("c1", &f.sb, cmd(&["echo", "hi", "there"]), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (code, out.as_slice(), err.as_slice()),
        (0, &b"hi there\n"[..], &b""[..])
    );
    let (code, ..) = f
        .containers
        .exec_sync("c1", &f.sb, cmd(&["exit", "3"]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, 3);
    // The exec starts from the container's process, with the new args.
    assert!(f
        .agent
        .calls()
        .contains(&"ExecProcess c1 echo hi there".to_string()));
}

#[tokio::test(start_paused = true)]
async fn exec_sync_past_its_timeout_kills_the_command() {
    let f = fixture(Script::default());
    running(&f, "c1").await;
    let err = f
        .containers
        .exec_sync(
            "c1",
            &f.sb,
            vec!["sleep".into(), "100".into()],
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ContainerError::Timeout(_)), "{err:?}");
    assert_eq!(signals(&f), ["SignalProcess c1 9 all=false"]);
    // The container itself still runs.
    assert_eq!(record(&f, "c1").state, ContainerState::Running);
}

#[tokio::test(start_paused = true)]
async fn exec_sync_needs_a_running_container_and_a_command() {
    let f = fixture(Script::default());
    created(&f, "c1");
    let err = f
        .containers
        .exec_sync("c1", &f.sb, vec!["true".into()], Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, ContainerError::Precondition(_)), "{err:?}");
    let err = f
        .containers
        .exec_sync("c1", &f.sb, Vec::new(), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, ContainerError::Invalid(_)), "{err:?}");
    assert!(f.agent.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_container_whose_pod_vm_is_gone_has_exited() {
    let f = fixture(Script::default());
    running(&f, "c1").await;
    let mut gone = f.sb.clone();
    gone.vm = None;
    let r = f.containers.refresh(record(&f, "c1"), Some(&gone)).unwrap();
    assert_eq!((r.state, r.exit_code), (ContainerState::Exited, 255));
    assert_eq!(record(&f, "c1").message, "the pod VM stopped");
}

/// Stats: the guest's numbers held to its VM; a silent guest answered for
/// by its last numbers within the deadline, or an error, never a hang.
#[tokio::test(start_paused = true)]
async fn stats_are_bounded_by_the_vm_and_by_a_deadline() {
    let f = fixture(Script::default());
    let rec = created(&f, "c1");
    let u = f.containers.usage(&rec, &f.sb).await.unwrap();
    let vm = f.sb.memory_mib << 20;
    let mem = u.stats.memory.unwrap();
    assert_eq!((mem.usage_bytes, mem.working_set_bytes), (vm, vm));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let u = f.containers.usage(&rec, &f.sb).await.unwrap();
    assert!(
        u.nano_cores.unwrap() <= u64::from(f.sb.vcpus) * 1_000_000_000,
        "{:?}",
        u.nano_cores
    );

    f.agent.set_silent_stats(true);
    let t = tokio::time::Instant::now();
    let u = f.containers.usage(&rec, &f.sb).await.unwrap();
    assert!(t.elapsed() <= stats::STATS_DEADLINE + Duration::from_millis(100));
    assert_eq!(u.stats.memory.unwrap().usage_bytes, vm, "the last answer");
    assert_eq!(u.nano_cores, None);
    // No earlier answer to stand in: an error, as soon.
    let other = created(&f, "c2");
    let t = tokio::time::Instant::now();
    assert!(f.containers.usage(&other, &f.sb).await.is_err());
    assert!(t.elapsed() <= stats::STATS_DEADLINE + Duration::from_millis(100));
}
