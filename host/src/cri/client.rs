//! A tonic channel to a moatd CRI socket, for clients (moatctl, tests).

use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the CRI socket at `socket`.
pub async fn connect(socket: PathBuf) -> anyhow::Result<Channel> {
    // The URI is required by tonic but unused: the connector dials the socket.
    Ok(Endpoint::try_from("http://moatd.sock")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await?)
}
