//! Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use crate::cri::Daemon;
use moat_proto::cri::*;

/// The CRI API version served.
pub const CRI_API_VERSION: &str = "v1";

/// VersionResponse.
pub fn version() -> VersionResponse {
    VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "moat".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    }
}

/// StatusResponse: RuntimeReady, and NetworkReady when a CNI network is loaded.
pub fn status(d: &Daemon, verbose: bool) -> StatusResponse {
    let runtime_ready = RuntimeCondition {
        r#type: "RuntimeReady".into(),
        status: true,
        reason: String::new(),
        message: String::new(),
    };
    let network_ready = match d.pods.network() {
        Some(_) => RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            ..Default::default()
        },
        None => RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: format!(
                "no CNI network configuration in {}",
                d.config.cni_conf_dir.display()
            ),
        },
    };
    let mut info = std::collections::HashMap::new();
    if verbose {
        let handlers: Vec<_> = d.config.runtime_handlers.keys().collect();
        info.insert(
            "config".into(),
            serde_json::json!({
                "socket": d.config.socket,
                "stateDir": d.config.state_dir,
                "runtimeHandlers": handlers,
                "defaultRuntimeHandler": d.config.default_runtime_handler,
            })
            .to_string(),
        );
        // What a leak would grow: open streaming sessions, moatd's tasks.
        let tasks = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks())
            .ok();
        info.insert(
            "streaming".into(),
            serde_json::json!({
                "url": d.streaming.base_url(),
                "openSessions": d.streaming.open_sessions(),
                "tasks": tasks,
            })
            .to_string(),
        );
    }
    StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info,
        runtime_handlers: d
            .config
            .runtime_handlers
            .keys()
            .map(|name| RuntimeHandler {
                name: name.clone(),
                features: Some(RuntimeHandlerFeatures::default()),
            })
            .collect(),
        features: Some(RuntimeFeatures::default()),
    }
}

/// RuntimeConfigResponse: the cgroup driver kubelet must match.
pub fn runtime_config(d: &Daemon) -> RuntimeConfigResponse {
    let driver = match d.config.cgroup_driver.as_str() {
        "cgroupfs" => CgroupDriver::Cgroupfs,
        _ => CgroupDriver::Systemd,
    };
    RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}
