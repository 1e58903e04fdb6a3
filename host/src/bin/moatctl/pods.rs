//! Pod sandbox commands: `runp`, `pods`, `inspectp`, `stopp`, `rmp`,
//! `statsp`.

use crate::cli::pairs;
use crate::output::state_name;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use std::path::PathBuf;
use tonic::transport::Channel;

/// Runs a pod sandbox and prints its id.
pub async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    name: String,
    namespace: String,
    uid: Option<String>,
    runtime: String,
    labels: Vec<String>,
    log_dir: PathBuf,
) -> anyhow::Result<()> {
    let labels = pairs(&labels, "label")?;
    let uid = uid.unwrap_or_else(|| format!("{namespace}-{name}"));
    let log_directory = log_dir
        .join(format!("{namespace}_{name}_{uid}"))
        .display()
        .to_string();
    let config = PodSandboxConfig {
        log_directory,
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid,
            namespace,
            attempt: 0,
        }),
        hostname: name,
        labels,
        ..Default::default()
    };
    let r = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime,
        })
        .await?
        .into_inner();
    println!("{}", r.pod_sandbox_id);
    Ok(())
}

/// Lists the pod sandboxes.
pub async fn list(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
    let r = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner();
    println!(
        "{:<15} {:<10} {:<25} {:<15} RUNTIME",
        "POD ID", "STATE", "NAME", "NAMESPACE"
    );
    for p in r.items {
        let md = p.metadata.unwrap_or_default();
        println!(
            "{:<15} {:<10} {:<25} {:<15} {}",
            &p.id[..p.id.len().min(13)],
            state_name(p.state),
            md.name,
            md.namespace,
            p.runtime_handler
        );
    }
    Ok(())
}

/// Prints a pod sandbox's status and info.
pub async fn inspect(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    let r = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id,
            verbose: true,
        })
        .await?
        .into_inner();
    let s = r.status.unwrap_or_default();
    println!(
        "id: {}\nstate: {}\nip: {}",
        s.id,
        state_name(s.state),
        s.network.map(|n| n.ip).unwrap_or_default()
    );
    for (k, v) in r.info {
        println!("{k}: {v}");
    }
    Ok(())
}

/// Stops a pod sandbox.
pub async fn stop(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    println!("Stopped sandbox {id}");
    Ok(())
}

/// Removes a pod sandbox.
pub async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    println!("Removed sandbox {id}");
    Ok(())
}

/// Prints every pod sandbox's CPU and memory use.
pub async fn stats(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
    let r = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
        .await?
        .into_inner();
    println!("{:<15} {:>12} {:>12}", "POD ID", "CPU (ms)", "MEM (MiB)");
    for s in r.stats {
        let id = s.attributes.map(|a| a.id).unwrap_or_default();
        let linux = s.linux.unwrap_or_default();
        let cpu = linux
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value / 1_000_000)
            .unwrap_or(0);
        let mem = linux
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value >> 20)
            .unwrap_or(0);
        println!("{:<15} {cpu:>12} {mem:>12}", &id[..id.len().min(13)]);
    }
    Ok(())
}
