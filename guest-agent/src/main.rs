//! moat-agent: PID 1 of a pod's microVM.
//!
//! It mounts the guest's base filesystems, reaps orphans, and serves the
//! host<->agent API (`proto/agent.proto`) on AF_VSOCK. Run as
//! `moat-agent __moat_container_init` it is the container init stage (see
//! `container::init`); `moat-agent --listen-unix PATH` serves on a Unix
//! socket instead of vsock (tests, development, and the agent moatd runs on
//! the host for each native pod, where `MOAT_AGENT_OCI_RUNTIME` names the
//! OCI runtime that makes its containers and `MOAT_AGENT_POD_CGROUP` the
//! pod's cgroup).

use moat_agent::{cmdline, container, pid1, power, reaper, server, state, volumes};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(container::init::INIT_ARG) {
        container::init::main();
    }
    let started = Instant::now();
    let is_pid1 = std::process::id() == 1;
    if is_pid1 {
        if let Err(e) = pid1::leave_initramfs().and_then(|()| pid1::mount_base_filesystems()) {
            // Without /proc and /dev the agent cannot serve; say why on the
            // console and power off so the VMM exits instead of hanging.
            eprintln!("moat-agent: fatal: {e:#}");
            power::poweroff();
        }
    }
    init_logging();
    let listen_unix = match args.get(1).map(String::as_str) {
        Some("--listen-unix") => match args.get(2) {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                eprintln!("moat-agent: --listen-unix needs a path");
                std::process::exit(2);
            }
        },
        Some(other) if !is_pid1 => {
            eprintln!("moat-agent: unknown argument {other:?} (use --listen-unix PATH)");
            std::process::exit(2);
        }
        _ => None,
    };
    if is_pid1 {
        pid1::enable_cgroup_controllers();
    }
    if let Err(e) = reaper::become_subreaper() {
        tracing::warn!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let cmdline = cmdline::KernelCmdline::read();
    let mut watch_volumes = false;
    if let (true, Some(tag)) = (is_pid1, cmdline.volumes_tag()) {
        // Without it only the pod's volumes fail; the agent serves on.
        let dir = std::path::Path::new(moat_proto::VOLUMES_DIR);
        match volumes::mount_shared(tag, dir) {
            Ok(()) => tracing::info!(tag, dir = %dir.display(), "volumes mounted"),
            Err(e) => tracing::error!("volumes: {e:#}"),
        }
        watch_volumes = true;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1 = is_pid1,
        setup_us = started.elapsed().as_micros() as u64,
        "moat-agent ready"
    );
    if is_pid1 && cmdline.test_mode() == Some("poweroff") {
        tracing::info!("moat.test=poweroff: powering off");
        power::poweroff();
    }
    let config = state::Config {
        run_dir: std::env::var_os("MOAT_AGENT_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/moat")),
        cgroup_root: PathBuf::from(moat_agent::cgroups::CGROUP_ROOT),
        // The magic link, not the path it names: after leaving the initramfs
        // PID 1's binary is no longer reachable by path, but still executable.
        init_binary: PathBuf::from("/proc/self/exe"),
        is_pid1,
        exec_record_ttl: std::time::Duration::from_millis(
            std::env::var("MOAT_AGENT_EXEC_TTL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60_000),
        ),
        pod_cgroup: std::env::var_os("MOAT_AGENT_POD_CGROUP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("pod")),
        oci_runtime: std::env::var_os("MOAT_AGENT_OCI_RUNTIME").map(PathBuf::from),
    };
    let result = run(config, listen_unix, watch_volumes);
    if let Err(e) = &result {
        tracing::error!("agent stopped: {e:#}");
    }
    if is_pid1 {
        // PID 1 must never exit (the kernel would panic): power off instead.
        power::poweroff();
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
}

/// Serves the agent; with `watch_volumes`, keeps the mirrors of
/// configmap-shaped volumes in step (`moat_agent::watched`).
fn run(
    config: state::Config,
    listen_unix: Option<PathBuf>,
    watch_volumes: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::spawn(reaper::global().run());
        if watch_volumes {
            tokio::spawn(moat_agent::watched::keep_in_step(
                PathBuf::from(moat_proto::VOLUMES_DIR),
                config.watched_dir(),
            ));
        }
        match listen_unix {
            Some(path) => server::serve_unix(&path, config).await,
            None => server::serve_vsock(moat_proto::AGENT_VSOCK_PORT, config).await,
        }
    })
}
