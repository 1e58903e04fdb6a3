//! UpdateContainerResources.

use super::manager::{agent_err, Containers};
use super::record::ContainerState;
use super::spec;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::cri::LinuxContainerResources;

impl Containers {
    /// UpdateContainerResources.
    pub async fn update(
        &self,
        id: &str,
        sb: &SandboxRecord,
        resources: LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let mut rec = self.refresh(self.get(id)?, Some(sb))?;
        if rec.state == ContainerState::Exited {
            return Err(ContainerError::Precondition(format!(
                "container {} has exited",
                rec.id
            )));
        }
        let oci = spec::resources(&resources);
        let json =
            serde_json::to_vec(&oci).map_err(ContainerError::caused("encoding resources"))?;
        let mut agent = self.agent(sb).await?;
        agent
            .update_container(moat_proto::agent::UpdateContainerRequest {
                container_id: rec.id.clone(),
                resources: json,
            })
            .await
            .map_err(agent_err("agent UpdateContainer"))?;
        rec.resources = Some(resources);
        self.put(&rec)
    }
}
