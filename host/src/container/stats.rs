//! What a running container uses, sampled from the guest: CPU, memory and
//! its process count.

use super::manager::{agent_err, Containers};
use super::record::ContainerRecord;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::ContainerStatsResponse;

/// A container's CPU and memory usage, as sampled from the guest.
pub struct Usage {
    /// The agent's answer.
    pub stats: ContainerStatsResponse,
    /// CPU use since the previous sample, in nanocores (None on the first).
    pub nano_cores: Option<u64>,
}

impl Containers {
    /// A running container's usage from the guest's cgroup.
    pub async fn usage(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<Usage, ContainerError> {
        let mut agent = self.agent(sb).await?;
        let stats = agent
            .container_stats(moat_proto::agent::ContainerStatsRequest {
                container_id: rec.id.clone(),
            })
            .await
            .map_err(agent_err("agent ContainerStats"))?
            .into_inner();
        let usage = stats.cpu.as_ref().map(|c| c.usage_ns).unwrap_or(0);
        let ts = crate::clock::now_ns();
        let nano_cores = self.inner.cpu_samples.lock().ok().and_then(|mut m| {
            let prev = m.insert(rec.id.clone(), (ts, usage));
            prev.and_then(|(pts, pu)| {
                let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
                let du = u128::from(usage.checked_sub(pu)?);
                u64::try_from(du * 1_000_000_000 / dt).ok()
            })
        });
        Ok(Usage { stats, nano_cores })
    }

    /// How many processes run in a container (from the guest).
    pub async fn process_count(
        &self,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Result<u64, ContainerError> {
        let mut agent = self.agent(sb).await?;
        let list = agent
            .list_processes(moat_proto::agent::ListProcessesRequest {
                container_id: rec.id.clone(),
            })
            .await
            .map_err(agent_err("agent ListProcesses"))?
            .into_inner();
        Ok(list.processes.len() as u64)
    }
}
