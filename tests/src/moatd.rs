//! A real moatd for end-to-end tests: its own state dirs, a CNI bridge
//! network (Debian's plugins), the registry on loopback with the project's
//! busybox image, and CRI clients on its socket.

use crate::artifacts;
use crate::registry::Registry;
use moat_proto::cri::image_service_client::ImageServiceClient;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A running moatd.
pub struct Moatd {
    /// Everything of this moatd lives here.
    pub dir: tempfile::TempDir,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// The registry it pulls from.
    pub registry: Registry,
    /// The bridge the CNI network uses.
    pub bridge: String,
    child: Option<Child>,
}

/// The tokio runtime the CRI tests drive their clients on.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Pids of running moat-vmm processes (to check for leaks).
pub fn vmm_pids() -> Vec<u32> {
    pids_named("moat-vmm")
}

/// The pids of the node's live virtiofsd processes (pod VMs' volumes).
pub fn virtiofsd_pids() -> Vec<u32> {
    pids_named("virtiofsd")
}

/// The pids of live (not zombie) processes whose comm is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    moatd::procfs::pids()
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
            comm.trim() == name && !zombie
        })
        .collect()
}

/// Checks that VMM `pid` runs confined as moatd starts it: every thread
/// under a seccomp filter (mode 2) with no_new_privs and no capabilities,
/// as a uid and gid of its own, rooted in its VM directory, no core dumps,
/// open files and tasks bounded, an empty environment.
pub fn assert_vmm_confined(pid: u32) {
    println!(
        "VMM {pid}: {}",
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| [
                "Uid:",
                "Gid:",
                "Groups:",
                "Seccomp:",
                "NoNewPrivs:",
                "CapEff:"
            ]
            .iter()
            .any(|p| l.starts_with(p)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the VMM's threads");
    let mut n = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let name = field("Name:");
        assert_eq!(
            field("Seccomp:"),
            "2",
            "thread {name} runs without its filter"
        );
        // Jailed: a uid and gid of its own (real, effective, saved and fs
        // alike), from moatd's default range, and no other group.
        for ids in ["Uid:", "Gid:"] {
            let v: Vec<u64> = field(ids)
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!(v.len(), 4, "thread {name} {ids}");
            assert!(
                v.iter().all(|x| *x == v[0] && *x >= 1_500_000_000),
                "thread {name} {ids} {v:?}"
            );
        }
        assert_eq!(field("Groups:"), "", "thread {name}");
        assert_eq!(field("NoNewPrivs:"), "1", "thread {name}");
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(set), "0000000000000000", "thread {name} {set}");
        }
        n += 1;
    }
    assert!(n >= 2, "the VMM has {n} threads");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert_eq!(limit("Max core file size"), "0 0");
    assert_eq!(limit("Max open files"), "4096 4096");
    assert_eq!(limit("Max processes"), "128 128");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    // Its root is its own VM directory, which holds only its files.
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "api.sock",
            "console.log",
            "vm.json",
            "vmm.log",
            "vsock.sock"
        ],
        "the VMM's root {}",
        root.display()
    );
}

/// The cgroups of pod VMs' VMMs and virtiofsds (`moat-vmm-*`, `moat-fs-*`)
/// in the cgroup v2 hierarchy, up to five levels down: none may outlive
/// its pod.
pub fn vmm_cgroups() -> Vec<String> {
    fn walk(dir: &std::path::Path, depth: usize, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("moat-vmm-") || name.starts_with("moat-fs-") {
                found.push(path.display().to_string());
            } else if depth > 0 {
                walk(&path, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(std::path::Path::new("/sys/fs/cgroup"), 5, &mut found);
    found.sort();
    found
}

/// Checks that process `pid` (a VMM, a virtiofsd) runs in cgroup `want`
/// (a path in the cgroup v2 hierarchy) with a memory limit it is within
/// and a task limit, and returns the cgroup's directory.
pub fn assert_cgroup(pid: u32, want: &str) -> std::path::PathBuf {
    let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(line.trim(), format!("0::{want}"), "the cgroup of {pid}");
    let dir = std::path::Path::new("/sys/fs/cgroup").join(want.trim_start_matches('/'));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
            .trim()
            .to_string()
    };
    let max: u64 = read("memory.max")
        .parse()
        .expect("a memory.max, not \"max\"");
    let current: u64 = read("memory.current").parse().unwrap();
    assert!(
        current > 0 && current < max,
        "memory.current {current} against memory.max {max}"
    );
    let pids: u64 = read("pids.max").parse().expect("a pids.max");
    assert!(pids < 100, "pids.max {pids}");
    println!("cgroup {want}: memory.current {current} of memory.max {max}, pids.max {pids}");
    dir
}

impl Moatd {
    /// Starts moatd with the microvm handler as its default; `extra_toml`
    /// is appended to its config (e.g. another runtime handler).
    pub fn start(extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_with(extra_toml, &[])
    }

    /// Starts moatd with moatd's own default handler (the native `runc`).
    pub fn start_with_native_default(extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_full(extra_toml, &[], None)
    }

    /// As [`Moatd::start`], with more CNI plugins chained after the bridge
    /// (e.g. `portmap`).
    pub fn start_with(extra_toml: &str, plugins: &[serde_json::Value]) -> anyhow::Result<Self> {
        Self::start_full(extra_toml, plugins, Some("microvm"))
    }

    fn start_full(
        extra_toml: &str,
        plugins: &[serde_json::Value],
        default_handler: Option<&str>,
    ) -> anyhow::Result<Self> {
        let registry = Registry::start()?;
        let dir = tempfile::Builder::new().prefix("moatd-e2e-").tempdir()?;
        let d = dir.path();
        let n = std::process::id() % 200 + 20;
        let bridge = format!("moatbr{n}");
        std::fs::create_dir_all(d.join("net.d"))?;
        let mut chain = vec![
            serde_json::json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": d.join("ipam"),
                         "ranges": [[{"subnet": format!("10.{n}.0.0/16")}]], "routes": [{"dst": "0.0.0.0/0"}]}}),
        ];
        chain.extend(plugins.iter().cloned());
        let cni = serde_json::json!({"cniVersion": "1.0.0", "name": "moat-e2e", "plugins": chain});
        std::fs::write(d.join("net.d/10-moat.conflist"), cni.to_string())?;
        let socket = d.join("moat.sock");
        let config = format!(
            "{default}socket = {socket:?}\nstate_dir = {state:?}\nrun_dir = {run:?}\nlog_dir = {log:?}\ncni_conf_dir = {net:?}\nagent_timeout_secs = 50\n\
             [runtime_handlers.microvm]\nkernel = {kernel:?}\ninitramfs = {initrd:?}\nvmm = {vmm:?}\ndefault_memory_mib = 256\n{extra_toml}\n",
            default = default_handler
                .map(|h| format!("default_runtime_handler = {h:?}\n"))
                .unwrap_or_default(),
            state = d.join("state"),
            run = d.join("run"),
            log = d.join("log"),
            net = d.join("net.d"),
            kernel = artifacts::vmlinux()?,
            initrd = artifacts::initramfs()?,
            vmm = artifacts::binary("moat-vmm")?,
        );
        std::fs::write(d.join("moatd.toml"), config)?;
        let mut m = Self {
            dir,
            socket,
            registry,
            bridge,
            child: None,
        };
        m.spawn(None)?;
        Ok(m)
    }

    /// Spawns moatd; with `crash_at`, it kills itself at that crash point
    /// (`moatd::crash_point`).
    fn spawn(&mut self, crash_at: Option<&str>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moatd.log"))?;
        let mut cmd = Command::new(artifacts::binary("moatd")?);
        cmd.arg("--config")
            .arg(self.dir.path().join("moatd.toml"))
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(point) = crash_at {
            cmd.env(moatd::crash_point::ENV, point);
        }
        let child = cmd.spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            if Instant::now() > deadline {
                anyhow::bail!("moatd did not create its socket; log:\n{}", self.log());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!("moatd exited ({status}); log:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// moatd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// moatd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moatd.log")).unwrap_or_default()
    }

    /// Kills moatd (SIGKILL when `crash`, else SIGTERM) and starts it again
    /// on the same state.
    pub fn restart(&mut self, crash: bool) -> anyhow::Result<()> {
        self.stop(crash);
        let _ = std::fs::remove_file(&self.socket);
        self.spawn(None)
    }

    /// Restarts moatd so that it kills itself at crash point `point`.
    pub fn restart_crashing_at(&mut self, point: &str) -> anyhow::Result<()> {
        self.stop(false);
        let _ = std::fs::remove_file(&self.socket);
        self.spawn(Some(point))
    }

    /// Waits until moatd has died of SIGKILL at the crash point it was
    /// started with.
    pub fn wait_crashed(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::ExitStatusExt;
        let Some(mut child) = self.child.take() else {
            anyhow::bail!("moatd is not running");
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if status.signal() != Some(libc::SIGKILL) {
                    anyhow::bail!(
                        "moatd ended with {status}, not SIGKILL; log:\n{}",
                        self.log()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                anyhow::bail!("moatd did not reach its crash point; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self, crash: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if crash { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        moatd::cri::client::connect(self.socket.clone()).await
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// An ImageService client.
    pub async fn images(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// moatd's run directory (per-pod VM dirs, netns).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// One request to the control socket of pod `pod_id`'s VMM; its answer.
    pub fn vmm_control(&self, pod_id: &str, request: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let api = self.run_dir().join(&pod_id[..16]).join("api.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&api)
            .unwrap_or_else(|e| panic!("{}: {e}", api.display()));
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// The last lines of each running VM's own log and console, for a
    /// failure's message (a VMM that stopped says why in its log).
    pub fn vm_logs(&self) -> String {
        let tail = |path: &Path, n: usize| {
            let text = std::fs::read(path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = String::new();
        for e in Self::entries(&self.run_dir()) {
            if e == "netns" {
                continue;
            }
            let dir = self.run_dir().join(&e);
            out.push_str(&format!(
                "VM {e}: vmm.log:\n{}\nconsole:\n{}\n",
                tail(&dir.join("vmm.log"), 15),
                tail(&dir.join("console.log"), 15)
            ));
        }
        out
    }

    /// Entries left in a directory (empty if it does not exist).
    pub fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Moatd {
    fn drop(&mut self) {
        self.stop(false);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
