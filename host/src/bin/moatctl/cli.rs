//! The command line: clap's definitions of moatctl's options and
//! subcommands, and `key=value` argument parsing.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// moatctl's command line.
#[derive(Parser)]
#[command(version, about = "Talk CRI to moatd (a crictl-style client)")]
pub struct Cli {
    /// moatd's CRI socket.
    #[arg(long, env = "MOAT_SOCKET", default_value = "/run/moat/moat.sock")]
    pub socket: PathBuf,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// moatctl's subcommands.
#[derive(Subcommand)]
pub enum Cmd {
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
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// Container id (or unique prefix).
        id: String,
    },
    /// Run a command in a running container through the streaming server
    /// (as crictl does; `--sync` uses ExecSync); exits with its exit code.
    Exec {
        /// Container id (or unique prefix).
        id: String,
        /// Pass this terminal's stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Run the command on a terminal (this one in raw mode).
        #[arg(short, long)]
        tty: bool,
        /// Use ExecSync: output collected and printed at the end.
        #[arg(short, long)]
        sync: bool,
        /// With --sync, seconds before the command is killed (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a running container's main process.
    Attach {
        /// Container id (or unique prefix).
        id: String,
        /// Pass this terminal's stdin (the container must have been created
        /// with stdin open).
        #[arg(short, long)]
        interactive: bool,
        /// The container has a terminal (this one goes to raw mode).
        #[arg(short, long)]
        tty: bool,
    },
    /// Forward local ports to ports on a pod's localhost (as kubectl
    /// port-forward); runs until interrupted.
    PortForward {
        /// Pod id (or unique prefix).
        id: String,
        /// `[LOCAL:]REMOTE` pairs (LOCAL empty: any free port).
        #[arg(required = true, value_parser = crate::port_forward::parse_pair)]
        ports: Vec<crate::port_forward::PortPair>,
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

/// The arguments of `create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Pod sandbox id (or unique prefix).
    pub pod: String,
    /// Image reference (pulled already).
    pub image: String,
    /// Container name (default: the image's last path part).
    #[arg(long)]
    pub name: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub envs: Vec<String>,
    /// Label key=value (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Host path mounted as HOST:CONTAINER[:ro] (shared live with a pod VM).
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Host device (or, for a pod VM, a file as a raw block volume) as
    /// HOST:CONTAINER[:PERMISSIONS] (permissions r, w, m; default rwm).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Run the container privileged.
    #[arg(long)]
    pub privileged: bool,
    /// Memory limit in MiB.
    #[arg(long)]
    pub memory_mib: Option<i64>,
    /// Allocate a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Command and arguments (default: the image's).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `items` (`key=value`, given with `--flag`) as a map.
pub fn pairs(
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
