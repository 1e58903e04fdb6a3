//! `version` and `info`: the runtime's versions and conditions.

use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use tonic::transport::Channel;

/// Prints the runtime's name and versions.
pub async fn version(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
    let v = rt.version(VersionRequest::default()).await?.into_inner();
    println!(
        "Version: {}\nRuntimeName: {}\nRuntimeVersion: {}\nRuntimeApiVersion: {}",
        v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    Ok(())
}

/// Prints the runtime and network conditions and the runtime's info.
pub async fn info(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
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
    Ok(())
}
