//! A native pod's agent: moat-agent run on the host beside the pod, as its
//! shim. It serves the same agent API as in a pod VM, on the Unix socket of
//! the pod's directory, and makes the pod's containers through the
//! handler's OCI runtime (runc, crun) instead of setting them up itself.
//! It holds the containers' stdio and reaps them, so it outlives a moatd
//! restart (own session) and is found again by its pid.
//!
//! It runs in the pod's network namespace (or the node's, for a
//! hostNetwork pod), so its containers and its port-forward dials are
//! there, and in moatd's cgroup, like containerd's shims; the pod's own
//! cgroup (under kubelet's `cgroup_parent`) holds the namespace holder and
//! the containers.

use crate::config::RuntimeHandler;
use crate::network::NetNs;
use crate::vm::{VmHandle, VmPaths};
use anyhow::Context;
use moat_proto::agent::agent_client::AgentClient;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// Starts the agent of a native pod whose cgroup is `pod_cgroup` (relative
/// to the hierarchy's root), in `netns` when the pod has its own network.
pub fn spawn_agent(
    handler: &RuntimeHandler,
    paths: &VmPaths,
    netns: Option<&NetNs>,
    pod_cgroup: &Path,
) -> anyhow::Result<(VmHandle, tokio::process::Child)> {
    std::fs::create_dir_all(paths.agent_dir())
        .with_context(|| format!("creating {}", paths.agent_dir().display()))?;
    // The agent's socket is root's alone: whoever reaches it controls the
    // pod's containers.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", paths.dir.display()))?;
    }
    let log = std::fs::File::create(paths.agent_log()).context("creating agent.log")?;
    let ns = match netns {
        Some(ns) => Some(
            std::fs::File::open(ns.path())
                .with_context(|| format!("opening netns {}", ns.path().display()))?,
        ),
        None => None,
    };
    let binary = handler.agent_binary();
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("--listen-unix")
        .arg(paths.agent())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("MOAT_AGENT_RUN_DIR", paths.agent_dir())
        .env("MOAT_AGENT_OCI_RUNTIME", &handler.runtime_path)
        .env("MOAT_AGENT_POD_CGROUP", pod_cgroup)
        .current_dir(&paths.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(filter) = std::env::var_os("MOAT_AGENT_LOG") {
        cmd.env("MOAT_AGENT_LOG", filter);
    }
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only setns and setsid, async-signal-safe, run between fork
    // and exec; the netns file stays open in the parent until the spawn
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    drop(ns);
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("moat-agent exited at once"))?;
    let start_ticks = crate::procfs::Stat::of(pid).map_or(0, |s| s.start_ticks);
    Ok((VmHandle { pid, start_ticks }, child))
}

/// Waits until the native pod's agent answers a Ping (or exits, or
/// `timeout` passes).
pub async fn wait_for_agent(
    paths: &VmPaths,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> anyhow::Result<AgentClient<Channel>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no attempt");
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the pod's agent exited before answering ({status}); its log:\n{}",
                crate::vm::launch::tail(&paths.agent_log(), 10)
            );
        }
        if paths.agent().exists() {
            let attempt = async {
                let mut c = crate::agent::connect_to(
                    crate::agent::AgentAddr::Unix(paths.agent()),
                    Some(Duration::from_secs(5)),
                )
                .await?;
                c.ping(moat_proto::agent::PingRequest {}).await?;
                Ok::<_, anyhow::Error>(c)
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the pod's agent did not answer within {} s ({last}); its log:\n{}",
                timeout.as_secs(),
                crate::vm::launch::tail(&paths.agent_log(), 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The live agents started for the native pod at `paths`: those serving
/// its socket. How a stop finds an agent whose pid a crash kept out of the
/// record.
pub fn running_agents(paths: &VmPaths) -> Vec<VmHandle> {
    let sock = paths.agent();
    crate::procfs::pids()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2).any(|w| {
                w[0] == b"--listen-unix".as_slice() && w[1] == sock.as_os_str().as_encoded_bytes()
            })
        })
        .filter_map(VmHandle::live)
        .collect()
}

/// Removes the native pod's cgroup tree bottom-up, killing what is left in
/// it first (its agent normally emptied it; a crash may not have).
pub async fn remove_cgroup_tree(root: &Path, rel: &Path) -> std::io::Result<()> {
    let top = root.join(rel);
    if !top.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    let mut stack = vec![top.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    for d in &dirs {
        // cgroup.kill (Linux 5.14+) kills everything below at once.
        let _ = std::fs::write(d.join("cgroup.kill"), "1");
    }
    for d in dirs.iter().rev() {
        let mut last = None;
        for _ in 0..200 {
            match std::fs::remove_dir(d) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(e) = last {
            return Err(std::io::Error::new(
                e.kind(),
                format!("removing {}: {e}", d.display()),
            ));
        }
    }
    Ok(())
}

/// Unmounts whatever is still mounted under the pod's directory (image,
/// overlay and scratch mounts of a crashed agent, its namespace files),
/// deepest first, lazily.
pub fn unmount_under(dir: &Path) {
    for p in mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", p.display());
        }
    }
}

/// The mount points strictly under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<std::path::PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
