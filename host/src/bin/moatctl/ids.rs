//! Short ids made whole: moatd takes full ids only, so a unique prefix
//! given on the command line is resolved here, as crictl does.

use crate::cli::{Cmd, CreateArgs};
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use tonic::transport::Channel;

/// The one id in `ids` that is `wanted` or starts with it. moatd takes
/// full ids only, so short ids are resolved here, as crictl does.
pub fn unique_id(kind: &str, wanted: &str, ids: Vec<String>) -> anyhow::Result<String> {
    if wanted.is_empty() {
        anyhow::bail!("{kind} id: required");
    }
    if ids.iter().any(|i| i == wanted) {
        return Ok(wanted.to_string());
    }
    let mut matches = ids.into_iter().filter(|i| i.starts_with(wanted));
    match (matches.next(), matches.next()) {
        (Some(id), None) => Ok(id),
        (Some(_), Some(_)) => anyhow::bail!("{kind} id {wanted:?} is ambiguous"),
        _ => anyhow::bail!("no {kind} with id {wanted:?}"),
    }
}

/// The pod sandbox id `wanted` stands for.
async fn pod_id(rt: &mut RuntimeServiceClient<Channel>, wanted: String) -> anyhow::Result<String> {
    let ids = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    unique_id("pod sandbox", &wanted, ids)
}

/// The container id `wanted` stands for.
async fn container_id(
    rt: &mut RuntimeServiceClient<Channel>,
    wanted: String,
) -> anyhow::Result<String> {
    let ids = rt
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    unique_id("container", &wanted, ids)
}

/// `cmd` with its short pod and container ids made whole.
pub async fn resolve_ids(
    rt: &mut RuntimeServiceClient<Channel>,
    mut cmd: Cmd,
) -> anyhow::Result<Cmd> {
    match &mut cmd {
        Cmd::Inspectp { id }
        | Cmd::Stopp { id }
        | Cmd::Rmp { id }
        | Cmd::PortForward { id, .. }
        | Cmd::Create(CreateArgs { pod: id, .. }) => {
            *id = pod_id(rt, std::mem::take(id)).await?;
        }
        Cmd::Start { id }
        | Cmd::Exec { id, .. }
        | Cmd::Attach { id, .. }
        | Cmd::Logs { id, .. }
        | Cmd::Inspect { id }
        | Cmd::Stop { id, .. }
        | Cmd::Rm { id } => {
            *id = container_id(rt, std::mem::take(id)).await?;
        }
        _ => {}
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_resolve_to_one_whole_id() {
        let ids = || vec!["abc1".to_string(), "abc2".to_string(), "def".to_string()];
        assert_eq!(unique_id("pod", "d", ids()).unwrap(), "def");
        assert_eq!(unique_id("pod", "abc2", ids()).unwrap(), "abc2");
        assert!(unique_id("pod", "abc", ids())
            .unwrap_err()
            .to_string()
            .contains("ambiguous"));
        assert!(unique_id("pod", "x", ids()).is_err());
        assert!(unique_id("pod", "", ids()).is_err());
    }
}
