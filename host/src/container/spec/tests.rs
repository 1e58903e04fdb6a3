//! The spec builder against Kubernetes' and containerd's rules.

use super::caps::ALL_CAPS;
use super::*;
use moat_proto::cri::{
    Capability as CriCaps, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode, NamespaceOption,
    SecurityProfile,
};
use oci_spec::runtime::Capability;

fn image() -> serde_json::Value {
    serde_json::json!({"config": {
        "Entrypoint": ["/entry"], "Cmd": ["a", "b"],
        "Env": ["PATH=/bin", "A=image", "B=keep"], "WorkingDir": "/work", "User": "app"
    }})
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nappgrp:x:1001:\nextra:x:2000:app,other\n";

/// The spec of `config` with the test image, in `guest`, without mounts.
fn build_in(config: &ContainerConfig, guest: &GuestSandbox) -> Result<Spec, SpecError> {
    build_for(config, guest, false)
}

/// Like [`build_in`], for a native pod when `native`.
fn build_for(
    config: &ContainerConfig,
    guest: &GuestSandbox,
    native: bool,
) -> Result<Spec, SpecError> {
    build(&SpecInput {
        native,
        config,
        image_config: &image(),
        passwd: PASSWD,
        group: GROUP,
        guest,
        mounts: &[],
        localhost_seccomp: None,
    })
}

fn config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn command_and_args_follow_kubernetes_rules() {
    let mut c = config();
    assert_eq!(process_args(&c, &image()).unwrap(), ["/entry", "a", "b"]);
    c.args = vec!["x".into()];
    assert_eq!(process_args(&c, &image()).unwrap(), ["/entry", "x"]);
    c.command = vec!["/bin/sh".into()];
    assert_eq!(process_args(&c, &image()).unwrap(), ["/bin/sh", "x"]);
    c.args.clear();
    assert_eq!(process_args(&c, &image()).unwrap(), ["/bin/sh"]);
    let e = process_args(&config(), &serde_json::json!({})).unwrap_err();
    assert!(e.0.contains("config.command"), "{e}");
}

#[test]
fn request_env_overrides_image_env() {
    let mut c = config();
    c.envs = vec![KeyValue {
        key: "A".into(),
        value: "req".into(),
    }];
    assert_eq!(
        environment(&c, &image()).unwrap(),
        ["PATH=/bin", "A=req", "B=keep"]
    );
    c.envs[0].key = "X=Y".into();
    assert!(environment(&c, &image())
        .unwrap_err()
        .0
        .contains("config.envs[0].key"));
}

#[test]
fn users_resolve_against_the_image_files() {
    assert_eq!(
        resolve_user(None, &image(), PASSWD, GROUP).unwrap(),
        (1000, 1001, vec![2000])
    );
    let sc = LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 0 }),
        supplemental_groups: vec![5],
        ..Default::default()
    };
    assert_eq!(
        resolve_user(Some(&sc), &image(), PASSWD, GROUP).unwrap(),
        (0, 0, vec![5])
    );
    let sc = LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 4242 }),
        run_as_group: Some(Int64Value { value: 7 }),
        ..Default::default()
    };
    assert_eq!(
        resolve_user(Some(&sc), &image(), PASSWD, GROUP).unwrap(),
        (4242, 7, vec![])
    );
    let sc = LinuxContainerSecurityContext {
        run_as_group: Some(Int64Value { value: 7 }),
        ..Default::default()
    };
    let e = resolve_user(Some(&sc), &image(), PASSWD, GROUP).unwrap_err();
    assert!(e.0.starts_with("run_as_group"), "{e}");
    let img = serde_json::json!({"config": {"User": "1000:extra"}});
    assert_eq!(
        resolve_user(None, &img, PASSWD, GROUP).unwrap(),
        (1000, 2000, vec![])
    );
    let sc = LinuxContainerSecurityContext {
        run_as_username: "nobody".into(),
        ..Default::default()
    };
    let e = resolve_user(Some(&sc), &image(), PASSWD, GROUP).unwrap_err();
    assert!(
        e.0.contains("run_as_username") && e.0.contains("nobody"),
        "{e}"
    );
    let sc = LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: -1 }),
        ..Default::default()
    };
    assert!(resolve_user(Some(&sc), &image(), PASSWD, GROUP).is_err());
}

#[test]
fn capabilities_add_and_drop() {
    let caps = capabilities(None).unwrap();
    let b = caps.bounding().clone().unwrap();
    assert_eq!(b.len(), DEFAULT_CAPS.len());
    assert!(!b.contains(&Capability::SysAdmin));
    let sc = LinuxContainerSecurityContext {
        capabilities: Some(CriCaps {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CAP_CHOWN".into()],
            add_ambient_capabilities: vec![],
        }),
        ..Default::default()
    };
    let b = capabilities(Some(&sc)).unwrap().bounding().clone().unwrap();
    assert!(b.contains(&Capability::NetAdmin) && !b.contains(&Capability::Chown));
    let sc = LinuxContainerSecurityContext {
        capabilities: Some(CriCaps {
            add_capabilities: vec![],
            drop_capabilities: vec!["ALL".into()],
            add_ambient_capabilities: vec![],
        }),
        ..Default::default()
    };
    assert!(capabilities(Some(&sc))
        .unwrap()
        .bounding()
        .clone()
        .unwrap()
        .is_empty());
    let sc = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    let b = capabilities(Some(&sc)).unwrap().bounding().clone().unwrap();
    assert_eq!(b.len(), ALL_CAPS.len());
    let sc = LinuxContainerSecurityContext {
        capabilities: Some(CriCaps {
            add_capabilities: vec!["FLY".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(capabilities(Some(&sc)).unwrap_err().0.contains("FLY"));
}

#[test]
fn full_spec_has_pod_namespaces_files_and_limits() {
    let guest = GuestSandbox {
        namespace_paths: [
            ("ipc".to_string(), "/run/moat/sandbox/ns/ipc".to_string()),
            ("uts".to_string(), "/run/moat/sandbox/ns/uts".to_string()),
        ]
        .into_iter()
        .collect(),
        hosts_path: "/run/moat/sandbox/hosts".into(),
        resolv_conf_path: "/run/moat/sandbox/resolv.conf".into(),
        hostname_path: "/run/moat/sandbox/hostname".into(),
    };
    let mut c = config();
    c.tty = true;
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            oom_score_adj: 500,
            ..Default::default()
        }),
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            seccomp: Some(SecurityProfile {
                profile_type: moat_proto::cri::security_profile::ProfileType::Unconfined as i32,
                localhost_ref: String::new(),
            }),
            readonly_rootfs: true,
            ..Default::default()
        }),
    });
    let mounts = [SharedMount {
        container_path: "/etc/hosts".into(),
        guest_path: "/run/moat/shared/x/0".into(),
        readonly: true,
        propagation: "rprivate",
    }];
    let spec = build(&SpecInput {
        native: false,
        config: &c,
        image_config: &image(),
        passwd: PASSWD,
        group: GROUP,
        guest: &guest,
        mounts: &mounts,
        localhost_seccomp: None,
    })
    .unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["process"]["cwd"], "/work");
    assert_eq!(v["process"]["terminal"], true);
    assert_eq!(v["process"]["user"]["uid"], 1000);
    assert_eq!(v["process"]["oomScoreAdj"], 500);
    assert_eq!(v["root"]["readonly"], true);
    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
    let nss = v["linux"]["namespaces"].as_array().unwrap();
    assert!(nss
        .iter()
        .any(|n| n["type"] == "ipc" && n["path"] == "/run/moat/sandbox/ns/ipc"));
    assert!(nss
        .iter()
        .any(|n| n["type"] == "pid" && n.get("path").is_none()));
    assert!(!nss.iter().any(|n| n["type"] == "network"));
    assert!(nss.iter().any(|n| n["type"] == "cgroup"), "{nss:?}");
    let mounts = v["mounts"].as_array().unwrap();
    let hosts: Vec<_> = mounts
        .iter()
        .filter(|m| m["destination"] == "/etc/hosts")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["source"], "/run/moat/shared/x/0");
    assert!(mounts
        .iter()
        .any(|m| m["destination"] == "/etc/resolv.conf"));
    assert!(v["linux"].get("seccomp").is_none());
    // The node's PID namespace: never the VM's own instead.
    let mut host_pid = c.clone();
    if let Some(ns) = host_pid
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = NamespaceMode::Node as i32;
    }
    let e = build_in(&host_pid, &guest).unwrap_err().to_string();
    assert!(e.contains("namespace_options.pid: NODE"), "{e}");
    // A native pod's container gets it by having no PID namespace of its
    // own: its runtime runs in the node's. Without a UTS path (a
    // hostNetwork pod) it has the node's UTS namespace too.
    let host_guest = GuestSandbox::default();
    let spec = build_for(&host_pid, &host_guest, true).unwrap();
    let kinds: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| format!("{:?}", n.typ()).to_lowercase())
        .collect();
    assert!(!kinds.iter().any(|k| k == "pid" || k == "uts"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "mount"), "{kinds:?}");
    // RuntimeDefault (CRI's zero value) gets the default allow-list,
    // gated by the container's own capabilities.
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile::default()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = build_in(&c, &guest).unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(v["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["names"].as_array().unwrap().iter().any(|n| n == "chroot")));
}

#[test]
fn privileged_containers_get_the_tun_device() {
    let mut c = config();
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = build_in(&c, &GuestSandbox::default()).unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["linux"]["devices"][0]["path"], "/dev/net/tun");
    assert_eq!(v["linux"]["devices"][0]["major"], 10);
}

#[test]
fn cdi_devices_are_refused() {
    let mut c = config();
    c.cdi_devices = vec![moat_proto::cri::CdiDevice {
        name: "vendor.com/gpu=0".into(),
    }];
    let e = build_in(&c, &GuestSandbox::default()).unwrap_err();
    assert!(e.0.contains("config.cdi_devices"), "{e}");
}

#[test]
fn a_native_container_starts_from_no_devices_unless_privileged() {
    let guest = GuestSandbox::default();
    let rules = |c: &ContainerConfig| {
        let v = serde_json::to_value(build_for(c, &guest, true).unwrap()).unwrap();
        v["linux"]["resources"]["devices"].clone()
    };
    let plain = rules(&config());
    assert_eq!(plain[0]["allow"], false, "{plain}");
    assert_eq!(plain[0]["access"], "rwm", "{plain}");
    let mut p = config();
    p.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let all = rules(&p);
    assert_eq!(all[0]["allow"], true, "{all}");
}
