//! CRI `ContainerConfig` + image config → the OCI runtime spec the guest
//! agent runs, the way containerd's CRI plugin builds it: Kubernetes'
//! command/args rules over the image's entrypoint/cmd, image env under the
//! pod's env, users resolved from the image's `/etc/passwd`, docker's default
//! capabilities and masked paths, the RuntimeDefault seccomp profile, cgroup
//! limits from the CRI resources, and the pod's shared namespaces and
//! `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` in the guest.

use crate::pod::record::GuestSandbox;
use moat_proto::cri::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode,
};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCpu, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, Spec, User,
};
use std::path::PathBuf;
use std::str::FromStr;

/// A request field that cannot be turned into a spec; the text names it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad(field: &str, why: impl std::fmt::Display) -> SpecError {
    SpecError(format!("{field}: {why}"))
}

/// A host file or directory copied into the guest for a CRI mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMount {
    /// Where the container sees it.
    pub container_path: String,
    /// The copy in the guest (under the agent's shared directory).
    pub guest_path: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// What a container's spec is built from.
pub struct SpecInput<'a> {
    /// The container's CRI config.
    pub config: &'a ContainerConfig,
    /// The image's config JSON (the whole document).
    pub image_config: &'a serde_json::Value,
    /// The image's `/etc/passwd`.
    pub passwd: &'a str,
    /// The image's `/etc/group`.
    pub group: &'a str,
    /// The pod's guest-side files and namespaces.
    pub guest: &'a GuestSandbox,
    /// CRI mounts, as copied into the guest.
    pub mounts: &'a [SharedMount],
    /// Seccomp profile JSON for a `Localhost` profile, read by the caller.
    pub localhost_seccomp: Option<&'a str>,
}

/// The capabilities a container gets unless it asks otherwise (docker's and
/// containerd's default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux 6.1 knows (privileged containers get them all).
const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn image_section(image: &serde_json::Value) -> &serde_json::Value {
    &image["config"]
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The process arguments by Kubernetes' rules: `command` replaces the
/// image's entrypoint (and drops its cmd), `args` replaces its cmd.
pub fn process_args(
    config: &ContainerConfig,
    image: &serde_json::Value,
) -> Result<Vec<String>, SpecError> {
    let img = image_section(image);
    let mut args = if config.command.is_empty() {
        strings(&img["Entrypoint"])
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(strings(&img["Cmd"]));
    }
    if args.is_empty() {
        return Err(bad(
            "config.command",
            "neither the request nor the image says what to run",
        ));
    }
    Ok(args)
}

/// Environment: the image's, overridden and extended by the request's.
pub fn environment(
    config: &ContainerConfig,
    image: &serde_json::Value,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    for kv in strings(&image_section(image)["Env"]) {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k, v);
    }
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(bad(
                &format!("config.envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        if kv.value.contains('\0') {
            return Err(bad(&format!("config.envs[{i}].value"), "contains NUL"));
        }
        set(&mut env, &kv.key, &kv.value);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut env,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// One `/etc/passwd` entry: (name, uid, gid).
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// One `/etc/group` entry: (name, gid, members).
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves the process user: the request's run_as_user/username/group, else
/// the image's `User` ("name", "uid", "name:group", "uid:gid"), against the
/// image's account files. Returns (uid, gid, additional gids).
pub fn resolve_user(
    sc: Option<&LinuxContainerSecurityContext>,
    image: &serde_json::Value,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let id = |v: i64, field: &str| {
        u32::try_from(v).map_err(|_| bad(field, format!("{v} is not a valid id")))
    };
    if let Some(sc) = sc {
        if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
            return Err(bad(
                "run_as_group",
                "only allowed together with run_as_user or run_as_username",
            ));
        }
    }
    let image_user = image_section(image)["User"].as_str().unwrap_or("");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.to_string(), None),
    };
    let (user_field, user) = match sc {
        Some(sc) if sc.run_as_user.is_some() => (
            "run_as_user",
            sc.run_as_user
                .map(|v| v.value.to_string())
                .unwrap_or_default(),
        ),
        Some(sc) if !sc.run_as_username.is_empty() => {
            ("run_as_username", sc.run_as_username.clone())
        }
        _ => ("image config User", user_part),
    };
    let (uid, name, primary) = if user.is_empty() {
        (0, Some("root".to_string()), 0)
    } else if let Ok(uid) = user.parse::<i64>() {
        let uid = id(uid, user_field)?;
        let entry = passwd_entries(passwd).find(|e| e.1 == uid);
        (
            uid,
            entry.map(|e| e.0.to_string()),
            entry.map(|e| e.2).unwrap_or(0),
        )
    } else {
        let Some(e) = passwd_entries(passwd).find(|e| e.0 == user) else {
            return Err(bad(
                user_field,
                format!("user {user:?} is not in the image's /etc/passwd"),
            ));
        };
        (e.1, Some(user.clone()), e.2)
    };
    let gid = match (sc.and_then(|s| s.run_as_group), group_part) {
        (Some(g), _) => id(g.value, "run_as_group")?,
        (None, Some(g)) if user_field == "image config User" => match g.parse::<i64>() {
            Ok(n) => id(n, "image config User")?,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| {
                    bad(
                        "image config User",
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
        },
        _ => primary,
    };
    let mut extra: Vec<u32> = Vec::new();
    if let Some(name) = &name {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && g != gid && !extra.contains(&g) {
                extra.push(g);
            }
        }
    }
    if let Some(sc) = sc {
        for &g in &sc.supplemental_groups {
            let g = id(g, "supplemental_groups")?;
            if !extra.contains(&g) {
                extra.push(g);
            }
        }
    }
    Ok((uid, gid, extra))
}

fn parse_cap(name: &str, field: &str) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(short).map_err(|_| bad(field, format!("unknown capability {name:?}")))
}

/// The capability set: the default (or all, if privileged) plus adds minus
/// drops, "ALL" meaning every capability.
pub fn capabilities(
    sc: Option<&LinuxContainerSecurityContext>,
) -> Result<LinuxCapabilities, SpecError> {
    let privileged = sc.is_some_and(|s| s.privileged);
    let base: &[&str] = if privileged { &ALL_CAPS } else { &DEFAULT_CAPS };
    let mut set = Capabilities::new();
    for c in base {
        set.insert(parse_cap(c, "capabilities")?);
    }
    let mut ambient = Capabilities::new();
    if let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) {
        for c in &caps.add_capabilities {
            if c.eq_ignore_ascii_case("ALL") {
                for a in ALL_CAPS {
                    set.insert(parse_cap(a, "capabilities")?);
                }
            } else {
                set.insert(parse_cap(c, "capabilities.add_capabilities")?);
            }
        }
        for c in &caps.drop_capabilities {
            if c.eq_ignore_ascii_case("ALL") {
                set.clear();
            } else {
                set.remove(&parse_cap(c, "capabilities.drop_capabilities")?);
            }
        }
        for c in &caps.add_ambient_capabilities {
            let cap = parse_cap(c, "capabilities.add_ambient_capabilities")?;
            set.insert(cap);
            ambient.insert(cap);
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set.clone()))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(caps)
}

/// OCI cgroup limits from CRI resources (CreateContainer and
/// UpdateContainerResources).
pub fn resources(r: &LinuxContainerResources) -> LinuxResources {
    let mut res = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    res.set_cpu(Some(cpu));
    let mut mem = LinuxMemory::default();
    if r.memory_limit_in_bytes > 0 {
        mem.set_limit(Some(r.memory_limit_in_bytes));
        // Without a swap limit the container may not swap (kubelet's
        // default of NoSwap).
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else {
            r.memory_limit_in_bytes
        };
        mem.set_swap(Some(swap));
    }
    res.set_memory(Some(mem));
    if !r.unified.is_empty() {
        res.set_unified(Some(r.unified.clone()));
    }
    res
}

fn ns(typ: LinuxNamespaceType, path: Option<&String>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path.map(PathBuf::from));
    n
}

/// The namespaces: new mount and cgroup namespaces; PID, IPC and UTS joined
/// from the pod (or new, or the guest's, as the CRI namespace options say). The
/// network namespace is the guest's: the whole VM is the pod.
fn namespaces(
    sc: Option<&LinuxContainerSecurityContext>,
    guest: &GuestSandbox,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let opts = sc.and_then(|s| s.namespace_options.clone());
    let pid_mode = opts.as_ref().map(|o| o.pid).unwrap_or(0);
    let ipc_mode = opts
        .as_ref()
        .map(|o| o.ipc)
        .unwrap_or(NamespaceMode::Pod as i32);
    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    let mode = |m: i32, kind: &str| -> Result<Option<NamespaceMode>, SpecError> {
        match NamespaceMode::try_from(m) {
            Ok(NamespaceMode::Target) => Err(bad(
                &format!("security_context.namespace_options.{kind}"),
                "TARGET namespaces are not supported",
            )),
            Ok(NamespaceMode::Node) => Ok(None),
            Ok(m) => Ok(Some(m)),
            Err(_) => Err(bad(
                &format!("security_context.namespace_options.{kind}"),
                format!("unknown mode {m}"),
            )),
        }
    };
    match mode(pid_mode, "pid")? {
        Some(NamespaceMode::Pod) if guest.namespace_paths.contains_key("pid") => out.push(ns(
            LinuxNamespaceType::Pid,
            guest.namespace_paths.get("pid"),
        )),
        Some(_) => out.push(ns(LinuxNamespaceType::Pid, None)),
        None => {}
    }
    match mode(ipc_mode, "ipc")? {
        Some(NamespaceMode::Pod) if guest.namespace_paths.contains_key("ipc") => out.push(ns(
            LinuxNamespaceType::Ipc,
            guest.namespace_paths.get("ipc"),
        )),
        Some(_) => out.push(ns(LinuxNamespaceType::Ipc, None)),
        None => {}
    }
    out.push(ns(
        LinuxNamespaceType::Uts,
        guest.namespace_paths.get("uts"),
    ));
    // Its own cgroup namespace: /sys/fs/cgroup shows the container's cgroup
    // as the root, as containerd does on cgroup v2.
    out.push(ns(LinuxNamespaceType::Cgroup, None));
    Ok(out)
}

fn bind(dest: &str, source: &str, readonly: bool) -> Mount {
    let mut m = Mount::default();
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        options.push("ro".into());
    }
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some("bind".into()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(options));
    m
}

/// The guest devices a privileged container gets besides the default ones.
fn privileged_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    [("/dev/net/tun", 10, 200)]
        .into_iter()
        .filter_map(|(path, major, minor)| {
            serde_json::from_value(serde_json::json!({
                "path": path, "type": "c", "major": major, "minor": minor,
                "fileMode": 0o666, "uid": 0, "gid": 0
            }))
            .ok()
        })
        .collect()
}

/// Builds the spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let c = input.config;
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    if !c.devices.is_empty() {
        return Err(bad(
            "config.devices",
            "host devices cannot be passed into a pod VM",
        ));
    }
    if !c.cdi_devices.is_empty() {
        return Err(bad(
            "config.cdi_devices",
            "host devices cannot be passed into a pod VM",
        ));
    }
    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_hostname(None);

    let mut process = oci_spec::runtime::Process::default();
    process.set_args(Some(process_args(c, input.image_config)?));
    process.set_env(Some(environment(c, input.image_config)?));
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        image_section(input.image_config)["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string()
    };
    if !cwd.starts_with('/') {
        return Err(bad(
            "config.working_dir",
            format!("{cwd:?} is not absolute"),
        ));
    }
    process.set_cwd(PathBuf::from(cwd));
    process.set_terminal(Some(c.tty));
    let (uid, gid, extra) = resolve_user(sc, input.image_config, input.passwd, input.group)?;
    let mut user = User::default();
    user.set_uid(uid).set_gid(gid);
    if !extra.is_empty() {
        user.set_additional_gids(Some(extra));
    }
    process.set_user(user);
    let caps = capabilities(sc)?;
    let bounding: Vec<String> = caps
        .bounding()
        .iter()
        .flatten()
        .map(|c| format!("CAP_{c}"))
        .collect();
    process.set_capabilities(Some(caps));
    process.set_no_new_privileges(Some(sc.is_some_and(|s| s.no_new_privs)));
    let limits = c.linux.as_ref().and_then(|l| l.resources.as_ref());
    if let Some(r) = limits {
        if r.oom_score_adj != 0 {
            let adj = i32::try_from(r.oom_score_adj)
                .ok()
                .filter(|a| (-1000..=1000).contains(a))
                .ok_or_else(|| {
                    bad(
                        "linux.resources.oom_score_adj",
                        format!("{} is outside -1000..=1000", r.oom_score_adj),
                    )
                })?;
            process.set_oom_score_adj(Some(adj));
        }
    }
    process.set_rlimits(None);
    spec.set_process(Some(process));

    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("rootfs"))
        .set_readonly(Some(sc.is_some_and(|s| s.readonly_rootfs)));
    spec.set_root(Some(root));

    // Default mounts without the cgroup v1-style entry; the guest is
    // cgroup2-only and containers see their own cgroup through /proc.
    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        .filter(|m| m.destination() != &PathBuf::from("/sys/fs/cgroup"))
        .collect();
    let mut cgroup = Mount::default();
    cgroup
        .set_destination(PathBuf::from("/sys/fs/cgroup"))
        .set_typ(Some("cgroup2".into()))
        .set_source(Some(PathBuf::from("cgroup2")))
        .set_options(Some(vec![
            "nosuid".into(),
            "noexec".into(),
            "nodev".into(),
            if privileged { "rw" } else { "ro" }.into(),
        ]));
    mounts.push(cgroup);
    let has = |dest: &str| input.mounts.iter().any(|m| m.container_path == dest);
    for (dest, src) in [
        ("/etc/hosts", &input.guest.hosts_path),
        ("/etc/resolv.conf", &input.guest.resolv_conf_path),
        ("/etc/hostname", &input.guest.hostname_path),
    ] {
        if !src.is_empty() && !has(dest) {
            mounts.push(bind(dest, src, false));
        }
    }
    for m in input.mounts {
        mounts.push(bind(&m.container_path, &m.guest_path, m.readonly));
    }
    spec.set_mounts(Some(mounts));

    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(namespaces(sc, input.guest)?));
    let mut res = limits.map(resources).unwrap_or_default();
    res.set_devices(None);
    linux.set_resources(Some(res));
    if privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
        // A privileged container gets the guest's devices a pod may use
        // (runc gives it the host's): /dev/net/tun for VPN sidecars.
        linux.set_devices(Some(privileged_devices()));
    } else {
        if let Some(sc) = sc.filter(|s| !s.masked_paths.is_empty()) {
            linux.set_masked_paths(Some(sc.masked_paths.clone()));
        }
        if let Some(sc) = sc.filter(|s| !s.readonly_paths.is_empty()) {
            linux.set_readonly_paths(Some(sc.readonly_paths.clone()));
        }
    }
    linux.set_seccomp(super::seccomp::profile(
        &super::seccomp::choice(sc)?,
        &bounding,
        input.localhost_seccomp,
    )?);
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(c.annotations.clone().into_iter().collect()));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::{
        Capability as CriCaps, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig,
        NamespaceOption, SecurityProfile,
    };

    fn image() -> serde_json::Value {
        serde_json::json!({"config": {
            "Entrypoint": ["/entry"], "Cmd": ["a", "b"],
            "Env": ["PATH=/bin", "A=image", "B=keep"], "WorkingDir": "/work", "User": "app"
        }})
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nappgrp:x:1001:\nextra:x:2000:app,other\n";

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
        }];
        let spec = build(&SpecInput {
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
        // RuntimeDefault (CRI's zero value) gets the default allow-list,
        // gated by the container's own capabilities.
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile::default()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = build(&SpecInput {
            config: &c,
            image_config: &image(),
            passwd: PASSWD,
            group: GROUP,
            guest: &guest,
            mounts: &[],
            localhost_seccomp: None,
        })
        .unwrap();
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
        let spec = build(&SpecInput {
            config: &c,
            image_config: &image(),
            passwd: PASSWD,
            group: GROUP,
            guest: &GuestSandbox::default(),
            mounts: &[],
            localhost_seccomp: None,
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["linux"]["devices"][0]["path"], "/dev/net/tun");
        assert_eq!(v["linux"]["devices"][0]["major"], 10);
    }

    #[test]
    fn devices_are_refused() {
        let mut c = config();
        c.devices = vec![moat_proto::cri::Device {
            container_path: "/dev/x".into(),
            host_path: "/dev/sda".into(),
            permissions: "rwm".into(),
        }];
        let e = build(&SpecInput {
            config: &c,
            image_config: &image(),
            passwd: PASSWD,
            group: GROUP,
            guest: &GuestSandbox::default(),
            mounts: &[],
            localhost_seccomp: None,
        })
        .unwrap_err();
        assert!(e.0.contains("config.devices"), "{e}");
    }
}
