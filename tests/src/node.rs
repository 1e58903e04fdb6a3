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

use moat_rootfs::cpio::Archive;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kernel modules the node loads, in dependency order.
pub const NODE_MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "ccp",
    "kvm-amd",
    "netfs",
    "fscache",
    "9pnet",
    "9p",
    "virtio_ring",
    "virtio",
    "9pnet_virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "tun",
    "veth",
    "overlay",
    "llc",
    "stp",
    "bridge",
    "sch_ingress",
    "cls_u32",
    "act_mirred",
];

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

/// The first console line that reports a kernel panic of the node (or the
/// stack overflow that precedes one).
pub fn panic_line(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        l.contains("Kernel panic")
            || l.contains("stack guard page was hit")
            || l.contains("corrupted stack end detected")
    })
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

    /// Builds the node's initramfs: busybox, the modules, and `/init`.
    pub fn initramfs(&self) -> Result<Vec<u8>, NodeError> {
        let mut a = Archive::new();
        let add = |a: &mut Archive, path: &str, mode: u32, data: Vec<u8>| {
            a.file(path, mode, data)
                .map(|_| ())
                .map_err(|e| NodeError::Unavailable(format!("initramfs entry {path}: {e}")))
        };
        let busybox = std::fs::read(&self.busybox)
            .map_err(io_err(format!("reading {}", self.busybox.display())))?;
        add(&mut a, "bin/busybox", 0o755, busybox)?;
        let builtin =
            std::fs::read_to_string(self.modules_dir.join("modules.builtin")).unwrap_or_default();
        let mut order = Vec::new();
        for m in NODE_MODULES {
            let Some(path) = find_module(&self.modules_dir, m, &builtin)? else {
                continue;
            };
            add(
                &mut a,
                &format!("modules/{m}.ko"),
                0o644,
                module_bytes(&path)?,
            )?;
            order.push(*m);
        }
        add(
            &mut a,
            "modules/kvm-amd.options",
            0o644,
            self.kvm_amd_options.clone().into_bytes(),
        )?;
        add(
            &mut a,
            "modules/order",
            0o644,
            order.join("\n").into_bytes(),
        )?;
        add(&mut a, "init", 0o755, NODE_INIT.as_bytes().to_vec())?;
        for d in ["dev", "proc", "sys", "host"] {
            a.dir(d, 0o755)
                .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        }
        a.char_dev("dev/console", 0o600, 5, 1)
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        Ok(a.to_bytes())
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

/// How long the node's heartbeat (a counter its init writes to the scratch
/// share every few seconds, `alive`) may stay still before the node counts
/// as dead, unless the config says otherwise.
/// A live node under full load still beats: the writer runs at the highest
/// priority. Boot counts as silence, and takes a few seconds. 300 s: with
/// 120 s the 20-pod test's node counted as dead in 8 of 8 attempts in one
/// session, while earlier boot-benchmark nodes given 500 s never stalled.
const HEARTBEAT_SILENCE: Duration = Duration::from_secs(300);

/// Tracks when the node's heartbeat file last changed.
struct Beat {
    last_seen: Option<std::time::SystemTime>,
    changed_at: Instant,
    checked_at: Instant,
}

impl Beat {
    fn new(started: Instant) -> Self {
        Beat {
            last_seen: None,
            changed_at: started,
            checked_at: started,
        }
    }

    /// How long the heartbeat at `path` has not changed (checked at most
    /// once a second).
    fn silent_for(&mut self, path: &Path) -> Duration {
        let now = Instant::now();
        if now.duration_since(self.checked_at) >= Duration::from_secs(1) {
            self.checked_at = now;
            let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if stamp.is_some() && stamp != self.last_seen {
                self.last_seen = stamp;
                self.changed_at = now;
            }
        }
        now.duration_since(self.changed_at)
    }
}

/// What the emulator itself is doing while its node is silent: CPU use
/// over one second and its threads' states, which tells a guest spinning
/// in emulated code (busy vCPU threads) from a stalled emulator (all
/// threads asleep).
/// Each thread of `pid` as `name:state:wait channel`, sorted: a thread
/// spinning in a guest shows `R`, a halted vCPU `S` in `kvm_vcpu_block`.
pub fn thread_states(pid: u32) -> Vec<String> {
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let path = t.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
            threads.push(format!("{}:{state}:{}", comm.trim(), wchan.trim()));
        }
    }
    threads.sort();
    threads
}

fn emulator_activity(pid: u32) -> String {
    let cpu_ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_ticks();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = match (before, after) {
        (Some(b), Some(a)) => format!("{}% CPU", a.saturating_sub(b) * 100 / hz),
        _ => "CPU unknown".into(),
    };
    let threads = thread_states(pid);
    format!(
        "QEMU used {cpu} over 1 s; its threads: {}",
        threads.join(" ")
    )
}

/// Asks the node's init for its process list (through the scratch share)
/// and waits briefly for the answer; what a hung command was doing.
fn request_process_list(sdir: &Path) -> String {
    let answer = sdir.join("processes.txt");
    if std::fs::write(sdir.join("dump"), b"").is_err() {
        return "(could not ask the node)".into();
    }
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(&answer) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    "(the node did not answer)".into()
}

/// Kills the node early and returns everything it printed (once the console
/// reader has seen QEMU's output end).
fn stop(
    guard: KillOnDrop<'_>,
    reader: Option<std::thread::JoinHandle<()>>,
    state: &Mutex<ConsoleState>,
) -> String {
    drop(guard);
    if let Some(r) = reader {
        let _ = r.join();
    }
    take_console(state)
}

/// Kills and reaps QEMU if the harness returns early.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct ConsoleState {
    console: String,
    output: String,
    in_command: bool,
    begun_at: Option<Duration>,
    lockup: bool,
}

/// Seconds a CPU of the node has been stuck if `line` is the node kernel's
/// soft-lockup report (`watchdog: BUG: soft lockup - CPU#1 stuck for 52s!`).
fn soft_lockup_secs(line: &str) -> Option<u64> {
    let rest = line.split("watchdog: BUG: soft lockup").nth(1)?;
    let after = rest.split("stuck for ").nth(1)?;
    after.split('s').next()?.trim().parse().ok()
}

/// A CPU stuck this long means the node is gone (a short report can come
/// from a starved emulator and heal).
const LOCKUP_SECS: u64 = 60;

fn take_console(state: &Mutex<ConsoleState>) -> String {
    state.lock().map(|s| s.console.clone()).unwrap_or_default()
}

fn read_console(
    out: impl Read,
    state: &Mutex<ConsoleState>,
    started: Instant,
    echo_console: bool,
    echo_output: bool,
) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
        if echo_console {
            eprintln!("[node] {line}");
        }
        let Ok(mut s) = state.lock() else { break };
        if soft_lockup_secs(&line).is_some_and(|secs| secs >= LOCKUP_SECS) {
            s.lockup = true;
        }
        s.console.push_str(&line);
        s.console.push('\n');
        if line.contains(BEGIN_MARK) {
            s.in_command = true;
            s.begun_at = Some(started.elapsed());
        } else if line.contains(END_MARK) {
            s.in_command = false;
        } else if s.in_command {
            s.output.push_str(&line);
            s.output.push('\n');
            if echo_output && !echo_console {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{line}");
                let _ = o.flush();
            }
        }
    }
}

/// Where module `name` of the kernel whose modules are in `dir` is: `None`
/// when that kernel has it built in (`builtin` is its `modules.builtin`), as
/// newer kernels have the virtio core.
fn find_module(dir: &Path, name: &str, builtin: &str) -> Result<Option<PathBuf>, NodeError> {
    let wanted = [format!("{name}.ko"), format!("{name}.ko.xz")];
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if wanted
                .iter()
                .any(|w| e.file_name().to_str() == Some(w.as_str()))
            {
                return Ok(Some(p));
            }
        }
    }
    let is_builtin = builtin
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .any(|f| f == wanted[0]);
    // fscache became part of netfs in Linux 6.4: no module of its own.
    if is_builtin || name == "fscache" {
        return Ok(None);
    }
    Err(NodeError::Unavailable(format!(
        "module {} not found under {} and not built in",
        wanted[0],
        dir.display()
    )))
}

/// A module's contents, decompressed with Debian's `xz` when the kernel
/// ships them compressed (busybox's insmod takes plain `.ko` files only).
fn module_bytes(path: &Path) -> Result<Vec<u8>, NodeError> {
    if path.extension().and_then(|e| e.to_str()) != Some("xz") {
        return std::fs::read(path).map_err(io_err(format!("reading {}", path.display())));
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(io_err(format!("running xz -dc {}", path.display())))?;
    if !out.status.success() {
        return Err(NodeError::Unavailable(format!(
            "xz -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
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

/// The node's `/init` (busybox sh).
const NODE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "moat-node: $*" > /dev/console; }
for m in $(cat /modules/order); do
  insmod /modules/$m.ko $(cat /modules/$m.options 2>/dev/null) 2>/dev/null || say "insmod $m failed"
done
# Modules the kernel asks for later (the netfilter tables, matches and
# targets iptables needs for the portmap CNI plugin) come from the host's
# /lib/modules, through its modprobe.
printf '#!/bin/busybox sh\nexec chroot /host /sbin/modprobe "$@"\n' > /sbin/modprobe-host
chmod 755 /sbin/modprobe-host
echo /sbin/modprobe-host > /proc/sys/kernel/modprobe
scratch=$(sed -n 's/.*moat_scratch=\([^ ]*\).*/\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host || say "mounting the host root failed"
for d in proc sys dev tmp run var/tmp; do [ -d /host/$d ] || say "missing /host/$d"; done
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# /tmp and /var/tmp: the host's files stay visible (a checkout may live there)
# under a writable tmpfs layer.
mkdir -p /overlay && mount -t tmpfs -o mode=0755 tmpfs /overlay
for d in tmp var/tmp; do
  u=/overlay/$(echo $d | tr / _)
  mkdir -p $u/upper $u/work && chmod 1777 $u/upper
  mount -t overlay overlay -o lowerdir=/host/$d,upperdir=$u/upper,workdir=$u/work /host/$d \
    || { say "overlay on /$d failed, using an empty tmpfs"; mount -t tmpfs -o mode=1777 tmpfs /host/$d; }
done
mount -t tmpfs -o mode=0755 tmpfs /host/run
mkdir -p /host/run/lock
mkdir -p /host$scratch
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 scratch /host$scratch || say "mounting the scratch share failed"
ip link set lo up 2>/dev/null
[ -e /dev/kvm ] || say "/dev/kvm is missing"
# Heartbeat for the harness (a node whose emulated CPUs stopped goes
# silent), and the process list when the harness asks for it.
beat() {
  n=0
  while :; do
    sleep 5
    n=$((n + 1))
    echo $n > /host$scratch/alive
    if [ -e /host$scratch/dump ]; then
      rm -f /host$scratch/dump
      { cat /proc/loadavg; grep -E 'MemTotal|MemAvailable' /proc/meminfo
        for d in /proc/[0-9]*; do
          p=${d#/proc/}
          st=$(cut -d' ' -f3 $d/stat 2>/dev/null)
          echo "$p $st $(cat $d/wchan 2>/dev/null) $(tr '\0' ' ' < $d/cmdline 2>/dev/null | cut -c1-200)"
          # Threads of multi-threaded processes (a VMM's vCPUs: R spins in the guest).
          set -- $d/task/*
          [ $# -gt 1 ] && for t in "$@"; do
            echo "  ${t##*/} $(cut -d' ' -f3 $t/stat 2>/dev/null) $(cat $t/wchan 2>/dev/null) $(cat $t/comm 2>/dev/null)"
          done
        done; } > /host$scratch/processes.tmp 2>&1
      mv /host$scratch/processes.tmp /host$scratch/processes.txt
    fi
  done
}
beat < /dev/null > /dev/null 2>&1 &
echo $! > /host$scratch/beat.pid
renice -n -20 -p $! > /dev/null 2>&1
echo "@@moat-node:begin@@" > /dev/console
chroot /host /bin/sh -c ". $scratch/env.sh && exec /bin/sh $scratch/cmd.sh" < /dev/null > /dev/console 2>&1
rc=$?
echo "$rc" > /host$scratch/rc
sync
echo "@@moat-node:end@@ rc=$rc" > /dev/console
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_lockup_reports_are_recognised() {
        assert_eq!(
            soft_lockup_secs(
                "[   96.883080] watchdog: BUG: soft lockup - CPU#1 stuck for 52s! [kthreadd:2]"
            ),
            Some(52)
        );
        assert_eq!(
            soft_lockup_secs("[    1.0] random line stuck for 99s!"),
            None
        );
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn finds_plain_compressed_and_builtin_modules() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("kernel/drivers/x");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("plain.ko"), b"ELF").unwrap();
        let packed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf ELF2 | xz > {}/packed.ko.xz", d.display()))
            .status()
            .unwrap();
        assert!(packed.success());
        let builtin = "kernel/drivers/virtio/virtio.ko\n";
        let plain = find_module(t.path(), "plain", builtin).unwrap().unwrap();
        assert_eq!(module_bytes(&plain).unwrap(), b"ELF");
        let xz = find_module(t.path(), "packed", builtin).unwrap().unwrap();
        assert_eq!(module_bytes(&xz).unwrap(), b"ELF2");
        assert!(find_module(t.path(), "virtio", builtin).unwrap().is_none());
        assert!(find_module(t.path(), "nope", builtin).is_err());
    }

    #[test]
    fn orders_kernel_releases() {
        assert!(release_key("6.1.0-56-amd64") > release_key("6.1.0-9-amd64"));
    }

    #[test]
    fn console_splits_command_output() {
        let state = Mutex::new(ConsoleState::default());
        let text =
            "boot\r\n@@moat-node:begin@@\r\nhello\r\nworld\r\n@@moat-node:end@@ rc=0\r\nbye\r\n";
        read_console(text.as_bytes(), &state, Instant::now(), false, false);
        let s = state.lock().unwrap();
        assert_eq!(s.output, "hello\nworld\n");
        assert!(s.console.starts_with("boot\n"));
        assert!(s.begun_at.is_some());
    }
}
