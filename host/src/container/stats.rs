//! What a running container uses, sampled from the guest: CPU, memory and
//! its process count.

use super::manager::{agent_err, Containers};
use super::record::ContainerRecord;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::ContainerStatsResponse;
use std::time::Duration;

/// How long a guest may take to answer a stats call: one silent guest must
/// not hold up the node's stats (kubelet asks every 10 s or so).
pub const STATS_DEADLINE: Duration = Duration::from_secs(2);

/// How old a container's last answer may be to stand in for one that did
/// not come in time.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A container's CPU and memory usage, as sampled from the guest.
pub struct Usage {
    /// The agent's answer.
    pub stats: ContainerStatsResponse,
    /// CPU use since the previous sample, in nanocores (None on the first).
    pub nano_cores: Option<u64>,
}

impl Containers {
    /// A running container's usage from the guest's cgroup, within
    /// [`STATS_DEADLINE`]; a guest that does not answer in time gets its
    /// last answer of the past minute reused (without a CPU rate). The
    /// guest's numbers are held to what its VM can have: memory to the
    /// VM's size, CPU to its vCPUs.
    pub async fn usage(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<Usage, ContainerError> {
        let call = async {
            let mut agent = self.agent(sb).await?;
            agent
                .container_stats(moat_proto::agent::ContainerStatsRequest {
                    container_id: rec.id.clone(),
                })
                .await
                .map_err(agent_err("agent ContainerStats"))
        };
        let stats = match within_deadline(rec, "its stats", call).await {
            Ok(r) => bounded(r.into_inner(), sb),
            Err(e) => {
                let last = self.inner.last_stats.lock().ok().and_then(|m| {
                    m.get(&rec.id)
                        .filter(|(at, _)| at.elapsed() < STALE_AFTER)
                        .map(|(_, s)| *s)
                });
                return last
                    .map(|stats| Usage {
                        stats,
                        nano_cores: None,
                    })
                    .ok_or(e);
            }
        };
        if let Ok(mut m) = self.inner.last_stats.lock() {
            m.insert(rec.id.clone(), (std::time::Instant::now(), stats));
        }
        let usage = stats.cpu.as_ref().map(|c| c.usage_ns).unwrap_or(0);
        let ts = crate::clock::now_ns();
        let nano_cores = self.inner.cpu_samples.lock().ok().and_then(|mut m| {
            let prev = m.insert(rec.id.clone(), (ts, usage));
            prev.and_then(|(pts, pu)| {
                let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
                let du = u128::from(usage.checked_sub(pu)?);
                let rate = u64::try_from(du * 1_000_000_000 / dt).ok()?;
                Some(rate.min(u64::from(sb.vcpus) * 1_000_000_000))
            })
        });
        Ok(Usage { stats, nano_cores })
    }

    /// How many processes run in a container (from the guest, within
    /// [`STATS_DEADLINE`]).
    pub async fn process_count(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<u64, ContainerError> {
        let call = async {
            let mut agent = self.agent(sb).await?;
            agent
                .list_processes(moat_proto::agent::ListProcessesRequest {
                    container_id: rec.id.clone(),
                })
                .await
                .map_err(agent_err("agent ListProcesses"))
        };
        let list = within_deadline(rec, "its processes", call)
            .await?
            .into_inner();
        Ok(list.processes.len() as u64)
    }
}

/// `call` (asking the guest for `what` of `rec`), or an error naming it if
/// it takes longer than [`STATS_DEADLINE`].
async fn within_deadline<T>(
    rec: &ContainerRecord,
    what: &str,
    call: impl std::future::Future<Output = Result<T, ContainerError>>,
) -> Result<T, ContainerError> {
    tokio::time::timeout(STATS_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(ContainerError::Precondition(format!(
                "container {}: the guest did not answer for {what} within {STATS_DEADLINE:?}",
                rec.id
            )))
        })
}

/// The guest's answer held to what its VM can have: no memory figure above
/// the VM's memory.
fn bounded(mut s: ContainerStatsResponse, sb: &SandboxRecord) -> ContainerStatsResponse {
    let vm = sb.memory_mib << 20;
    if let Some(m) = s.memory.as_mut() {
        for v in [
            &mut m.usage_bytes,
            &mut m.working_set_bytes,
            &mut m.rss_bytes,
            &mut m.cache_bytes,
            &mut m.swap_bytes,
        ] {
            *v = (*v).min(vm);
        }
    }
    s
}
