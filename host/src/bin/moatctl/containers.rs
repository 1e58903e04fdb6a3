//! Container commands: `create`, `start`, `exec`, `logs`, `ps`, `inspect`,
//! `stop`, `rm`, `stats`.

use crate::cli::{pairs, CreateArgs};
use crate::output::{container_state_name, log_text, short};
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use tonic::transport::Channel;

/// Creates a container in a pod and prints its id.
pub async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    args: CreateArgs,
) -> anyhow::Result<()> {
    let CreateArgs {
        pod,
        image,
        name,
        envs,
        labels,
        mounts,
        devices,
        privileged,
        memory_mib,
        tty,
        command,
    } = args;
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
    let devices = devices
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.split(':').collect();
            match parts.as_slice() {
                [h, c] => Ok((h, c, "rwm")),
                [h, c, p] => Ok((h, c, *p)),
                _ => Err(anyhow::anyhow!(
                    "--device {d:?}: expected HOST:CONTAINER[:PERMISSIONS]"
                )),
            }
            .map(|(h, c, p)| Device {
                host_path: h.to_string(),
                container_path: c.to_string(),
                permissions: p.to_string(),
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
        devices,
        labels: pairs(&labels, "label")?,
        log_path: format!("{name}/0.log"),
        tty,
        linux: Some(LinuxContainerConfig {
            resources: memory_mib.map(|m| LinuxContainerResources {
                memory_limit_in_bytes: m << 20,
                ..Default::default()
            }),
            security_context: privileged.then(|| LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
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
    Ok(())
}

/// Starts a created container.
pub async fn start(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    println!("{id}");
    Ok(())
}

/// Runs `command` in a running container and prints its output; exits
/// with its exit code when that is not 0.
pub async fn exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: String,
    timeout: i64,
    command: Vec<String>,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Runs a command through the streaming server; exits with its code.
pub async fn exec_stream(
    rt: &mut RuntimeServiceClient<Channel>,
    id: String,
    stdin: bool,
    tty: bool,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let url = rt
        .exec(ExecRequest {
            container_id: id,
            cmd: command,
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await?
        .into_inner()
        .url;
    super::stream::run_and_exit(&url, stdin, tty).await
}

/// Attaches to a container's main process until it ends or stdin does.
pub async fn attach(
    rt: &mut RuntimeServiceClient<Channel>,
    id: String,
    stdin: bool,
    tty: bool,
) -> anyhow::Result<()> {
    let url = rt
        .attach(AttachRequest {
            container_id: id,
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await?
        .into_inner()
        .url;
    super::stream::run_and_exit(&url, stdin, tty).await
}

/// Prints a container's log, as CRI records if `raw`.
pub async fn logs(
    rt: &mut RuntimeServiceClient<Channel>,
    id: String,
    raw: bool,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Lists the running containers (every one if `all`), of `pod` if given.
pub async fn list(
    rt: &mut RuntimeServiceClient<Channel>,
    all: bool,
    pod: Option<String>,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Prints a container's status.
pub async fn inspect(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
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
    Ok(())
}

/// Stops a container, SIGKILL after `timeout` seconds.
pub async fn stop(
    rt: &mut RuntimeServiceClient<Channel>,
    id: String,
    timeout: i64,
) -> anyhow::Result<()> {
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout,
    })
    .await?;
    println!("{id}");
    Ok(())
}

/// Removes a container.
pub async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    println!("{id}");
    Ok(())
}

/// Prints every container's CPU and memory use.
pub async fn stats(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
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
    Ok(())
}
