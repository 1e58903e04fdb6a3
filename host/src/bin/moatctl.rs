//! moatctl: a small crictl-style CLI over moatd's CRI socket.

use clap::{Parser, Subcommand};
use moat_proto::cri::image_service_client::ImageServiceClient;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use std::path::PathBuf;
use tonic::transport::Channel;

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
        /// Root of pod log directories; the pod's is <root>/<namespace>_<name>_<uid>.
        #[arg(long, default_value = "/var/log/pods")]
        log_dir: PathBuf,
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
        /// Sandbox id (or unique prefix).
        id: String,
    },
    /// Remove a pod sandbox.
    Rmp {
        /// Sandbox id (or unique prefix).
        id: String,
    },
    /// Pod sandbox stats.
    Statsp,
    /// Create a container in a pod; prints its id.
    Create {
        /// Pod sandbox id (or unique prefix).
        pod: String,
        /// Image reference (pulled already).
        image: String,
        /// Container name (default: the image's last path part).
        #[arg(long)]
        name: Option<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e')]
        envs: Vec<String>,
        /// Label key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Host path mounted as HOST:CONTAINER[:ro] (copied into the VM).
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory_mib: Option<i64>,
        /// Allocate a terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Command and arguments (default: the image's).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Start a created container.
    Start {
        /// Container id (or unique prefix).
        id: String,
    },
    /// Run a command in a running container and print its output; exits
    /// with its exit code.
    Exec {
        /// Container id (or unique prefix).
        id: String,
        /// Seconds before the command is killed (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container's log.
    Logs {
        /// Container id (or unique prefix).
        id: String,
        /// Show the CRI log records as they are (time, stream, tag).
        #[arg(long)]
        raw: bool,
    },
    /// List containers.
    Ps {
        /// Include exited containers.
        #[arg(long, short = 'a')]
        all: bool,
        /// Only containers of this pod.
        #[arg(long)]
        pod: Option<String>,
    },
    /// Show a container's status.
    Inspect {
        /// Container id (or unique prefix).
        id: String,
    },
    /// Stop a container.
    Stop {
        /// Container id (or unique prefix).
        id: String,
        /// Seconds to wait after the stop signal before SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// Remove a container.
    Rm {
        /// Container id (or unique prefix).
        id: String,
    },
    /// Container stats.
    Stats,
}

fn pairs(
    items: &[String],
    flag: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    items
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--{flag} {l:?}: expected key=value"))
        })
        .collect()
}

fn container_state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "Created",
        Ok(ContainerState::ContainerRunning) => "Running",
        Ok(ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

/// The text of CRI log records: partial records join the next one.
fn log_text(content: &str) -> String {
    let mut out = String::new();
    for line in content.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, text) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(text.unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

fn state_name(state: i32) -> &'static str {
    if state == PodSandboxState::SandboxReady as i32 {
        "Ready"
    } else {
        "NotReady"
    }
}

/// The one id in `ids` that is `wanted` or starts with it. moatd takes
/// full ids only, so short ids are resolved here, as crictl does.
fn unique_id(kind: &str, wanted: &str, ids: Vec<String>) -> anyhow::Result<String> {
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
async fn resolve_ids(rt: &mut RuntimeServiceClient<Channel>, mut cmd: Cmd) -> anyhow::Result<Cmd> {
    match &mut cmd {
        Cmd::Inspectp { id }
        | Cmd::Stopp { id }
        | Cmd::Rmp { id }
        | Cmd::Create { pod: id, .. } => {
            *id = pod_id(rt, std::mem::take(id)).await?;
        }
        Cmd::Start { id }
        | Cmd::Exec { id, .. }
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ch = moatd::cri::client::connect(cli.socket.clone())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to moatd at {}: {e:#}", cli.socket.display()))?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);
    match resolve_ids(&mut rt, cli.cmd).await? {
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
            log_dir,
        } => {
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
        Cmd::Create {
            pod,
            image,
            name,
            envs,
            labels,
            mounts,
            memory_mib,
            tty,
            command,
        } => {
            let pod_status = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            let name = name.unwrap_or_else(|| {
                let last = image.rsplit('/').next().unwrap_or(&image);
                last.split([':', '@']).next().unwrap_or(last).to_string()
            });
            let envs = pairs(&envs, "env")?
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect();
            let mounts = mounts
                .iter()
                .map(|m| {
                    let parts: Vec<&str> = m.split(':').collect();
                    match parts.as_slice() {
                        [h, c] => Ok((h, c, false)),
                        [h, c, "ro"] => Ok((h, c, true)),
                        _ => Err(anyhow::anyhow!(
                            "--mount {m:?}: expected HOST:CONTAINER[:ro]"
                        )),
                    }
                    .map(|(h, c, ro)| Mount {
                        host_path: h.to_string(),
                        container_path: c.to_string(),
                        readonly: ro,
                        ..Default::default()
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                envs,
                mounts,
                labels: pairs(&labels, "label")?,
                log_path: format!("{name}/0.log"),
                tty,
                linux: Some(LinuxContainerConfig {
                    resources: memory_mib.map(|m| LinuxContainerResources {
                        memory_limit_in_bytes: m << 20,
                        ..Default::default()
                    }),
                    security_context: None,
                }),
                ..Default::default()
            };
            let r = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_status.id,
                    config: Some(config),
                    sandbox_config: None,
                })
                .await?
                .into_inner();
            println!("{}", r.container_id);
        }
        Cmd::Start { id } => {
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            println!("{id}");
        }
        Cmd::Exec {
            id,
            timeout,
            command,
        } => {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            if r.exit_code != 0 {
                std::process::exit(r.exit_code.clamp(1, 255));
            }
        }
        Cmd::Logs { id, raw } => {
            let s = rt
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            if s.log_path.is_empty() {
                anyhow::bail!("container {id} has no log path");
            }
            let content = std::fs::read_to_string(&s.log_path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", s.log_path))?;
            if raw {
                print!("{content}");
            } else {
                print!("{}", log_text(&content));
            }
        }
        Cmd::Ps { all, pod } => {
            let filter = ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default(),
                state: (!all).then_some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            };
            let r = rt
                .list_containers(ListContainersRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner();
            println!(
                "{:<15} {:<30} {:<10} {:<20} POD ID",
                "CONTAINER", "IMAGE", "STATE", "NAME"
            );
            for c in r.containers {
                println!(
                    "{:<15} {:<30} {:<10} {:<20} {}",
                    short(&c.id),
                    c.image.map(|i| i.image).unwrap_or_default(),
                    container_state_name(c.state),
                    c.metadata.map(|m| m.name).unwrap_or_default(),
                    short(&c.pod_sandbox_id)
                );
            }
        }
        Cmd::Inspect { id } => {
            let r = rt
                .container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await?
                .into_inner();
            let s = r.status.unwrap_or_default();
            println!(
                "id: {}\nname: {}\nstate: {}\nimage: {}\nimage id: {}\nexit code: {}\nreason: {}\nmessage: {}\nlog: {}",
                s.id,
                s.metadata.map(|m| m.name).unwrap_or_default(),
                container_state_name(s.state),
                s.image.map(|i| i.image).unwrap_or_default(),
                s.image_id,
                s.exit_code,
                s.reason,
                s.message,
                s.log_path
            );
        }
        Cmd::Stop { id, timeout } => {
            rt.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout,
            })
            .await?;
            println!("{id}");
        }
        Cmd::Rm { id } => {
            rt.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            println!("{id}");
        }
        Cmd::Stats => {
            let r = rt
                .list_container_stats(ListContainerStatsRequest::default())
                .await?
                .into_inner();
            println!(
                "{:<15} {:<20} {:>12} {:>12}",
                "CONTAINER", "NAME", "CPU (ms)", "MEM (MiB)"
            );
            for s in r.stats {
                let attr = s.attributes.unwrap_or_default();
                let cpu = s
                    .cpu
                    .and_then(|c| c.usage_core_nano_seconds)
                    .map(|v| v.value / 1_000_000)
                    .unwrap_or(0);
                let mem = s
                    .memory
                    .and_then(|m| m.working_set_bytes)
                    .map(|v| v.value as f64 / 1048576.0)
                    .unwrap_or(0.0);
                println!(
                    "{:<15} {:<20} {cpu:>12} {mem:>12.1}",
                    short(&attr.id),
                    attr.metadata.map(|m| m.name).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_join_partials() {
        let c = "2026-01-01T00:00:00.1Z stdout P hel\n2026-01-01T00:00:00.2Z stdout F lo\n2026-01-01T00:00:00.3Z stderr F x y\n";
        assert_eq!(log_text(c), "hello\nx y\n");
    }

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
