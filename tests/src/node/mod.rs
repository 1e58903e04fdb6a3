//! The test node: a second-level Linux booted by QEMU in software emulation
//! (TCG, with AMD SVM emulated) where the stock KVM module works, so real
//! microVMs boot even on hosts whose own KVM cannot run ordinary guests.
//!
//! The node boots Debian's `linux-image-amd64` kernel with an initramfs made
//! here (busybox-static and the kvm/9p/virtio modules), mounts the host root
//! read-only over 9p, and runs one command chrooted into it as root with
//! working `/dev/kvm`, writable `/tmp`, `/run`, `/var/tmp`,
//! and a writable scratch share mounted at its host path. `/tmp` and `/var/tmp`
//! show the host's files under a writable tmpfs layer (overlayfs). The command's
//! output and exit status come back; the node's console is kept.

//!
//! - this file: the node's configuration and running one command in it;
//! - [`initramfs`]: what the node boots (busybox, modules, `/init`);
//! - [`watch`]: its heartbeat, console and stall reports.

mod initramfs;
#[cfg(test)]
mod tests;
mod watch;

pub use initramfs::NODE_MODULES;
use watch::*;
pub use watch::{panic_line, thread_states};

use moat_rootfs::cpio::Archive;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variables passed from the caller into the node's command.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "CI",
    "TERM",
    "CARGO_TARGET_DIR",
];
/// Prefixes of environment variables passed into the node.
const PASSED_ENV_PREFIXES: &[&str] = &["MOAT_"];

const BEGIN_MARK: &str = "@@moat-node:begin@@";
const END_MARK: &str = "@@moat-node:end@@";

/// Why the node could not run a command.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A prerequisite (QEMU, node kernel, busybox, a module) is missing.
    #[error("test node unavailable: {0}")]
    Unavailable(String),
    /// Setting up or starting the node failed.
    #[error("test node: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The node did not finish within the time limit; it was killed.
    #[error("test node timed out after {secs} s and was killed; processes in the node at that time:\n{processes}\nconsole:\n{console}")]
    Timeout {
        /// The limit.
        secs: u64,
        /// The node's process list taken just before it was killed
        /// (pid, state, wait channel, command line), if it answered.
        processes: String,
        /// Everything the node printed.
        console: String,
    },
    /// The node's own kernel locked up (a CPU stuck for a minute or more,
    /// as its soft-lockup watchdog reports, or its heartbeat stopped): a
    /// fault of the emulated machine, not of the command. The node was
    /// killed.
    #[error(
        "the test node's kernel locked up ({why}) and the node was killed; console:\n{console}"
    )]
    Lockup {
        /// What showed it.
        why: String,
        /// Everything the node printed.
        console: String,
    },
    /// The node's own kernel panicked (in practice a stack overflow in a
    /// nested guest's vCPU thread under the emulator): a fault of the
    /// emulated machine, not of the command.
    #[error("the test node's kernel panicked ({line}); console:\n{console}")]
    Panic {
        /// The console line that reported it.
        line: String,
        /// Everything the node printed.
        console: String,
    },
    /// The node stopped without reporting the command's exit status.
    #[error("test node exited ({qemu_status}) without reporting the command's status; console:\n{console}")]
    NoStatus {
        /// QEMU's exit status.
        qemu_status: String,
        /// Everything the node printed.
        console: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// How to start the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The node's kernel (Debian's vmlinuz).
    pub kernel: PathBuf,
    /// The modules directory matching `kernel` (`/lib/modules/<release>`).
    pub modules_dir: PathBuf,
    /// busybox-static.
    pub busybox: PathBuf,
    /// Node memory in MiB.
    pub memory_mib: u32,
    /// Node vCPUs.
    pub cpus: u32,
    /// QEMU's `-accel` for the node: TCG, with its options
    /// (e.g. `tcg,thread=single`).
    pub accel: String,
    /// QEMU's `-cpu` model for the node (it must emulate SVM).
    pub cpu_model: String,
    /// More QEMU arguments, after the harness's own.
    pub qemu_args: Vec<String>,
    /// More node kernel command-line parameters (e.g. `clocksource=hpet`).
    pub kernel_args: String,
    /// Parameters for the node's `kvm-amd` module (e.g. `nested=1 npt=0`).
    pub kvm_amd_options: String,
    /// Time limit for boot plus command.
    pub timeout: Duration,
    /// How long the node's heartbeat may stay still before the node counts
    /// as locked up and is killed.
    pub heartbeat_silence: Duration,
    /// Copy every console line to stderr as it arrives.
    pub echo_console: bool,
    /// Copy the command's output to stdout as it arrives.
    pub echo_output: bool,
}

/// What a command run in the node produced.
#[derive(Debug, Clone)]
pub struct NodeOutput {
    /// The command's exit status (128+N if killed by signal N).
    pub status: i32,
    /// The command's stdout and stderr, interleaved as printed.
    pub output: String,
    /// The node's whole console, including kernel messages.
    pub console: String,
    /// From QEMU spawn to the command starting.
    pub boot_time: Duration,
    /// From QEMU spawn to QEMU exit.
    pub total_time: Duration,
}

impl NodeOutput {
    /// True if the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Orders kernel release strings like "6.1.0-56-amd64" numerically.
fn release_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

impl NodeConfig {
    /// Finds QEMU, the newest `/boot/vmlinuz-*` with its modules, and
    /// busybox. These override the defaults: `MOAT_NODE_QEMU` (binary),
    /// `MOAT_NODE_QEMU_ARGS` (more arguments, split on spaces),
    /// `MOAT_NODE_KERNEL`, `MOAT_NODE_MEMORY_MIB`, `MOAT_NODE_CPUS`,
    /// `MOAT_NODE_ACCEL` (`-accel`), `MOAT_NODE_CPU` (`-cpu` model),
    /// `MOAT_NODE_KERNEL_ARGS`,
    /// `MOAT_NODE_KVM_AMD` (module parameters), `MOAT_NODE_TIMEOUT_SECS`,
    /// `MOAT_NODE_HEARTBEAT_SECS`.
    pub fn detect() -> Result<Self, NodeError> {
        let qemu = match std::env::var_os("MOAT_NODE_QEMU") {
            Some(q) => PathBuf::from(q),
            None => which("qemu-system-x86_64").ok_or_else(|| {
                NodeError::Unavailable(
                    "qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into(),
                )
            })?,
        };
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                NodeError::Unavailable("busybox not found (apt-get install busybox-static)".into())
            })?;
        let kernel = match std::env::var_os("MOAT_NODE_KERNEL") {
            Some(k) => PathBuf::from(k),
            None => {
                let mut kernels: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
                    .map_err(io_err("reading /boot"))?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let release = name.strip_prefix("vmlinuz-")?.to_string();
                        Path::new("/lib/modules")
                            .join(&release)
                            .is_dir()
                            .then(|| (release_key(&release), e.path()))
                    })
                    .collect();
                kernels.sort();
                kernels.pop().map(|(_, p)| p).ok_or_else(|| {
                    NodeError::Unavailable(
                        "no /boot/vmlinuz-* with modules in /lib/modules (apt-get install linux-image-amd64)".into(),
                    )
                })?
            }
        };
        let release = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .ok_or_else(|| {
                NodeError::Unavailable(format!("cannot tell the release of {}", kernel.display()))
            })?;
        let modules_dir = Path::new("/lib/modules").join(release);
        let env_u64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let env_str = |k: &str| std::env::var(k).unwrap_or_default().trim().to_string();
        Ok(Self {
            qemu,
            kernel: kernel.clone(),
            modules_dir,
            busybox,
            memory_mib: env_u64("MOAT_NODE_MEMORY_MIB").unwrap_or(3072) as u32,
            cpus: env_u64("MOAT_NODE_CPUS").unwrap_or(2).clamp(1, 64) as u32,
            accel: Some(env_str("MOAT_NODE_ACCEL"))
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "tcg".into()),
            cpu_model: Some(env_str("MOAT_NODE_CPU"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "max".into()),
            qemu_args: env_str("MOAT_NODE_QEMU_ARGS")
                .split_whitespace()
                .map(String::from)
                .collect(),
            kernel_args: env_str("MOAT_NODE_KERNEL_ARGS"),
            kvm_amd_options: env_str("MOAT_NODE_KVM_AMD"),
            timeout: Duration::from_secs(env_u64("MOAT_NODE_TIMEOUT_SECS").unwrap_or(600)),
            heartbeat_silence: env_u64("MOAT_NODE_HEARTBEAT_SECS")
                .map(Duration::from_secs)
                .unwrap_or(HEARTBEAT_SILENCE),
            echo_console: false,
            echo_output: false,
        })
    }

    /// Boots the node, runs `script` (POSIX sh) inside with the caller's
    /// working directory, and returns its output and status.
    pub fn run(&self, script: &str) -> Result<NodeOutput, NodeError> {
        let scratch = tempfile::Builder::new()
            .prefix("moat-node-")
            .tempdir()
            .map_err(io_err("creating the scratch directory"))?;
        let sdir = scratch.path();
        let initrd = sdir.join("node-initramfs.cpio");
        std::fs::write(&initrd, self.initramfs()?).map_err(io_err("writing the node initramfs"))?;
        std::fs::write(sdir.join("cmd.sh"), script).map_err(io_err("writing the command"))?;
        let cwd = std::env::current_dir().map_err(io_err("reading the working directory"))?;
        std::fs::write(sdir.join("env.sh"), env_script(&cwd))
            .map_err(io_err("writing the environment"))?;
        let append = format!(
            "console=ttyS0 panic=-1 quiet loglevel=3 moat_scratch={} {}",
            sdir.display(),
            self.kernel_args
        );
        let mut child = Command::new(&self.qemu)
            .args(["-machine", "q35", "-nodefaults", "-no-user-config"])
            .args([
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-accel")
            .arg(&self.accel)
            .arg("-cpu")
            .arg(&self.cpu_model)
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&append)
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=scratch,security_model=none",
                sdir.display()
            ))
            .args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("starting {}", self.qemu.display())))?;
        let started = Instant::now();
        let guard = KillOnDrop(&mut child);
        let state = Arc::new(Mutex::new(ConsoleState::default()));
        let stdout = guard.0.stdout.take();
        let stderr = guard.0.stderr.take();
        let reader = stdout.map(|out| {
            let state = Arc::clone(&state);
            let (echo_console, echo_output) = (self.echo_console, self.echo_output);
            std::thread::spawn(move || {
                read_console(out, &state, started, echo_console, echo_output)
            })
        });
        let err_reader = stderr.map(|mut err| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        let deadline = started + self.timeout;
        let heartbeat = sdir.join("alive");
        let mut beat = Beat::new(started);
        let exit = loop {
            let locked_up = state.lock().map(|s| s.lockup).unwrap_or(false);
            let silent = beat.silent_for(&heartbeat);
            if locked_up || silent >= self.heartbeat_silence {
                let activity = emulator_activity(guard.0.id());
                let console = stop(guard, reader, &state);
                let why = if locked_up {
                    format!("a CPU stuck for {} s or more; {activity}", LOCKUP_SECS)
                } else {
                    format!("no heartbeat for {} s; {activity}", silent.as_secs())
                };
                if let Some(line) = panic_line(&console) {
                    let line = line.trim().to_string();
                    return Err(NodeError::Panic { line, console });
                }
                return Err(NodeError::Lockup { why, console });
            }
            match guard.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let processes = request_process_list(sdir);
                    let console = stop(guard, reader, &state);
                    return Err(NodeError::Timeout {
                        secs: self.timeout.as_secs(),
                        processes,
                        console,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(io_err("waiting for QEMU")(e)),
            }
        };
        let total_time = started.elapsed();
        drop(guard);
        if let Some(r) = reader {
            let _ = r.join();
        }
        let qemu_stderr = err_reader.and_then(|r| r.join().ok()).unwrap_or_default();
        let (output, console, boot_time) = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            (s.output.clone(), s.console.clone(), s.begun_at)
        };
        let status = std::fs::read_to_string(sdir.join("rc"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match status {
            Some(status) => Ok(NodeOutput {
                status,
                output,
                console,
                boot_time: boot_time.unwrap_or(total_time),
                total_time,
            }),
            None => Err(match panic_line(&console) {
                Some(line) => NodeError::Panic {
                    line: line.trim().to_string(),
                    console,
                },
                None => NodeError::NoStatus {
                    qemu_status: format!("{exit}; {}", qemu_stderr.trim()),
                    console,
                },
            }),
        }
    }
}

/// Shell-quotes `s` for POSIX sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn env_script(cwd: &Path) -> String {
    let mut out = String::new();
    for (k, v) in std::env::vars() {
        let passed = PASSED_ENV.contains(&k.as_str())
            || PASSED_ENV_PREFIXES.iter().any(|p| k.starts_with(p));
        if passed && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&format!("export {k}={}\n", sh_quote(&v)));
        }
    }
    // HOME is /tmp in the node: the host's caches the tests read (the
    // Python venv, the cargo registry) are named by their host paths.
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache"));
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cargo"));
        for (k, v) in [
            ("MOAT_PYENV", cache.join("moat/pyenv")),
            ("MOAT_CARGO_HOME", cargo_home),
        ] {
            if std::env::var_os(k).is_none() {
                out.push_str(&format!("export {k}={}\n", sh_quote(&v.to_string_lossy())));
            }
        }
    }
    out.push_str("export MOAT_IN_TEST_NODE=1 HOME=/tmp\n");
    out.push_str(&format!(
        "cd {} || exit 125\n",
        sh_quote(&cwd.to_string_lossy())
    ));
    out
}
