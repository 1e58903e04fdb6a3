//! Shared helpers of the agent integration tests: a busybox rootfs, an
//! agent client over a Unix socket, OCI spec building, output collection;
//! [`scenario`] is the scenario both tests drive.

#![allow(dead_code)]
// Test helpers: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::block_device::Id;
use moat_proto::agent::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod scenario;
pub use scenario::{drive, Images};

/// Runs a shell command, panicking with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox-static rootfs in `dir` (every applet linked into /bin).
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "mnt", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    sh(&format!(
        "chroot {} /bin/busybox --install -s /bin",
        dir.display()
    ));
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// Connects to an agent serving on a Unix socket, waiting for it to appear.
pub async fn connect_unix(path: PathBuf) -> AgentClient<Channel> {
    for _ in 0..200 {
        if path.exists() {
            let p = path.clone();
            let ch = Endpoint::try_from("http://agent.local")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let p = p.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(p).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await;
            if let Ok(ch) = ch {
                return AgentClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent socket {} never answered", path.display());
}

/// A container spec: busybox process `args`, its own PID/UTS/mount
/// namespaces, docker-like default capabilities, /proc, /dev, /dev/pts.
pub fn spec(args: &[&str], extra_linux: serde_json::Value, extra: serde_json::Value) -> Vec<u8> {
    let caps = serde_json::json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    let mut s = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {
            "args": args,
            "env": ["PATH=/bin", "HOME=/root"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"}, {"type": "ipc"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    merge(&mut s["linux"], extra_linux);
    merge(&mut s, extra);
    serde_json::to_vec(&s).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// Reads a process's stream to EOF.
pub async fn read_all(
    c: &mut AgentClient<Channel>,
    id: &str,
    exec: &str,
    stream: OutputStream,
) -> Vec<u8> {
    let mut s = c
        .read_output(ReadOutputRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            stream: stream as i32,
        })
        .await
        .expect("read_output")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.expect("stream") {
        out.extend_from_slice(&chunk.data);
    }
    out
}

/// Creates a container from `spec` on `rootfs`.
pub async fn create(
    c: &mut AgentClient<Channel>,
    id: &str,
    spec: Vec<u8>,
    rootfs: block_device::Id,
    stdin: bool,
) -> Result<u32, tonic::Status> {
    c.create_container(CreateContainerRequest {
        container_id: id.into(),
        oci_spec: spec,
        rootfs: Some(BlockDevice {
            id: Some(rootfs),
            fstype: String::new(),
            timeout_ms: 2000,
        }),
        scratch_size_bytes: 64 << 20,
        stdin,
        devices: Vec::new(),
    })
    .await
    .map(|r| r.into_inner().pid)
}

/// Waits for a process.
pub async fn wait(c: &mut AgentClient<Channel>, id: &str, exec: &str) -> WaitProcessResponse {
    c.wait_process(WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
    })
    .await
    .expect("wait")
    .into_inner()
}
