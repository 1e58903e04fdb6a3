//! moatctl: a small crictl-style CLI over moatd's CRI socket.
//!
//! Files: [`cli`] holds the command line; [`ids`] resolves short ids;
//! [`runtime`], [`images`], [`pods`] and [`containers`] run the commands
//! of each kind; [`stream`] runs exec and attach sessions and
//! [`port_forward`] port-forward ones; [`output`] holds what printing shares.

mod cli;
mod containers;
mod ids;
mod images;
mod output;
mod pods;
mod port_forward;
mod runtime;
mod stream;

use clap::Parser;
use cli::{Cli, Cmd};
use moat_proto::cri::image_service_client::ImageServiceClient;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ch = moatd::cri::client::connect(cli.socket.clone())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to moatd at {}: {e:#}", cli.socket.display()))?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);
    match ids::resolve_ids(&mut rt, cli.cmd).await? {
        Cmd::Version => runtime::version(&mut rt).await?,
        Cmd::Info => runtime::info(&mut rt).await?,
        Cmd::Pull { image, creds } => images::pull(&mut img, image, creds).await?,
        Cmd::Images => images::list(&mut img).await?,
        Cmd::Rmi { image } => images::remove(&mut img, image).await?,
        Cmd::Runp {
            name,
            namespace,
            uid,
            runtime,
            labels,
            log_dir,
        } => pods::run(&mut rt, name, namespace, uid, runtime, labels, log_dir).await?,
        Cmd::Pods => pods::list(&mut rt).await?,
        Cmd::Inspectp { id } => pods::inspect(&mut rt, id).await?,
        Cmd::Stopp { id } => pods::stop(&mut rt, id).await?,
        Cmd::Rmp { id } => pods::remove(&mut rt, id).await?,
        Cmd::Statsp => pods::stats(&mut rt).await?,
        Cmd::Create(args) => containers::create(&mut rt, args).await?,
        Cmd::Start { id } => containers::start(&mut rt, id).await?,
        Cmd::Exec {
            id,
            interactive,
            tty,
            sync: true,
            timeout,
            command,
        } if !interactive && !tty => containers::exec(&mut rt, id, timeout, command).await?,
        Cmd::Exec {
            id,
            interactive,
            tty,
            command,
            ..
        } => containers::exec_stream(&mut rt, id, interactive, tty, command).await?,
        Cmd::Attach {
            id,
            interactive,
            tty,
        } => containers::attach(&mut rt, id, interactive, tty).await?,
        Cmd::PortForward { id, ports } => port_forward::run(&mut rt, id, ports).await?,
        Cmd::Logs { id, raw } => containers::logs(&mut rt, id, raw).await?,
        Cmd::Ps { all, pod } => containers::list(&mut rt, all, pod).await?,
        Cmd::Inspect { id } => containers::inspect(&mut rt, id).await?,
        Cmd::Stop { id, timeout } => containers::stop(&mut rt, id, timeout).await?,
        Cmd::Rm { id } => containers::remove(&mut rt, id).await?,
        Cmd::Stats => containers::stats(&mut rt).await?,
    }
    Ok(())
}
