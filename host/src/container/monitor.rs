//! The task that watches a running container: copies its output to the
//! CRI log and records how it ended.

use super::manager::{mark_exited, set_log, Inner, SharedLog};
use super::record::{ContainerRecord, ContainerState};
use crate::pod::SandboxRecord;
use crate::store::CONTAINERS;
use moat_proto::agent::{OutputStream, WaitProcessRequest};
use moat_proto::cri::ContainerEventType;
use std::sync::Arc;
use std::time::Duration;

/// Watches a running container: copies its output to the log and records
/// how it ended. Survives agent reconnects while the VM lives.
pub(super) async fn monitor(
    inner: Arc<Inner>,
    rec: ContainerRecord,
    sb: SandboxRecord,
    log: Option<SharedLog>,
) {
    let id = rec.id.clone();
    let tty = rec.config.tty;
    let mut pumps = Vec::new();
    let (feed, _) = tokio::sync::broadcast::channel(super::manager::ATTACH_BACKLOG);
    if let Ok(mut a) = inner.attached.lock() {
        a.insert(id.clone(), feed.clone());
    }
    let streams: &[OutputStream] = if tty {
        &[OutputStream::Stdout]
    } else {
        &[OutputStream::Stdout, OutputStream::Stderr]
    };
    for &s in streams {
        pumps.push(tokio::spawn(super::io::pump_output(
            agent_source(inner.clone(), sb.clone()),
            id.clone(),
            s,
            log.clone(),
            feed.clone(),
        )));
    }
    drop(feed);
    let mut failures = 0u32;
    let outcome = loop {
        let mut agent = match inner.agents.waits(&sb).await {
            Ok(a) => a,
            Err(e) => {
                if !sb.vm.is_some_and(|v| v.is_alive()) {
                    break Err("the pod VM stopped".to_string());
                }
                failures += 1;
                if failures > 30 {
                    break Err(format!("lost the agent: {e}"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match agent
            .wait_process(WaitProcessRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(w) => break Ok(w.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                break Err(format!("the guest no longer has it: {}", s.message()))
            }
            Err(s) => {
                inner.agents.forget(&sb.id);
                if !sb.vm.is_some_and(|v| v.is_alive()) {
                    break Err("the pod VM stopped".to_string());
                }
                failures += 1;
                if failures > 30 {
                    break Err(format!("waiting for it failed: {}", s.message()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Let the pumps drain what the process wrote last (together, within
    // one budget).
    let _ = tokio::time::timeout(DRAIN, futures_util::future::join_all(pumps)).await;
    if let Some(log) = &log {
        if let Ok(mut w) = log.lock() {
            let _ = w.flush_partial();
        }
    }
    record_exit(&inner, &id, outcome);
    set_log(&inner, &id, None);
    if let Ok(mut a) = inner.attached.lock() {
        a.remove(&id);
    }
}

/// How long a finished container's output may take to reach its log.
const DRAIN: Duration = Duration::from_secs(5);

/// Records how a container ended (from the agent's answer, or why it
/// could not be had) unless it is already recorded or removed, and
/// publishes the stop event.
pub(super) fn record_exit(
    inner: &Inner,
    id: &str,
    outcome: Result<moat_proto::agent::WaitProcessResponse, String>,
) {
    let Ok(Some(mut cur)) = inner.store.get::<ContainerRecord>(CONTAINERS, id) else {
        return; // removed meanwhile
    };
    if cur.state == ContainerState::Exited {
        return;
    }
    match outcome {
        Ok(w) => {
            let reason = if w.oom_killed {
                "OOMKilled"
            } else if w.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let message = if w.signal != 0 {
                format!("killed by signal {}", w.signal)
            } else {
                String::new()
            };
            mark_exited(&mut cur, w.exit_code, reason, &message);
        }
        Err(why) => mark_exited(&mut cur, 255, "Error", &why),
    }
    tracing::info!(%id, exit_code = cur.exit_code, reason = %cur.reason, "container exited");
    if inner.store.put(CONTAINERS, id, &cur).is_ok() {
        inner
            .events
            .publish(id, ContainerEventType::ContainerStoppedEvent, None);
    }
}

/// Where output pumps get (and re-get) their agent channel.
fn agent_source(inner: Arc<Inner>, sb: SandboxRecord) -> super::io::AgentSource {
    Arc::new(move || {
        let inner = inner.clone();
        let sb = sb.clone();
        Box::pin(async move {
            if !sb.vm.is_some_and(|v| v.is_alive()) {
                return None;
            }
            inner.agents.waits(&sb).await.ok()
        })
    })
}
