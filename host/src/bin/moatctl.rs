//! moatctl: a small crictl-style CLI over moatd's CRI socket.

use clap::{Parser, Subcommand};
use moat_proto::cri::image_service_client::ImageServiceClient;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Talk CRI to moatd (a crictl-style client)")]
struct Cli {
    /// moatd's CRI socket.
    #[arg(long, env = "MOAT_SOCKET", default_value = "/run/moat/moat.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and versions.
    Version,
    /// Runtime and network conditions.
    Info,
    /// Pull an image.
    Pull {
        /// Image reference.
        image: String,
        /// user:password for the registry.
        #[arg(long)]
        creds: Option<String>,
    },
    /// List images.
    Images,
    /// Remove an image.
    Rmi {
        /// Image reference or id.
        image: String,
    },
    /// Run a pod sandbox (a microVM); prints its id.
    Runp {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Pod namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Pod uid (default: derived from namespace/name).
        #[arg(long)]
        uid: Option<String>,
        /// Runtime handler ("" uses moatd's default).
        #[arg(long, default_value = "")]
        runtime: String,
        /// Label key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List pod sandboxes.
    Pods,
    /// Show a pod sandbox's status.
    Inspectp {
        /// Sandbox id (or unique prefix).
        id: String,
    },
    /// Stop a pod sandbox.
    Stopp {
        /// Sandbox id.
        id: String,
    },
    /// Remove a pod sandbox.
    Rmp {
        /// Sandbox id.
        id: String,
    },
    /// Pod sandbox stats.
    Statsp,
}

fn state_name(state: i32) -> &'static str {
    if state == PodSandboxState::SandboxReady as i32 {
        "Ready"
    } else {
        "NotReady"
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ch = moatd::cri::client::connect(cli.socket.clone())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to moatd at {}: {e:#}", cli.socket.display()))?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);
    match cli.cmd {
        Cmd::Version => {
            let v = rt.version(VersionRequest::default()).await?.into_inner();
            println!(
                "Version: {}\nRuntimeName: {}\nRuntimeVersion: {}\nRuntimeApiVersion: {}",
                v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        }
        Cmd::Info => {
            let s = rt
                .status(StatusRequest { verbose: true })
                .await?
                .into_inner();
            for c in s.status.map(|s| s.conditions).unwrap_or_default() {
                println!("{}: {} {} {}", c.r#type, c.status, c.reason, c.message);
            }
            for (k, v) in s.info {
                println!("{k}: {v}");
            }
        }
        Cmd::Pull { image, creds } => {
            let auth = creds.map(|c| {
                let (u, p) = c.split_once(':').unwrap_or((c.as_str(), ""));
                AuthConfig {
                    username: u.into(),
                    password: p.into(),
                    ..Default::default()
                }
            });
            let r = img
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                })
                .await?
                .into_inner();
            println!("Image is up to date for {}", r.image_ref);
        }
        Cmd::Images => {
            let r = img
                .list_images(ListImagesRequest::default())
                .await?
                .into_inner();
            println!("{:<50} {:<15} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for i in r.images {
                let id: String =
                    i.id.trim_start_matches("sha256:")
                        .chars()
                        .take(13)
                        .collect();
                let name = i
                    .repo_tags
                    .first()
                    .or(i.repo_digests.first())
                    .cloned()
                    .unwrap_or_default();
                println!("{name:<50} {id:<15} {:>9.1}M", i.size as f64 / 1048576.0);
            }
        }
        Cmd::Rmi { image } => {
            img.remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
            })
            .await?;
            println!("Deleted: {image}");
        }
        Cmd::Runp {
            name,
            namespace,
            uid,
            runtime,
            labels,
        } => {
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected key=value"))
                })
                .collect::<anyhow::Result<_>>()?;
            let uid = uid.unwrap_or_else(|| format!("{namespace}-{name}"));
            let config = PodSandboxConfig {
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
        }
        Cmd::Pods => {
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
        }
        Cmd::Inspectp { id } => {
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
        }
        Cmd::Stopp { id } => {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            println!("Stopped sandbox {id}");
        }
        Cmd::Rmp { id } => {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            println!("Removed sandbox {id}");
        }
        Cmd::Statsp => {
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
        }
    }
    Ok(())
}
