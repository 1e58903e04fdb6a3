//! CRI `ContainerConfig` + image config → the OCI runtime spec the guest
//! agent runs, the way containerd's CRI plugin builds it: Kubernetes'
//! command/args rules over the image's entrypoint/cmd, image env under the
//! pod's env, users resolved from the image's `/etc/passwd`, docker's default
//! capabilities and masked paths, the RuntimeDefault seccomp profile, cgroup
//! limits from the CRI resources, and the pod's shared namespaces and
//! `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` in the guest.
//!
//! One module per concern: `process` (arguments, environment), `user`
//! (user and groups), `caps` (capabilities), `resources` (cgroup limits),
//! `namespaces`, `mounts` (bind mounts, privileged devices); the seccomp
//! profile is [`super::seccomp`]'s. This file puts them together ([`build`]).

mod caps;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod user;

pub use caps::{capabilities, DEFAULT_CAPS};
pub use process::{environment, process_args};
pub use resources::resources;
pub use user::resolve_user;

use crate::pod::record::GuestSandbox;
use moat_proto::cri::ContainerConfig;
use mounts::{bind, privileged_devices};
use namespaces::namespaces;
use oci_spec::runtime::{Mount, Spec, User};
use std::path::PathBuf;

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
    /// Its propagation (`rprivate`, `rslave`, `rshared`).
    pub propagation: &'static str,
}

/// What a container's spec is built from.
pub struct SpecInput<'a> {
    /// For a native pod on the host (an `oci` handler): the node's
    /// namespaces may be asked for, mounts are the host paths.
    pub native: bool,
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

pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let c = input.config;
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    // `devices` (raw block volumes) become device nodes the agent adds,
    // once it has found them in the guest (`container::devices`).
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
        .map(|m| match (privileged, input.native) {
            // A privileged native container has the node's devices, as
            // runc-based runtimes give it, and a writable /sys.
            (true, true) if m.destination() == &PathBuf::from("/dev") => {
                bind("/dev", "/dev", false, "rslave")
            }
            (true, _) if m.destination() == &PathBuf::from("/sys") => {
                let mut m = m;
                let options = m
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| if o == "ro" { "rw".to_string() } else { o })
                    .collect();
                m.set_options(Some(options));
                m
            }
            _ => m,
        })
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
            mounts.push(bind(dest, src, false, "rprivate"));
        }
    }
    for m in input.mounts {
        mounts.push(bind(
            &m.container_path,
            &m.guest_path,
            m.readonly,
            m.propagation,
        ));
    }
    spec.set_mounts(Some(mounts));

    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(namespaces(sc, input.guest, input.native)?));
    // The container's root must propagate for its mounts to (runc refuses
    // an `rshared` mount under a private root).
    let root_propagation = ["rshared", "rslave"]
        .into_iter()
        .find(|p| input.mounts.iter().any(|m| m.propagation == *p));
    if let Some(p) = root_propagation {
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
    let mut res = limits.map(resources).unwrap_or_default();
    res.set_devices(None);
    if input.native && !privileged {
        // Every device denied first, as containerd writes it: runc then
        // allows its default nodes (null, zero, tty, ...) and the
        // container's `devices`. Without this rule runc's device cgroup
        // allows every device, and CAP_MKNOD would reach the node's disks.
        let none: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_value(serde_json::json!({"allow": false, "access": "rwm"}))
                .map_err(|e| bad("linux.resources.devices", e.to_string()))?;
        res.set_devices(Some(vec![none]));
    }
    if privileged && input.native {
        linux.set_masked_paths(None).set_readonly_paths(None);
        let all: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_value(serde_json::json!({"allow": true, "access": "rwm"}))
                .map_err(|e| bad("linux.resources.devices", e.to_string()))?;
        res.set_devices(Some(vec![all]));
    } else if privileged {
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
    linux.set_resources(Some(res));
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
mod tests;
