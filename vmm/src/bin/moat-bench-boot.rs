//! moat-bench-boot: boots the same kernel N times with moat-vmm and with
//! QEMU `-machine microvm` and prints a table of spawn → exit for an
//! initramfs whose `/init` powers off at once (the same for all), moat-vmm
//! spawn → agent ready (vsock `CONNECT 1024` answered `OK`) with the agent
//! initramfs, time to vCPU0's first KVM_RUN, and moat-vmm's RSS without
//! guest memory.
//!
//! The spawn → exit boots have no devices in either VMM; the agent-ready
//! boot has moat-vmm's pod devices (vsock and the empty block slots).
//! QEMU runs twice per round: lean (`-nodefaults`, no ACPI, no serial: the
//! closest QEMU gets to moat-vmm's machine) and with the microvm machine's
//! own defaults (ACPI tables, ISA serial, RTC), as QEMU starts when given
//! only `-machine microvm`.
//!
//! Run it where KVM guests boot, e.g. `scripts/bench-boot.sh`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use moat_vmm::builder::BASE_CMDLINE;

#[derive(Parser, Debug)]
#[command(about = "Boot benchmark: moat-vmm vs QEMU microvm")]
struct Args {
    /// Guest kernel (ELF vmlinux).
    #[arg(long, required_unless_present = "table_from")]
    kernel: Option<PathBuf>,
    /// Initramfs whose /init powers off at once (`moat-rootfs
    /// poweroff-initramfs`), booted for spawn → exit.
    #[arg(long, required_unless_present = "table_from")]
    poweroff_initrd: Option<PathBuf>,
    /// Initramfs with moat-agent as /init, booted for spawn → agent ready.
    #[arg(long, required_unless_present = "table_from")]
    agent_initrd: Option<PathBuf>,
    /// Boots per configuration.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// moat-vmm binary (default: next to this binary).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Skip the QEMU runs.
    #[arg(long)]
    skip_qemu: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Scratch directory for sockets.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    /// Per-boot timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Boot nothing: print the table over the `@round` lines of these saved
    /// outputs (rounds from runs cut short and resumed).
    #[arg(long, value_name = "FILE")]
    table_from: Vec<PathBuf>,
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Result<i32, String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s.code().unwrap_or(-1)),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Where a boot's stderr goes (a file, so a chatty child never blocks on a
/// full pipe) and how a failure is described from it.
struct Stderr(Option<PathBuf>);

impl Stderr {
    /// A log file for boot `tag` in `scratch`; null if it cannot be made.
    fn new(scratch: &Path, tag: &str) -> (Self, Stdio) {
        let path = scratch.join(format!("bench-{}-{tag}.stderr", std::process::id()));
        match std::fs::File::create(&path) {
            Ok(f) => (Stderr(Some(path)), Stdio::from(f)),
            Err(_) => (Stderr(None), Stdio::null()),
        }
    }

    /// The last non-empty line the child printed (moat-vmm's reason for a
    /// failed boot, such as "vcpu0: triple fault: ..."), or "".
    fn last_line(&self) -> String {
        let text = self
            .0
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let line = text.lines().rev().find(|l| !l.trim().is_empty());
        line.map(|l| format!(": {}", l.trim())).unwrap_or_default()
    }
}

impl Drop for Stderr {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes its directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn time_exit(
    mut cmd: Command,
    scratch: &Path,
    tag: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let (log, stderr) = Stderr::new(scratch, tag);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let code = wait_exit(&mut child, timeout)?;
    let t = start.elapsed();
    if code != 0 {
        return Err(format!("exit code {code}{}", log.last_line()));
    }
    Ok(t)
}

fn api(sock: &Path, req: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

struct ReadyRun {
    ready: Duration,
    overhead_kib: u64,
    first_run_us: u64,
    exits: serde_json::Value,
}

/// The boot files, present unless only a table is printed.
struct Files {
    kernel: PathBuf,
    poweroff_initrd: PathBuf,
    agent_initrd: PathBuf,
}

/// The uid and gid of a jailed benchmark VMM (moatd's first by default).
const BENCH_JAIL_ID: u32 = 1_500_000_000;

/// Spawn → agent ready for one VMM, jailed and filtered as moatd starts it
/// or without one or both (what each costs); spawn includes what moatd
/// does before the exec (opening the files the VMM inherits, writing its
/// config, the jail's steps).
fn time_ready(
    a: &Args,
    f: &Files,
    vmm: &Path,
    i: &str,
    (jailed, filtered): (bool, bool),
) -> Result<ReadyRun, String> {
    // The VM's own directory, its working directory and (jailed) its root.
    let dir = a.scratch.join(format!("bench-{}-{i}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _remove = RemoveDir(dir.clone());
    if jailed {
        std::os::unix::fs::chown(&dir, Some(BENCH_JAIL_ID), Some(BENCH_JAIL_ID))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let (uds, api_sock) = (dir.join("vsock.sock"), dir.join("api.sock"));
    let (log, stderr) = Stderr::new(&a.scratch, &format!("ready-{i}"));
    let start = Instant::now();
    let mut child = spawn_as_moatd(a, f, vmm, &dir, (jailed, filtered), stderr)?;
    let deadline = start + Duration::from_secs(a.timeout_secs);
    let ready = loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("agent not ready in time".into());
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("moat-vmm exited early: {s}{}", log.last_line()));
        }
        if let Ok(mut s) = UnixStream::connect(&uds) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(b"CONNECT 1024\n").is_ok() {
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("OK ") {
                    break start.elapsed();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let counters = api(&api_sock, r#"{"op":"counters"}"#).unwrap_or_default();
    let memory = &counters["result"]["memory"];
    let (total, guest) = (
        memory["total_kib"].as_u64().unwrap_or(0),
        memory["guest_kib"].as_u64().unwrap_or(0),
    );
    if total == 0 {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "no memory counters from the control API: {counters}"
        ));
    }
    let exits = counters["result"]["exits"].clone();
    let first_run_us = exits["first_run_us"].as_u64().unwrap_or(0);
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = wait_exit(&mut child, Duration::from_secs(10));
    Ok(ReadyRun {
        ready,
        overhead_kib: total.saturating_sub(guest),
        first_run_us,
        exits,
    })
}

/// Starts `vmm` as moatd does: its config written to `dir`, `/dev/kvm`, the
/// kernel and the initramfs opened here and inherited, and (jailed) started
/// unprivileged through [`moat_vmm::jailer`] (moatd also joins a cgroup and
/// a network namespace, which this benchmark leaves out).
fn spawn_as_moatd(
    a: &Args,
    f: &Files,
    vmm: &Path,
    dir: &Path,
    (jailed, filtered): (bool, bool),
    stderr: Stdio,
) -> Result<std::process::Child, String> {
    use moat_vmm::config::{InheritedFds, JailConfig, VmConfig, VsockConfig, DEFAULT_CID};
    use std::os::unix::process::CommandExt;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let (kernel, initrd) = (open(&f.kernel)?, open(&f.agent_initrd)?);
    let mut cfg = VmConfig::new(f.kernel.clone());
    cfg.initrd = Some(f.agent_initrd.clone());
    cfg.memory_mib = a.memory_mib;
    cfg.serial = "off".into();
    cfg.vsock = Some(VsockConfig {
        uds: "vsock.sock".into(),
        cid: DEFAULT_CID,
    });
    cfg.api_sock = Some("api.sock".into());
    cfg.seccomp = filtered;
    cfg.jail = jailed.then(|| JailConfig {
        uid: BENCH_JAIL_ID,
        gid: BENCH_JAIL_ID,
        root: dir.to_path_buf(),
    });
    cfg.fds = InheritedFds {
        kvm: Some(4),
        kernel: Some(5),
        initrd: Some(6),
        fs_socket: None,
    };
    let json = serde_json::to_vec(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("vm.json"), json).map_err(|e| format!("vm.json: {e}"))?;
    let mut setup = moat_vmm::jailer::ChildSetup::new(
        vmm,
        &["--config".as_ref(), "vm.json".as_ref()],
        dir,
        &[],
    )
    .map_err(|e| format!("{}: {e}", vmm.display()))?;
    setup.fds = vec![(kvm.into(), 4), (kernel.into(), 5), (initrd.into(), 6)];
    setup.jail = jailed.then_some((BENCH_JAIL_ID, BENCH_JAIL_ID));
    setup.rlimits = vec![(libc::RLIMIT_CORE, 0)];
    let mut cmd = Command::new(vmm);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the setup makes only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || Err(setup.exec()));
    }
    cmd.spawn().map_err(|e| format!("spawn: {e}"))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn row(name: &str, v: &[f64], unit: &str) {
    println!(
        "| {name:<40} | {:>9.1} | {:>9.1} | {unit:<4} | {:>3} |",
        percentile(v, 0.5),
        percentile(v, 0.9),
        v.len()
    );
}

/// The QEMU command for one spawn → exit boot. Lean: no default devices,
/// no ACPI, no serial. Defaults: the microvm machine as QEMU sets it up
/// (ACPI tables, ISA serial as the console, RTC), output discarded.
/// QEMU's microvm machine has no i8042: its guest resets by triple fault
/// (`reboot=t`), which `-no-reboot` turns into exit.
fn qemu_command(a: &Args, f: &Files, lean: bool) -> Command {
    let mut q = Command::new(&a.qemu);
    // moat-vmm does not offer the TSC-deadline timer; QEMU's `host` CPU
    // would, sparing its guest the APIC timer calibration ours does.
    q.args(["-enable-kvm", "-cpu", "host,tsc-deadline=off", "-smp", "1"])
        .args(["-m", &a.memory_mib.to_string()])
        .args(["-no-user-config", "-nographic", "-no-reboot"]);
    if lean {
        q.args([
            "-machine",
            "microvm,acpi=off",
            "-nodefaults",
            "-serial",
            "none",
        ]);
    } else {
        q.args(["-machine", "microvm"]);
    }
    q.arg("-kernel")
        .arg(&f.kernel)
        .arg("-initrd")
        .arg(&f.poweroff_initrd)
        .arg("-append")
        .arg(format!("{BASE_CMDLINE} quiet").replace("reboot=k", "reboot=t"));
    q
}

/// One round's measurements (milliseconds, RSS in MiB); a boot that
/// failed is `None`. Printed as a `@round` JSON line as soon as the round
/// ends, so a run cut short still leaves the rounds it finished.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Round {
    vmm_exit: Option<f64>,
    qemu_lean: Option<f64>,
    qemu_default: Option<f64>,
    ready: Option<f64>,
    /// The same boot with neither jail nor seccomp filters (what they cost).
    #[serde(default)]
    ready_unfiltered: Option<f64>,
    /// The same boot jailed, without seccomp filters (what the jail costs).
    #[serde(default)]
    ready_jail_only: Option<f64>,
    first_run: Option<f64>,
    rss_mib: Option<f64>,
    exits: Option<serde_json::Value>,
}

const ROUND_TAG: &str = "@round ";

fn run_round(a: &Args, f: &Files, vmm: &Path, i: usize) -> Round {
    let timeout = Duration::from_secs(a.timeout_secs);
    let ms = |t: Duration| t.as_secs_f64() * 1000.0;
    let mut r = Round::default();
    let mut c = Command::new(vmm);
    c.args([
        "--kernel".as_ref(),
        f.kernel.as_os_str(),
        "--initrd".as_ref(),
        f.poweroff_initrd.as_os_str(),
    ])
    // No devices, like QEMU's lean run: both guests do the same work.
    .args(["--blk-slots", "0"])
    .args(["--memory-mib", &a.memory_mib.to_string(), "--serial", "off"]);
    match time_exit(c, &a.scratch, &format!("exit-{i}"), timeout) {
        Ok(t) => r.vmm_exit = Some(ms(t)),
        Err(e) => eprintln!("moat-vmm run {i}: {e}"),
    }
    // The three variants in a different order each round: the first boot
    // after the exit run is faster in the emulated node, whichever it is.
    let mut variants = [(true, true), (true, false), (false, false)];
    variants.rotate_left(i % 3);
    for (jailed, filtered) in variants {
        let tag = match (jailed, filtered) {
            (true, true) => i.to_string(),
            (true, false) => format!("{i}-jail-only"),
            _ => format!("{i}-unfiltered"),
        };
        match time_ready(a, f, vmm, &tag, (jailed, filtered)) {
            Ok(x) if filtered => {
                r.ready = Some(ms(x.ready));
                r.rss_mib = Some(x.overhead_kib as f64 / 1024.0);
                r.first_run = Some(x.first_run_us as f64 / 1000.0);
                r.exits = Some(x.exits);
            }
            Ok(x) if jailed => r.ready_jail_only = Some(ms(x.ready)),
            Ok(x) => r.ready_unfiltered = Some(ms(x.ready)),
            Err(e) => {
                eprintln!("moat-vmm ready run {tag} (jail {jailed}, seccomp {filtered}): {e}")
            }
        }
    }
    if !a.skip_qemu {
        match time_exit(
            qemu_command(a, f, true),
            &a.scratch,
            &format!("lean-{i}"),
            timeout,
        ) {
            Ok(t) => r.qemu_lean = Some(ms(t)),
            Err(e) => eprintln!("qemu (lean) run {i}: {e}"),
        }
        match time_exit(
            qemu_command(a, f, false),
            &a.scratch,
            &format!("qemu-{i}"),
            timeout,
        ) {
            Ok(t) => r.qemu_default = Some(ms(t)),
            Err(e) => eprintln!("qemu (defaults) run {i}: {e}"),
        }
    }
    r
}

/// Prints the table over `rounds`; false if moat-vmm never booted.
fn print_table(rounds: &[Round], memory_mib: u64) -> bool {
    let col = |f: fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).collect::<Vec<f64>>();
    let vmm_exit = col(|r| r.vmm_exit);
    let qemu_lean = col(|r| r.qemu_lean);
    let qemu_default = col(|r| r.qemu_default);
    let ready = col(|r| r.ready);
    println!(
        "moat boot benchmark: 1 vCPU, {memory_mib} MiB, same kernel, {} rounds",
        rounds.len()
    );
    println!(
        "| {:<40} | {:>9} | {:>9} | unit | n   |",
        "metric", "median", "p90"
    );
    println!("|{:-<42}|{:->11}|{:->11}|------|-----|", "", "", "");
    row("moat-vmm spawn -> exit (poweroff)", &vmm_exit, "ms");
    if !qemu_lean.is_empty() || !qemu_default.is_empty() {
        row("qemu microvm lean spawn -> exit", &qemu_lean, "ms");
        row("qemu microvm defaults spawn -> exit", &qemu_default, "ms");
    }
    row("moat-vmm spawn -> agent ready (vsock OK)", &ready, "ms");
    let unfiltered = col(|r| r.ready_unfiltered);
    if !unfiltered.is_empty() {
        row("  the same, no jail, no seccomp filters", &unfiltered, "ms");
    }
    let jail_only = col(|r| r.ready_jail_only);
    if !jail_only.is_empty() {
        row("  the same, jail, no seccomp filters", &jail_only, "ms");
    }
    row(
        "moat-vmm spawn -> first KVM_RUN",
        &col(|r| r.first_run),
        "ms",
    );
    row(
        "moat-vmm RSS without guest memory",
        &col(|r| r.rss_mib),
        "MiB",
    );
    for (name, q) in [("lean", &qemu_lean), ("defaults", &qemu_default)] {
        if !vmm_exit.is_empty() && !q.is_empty() {
            println!(
                "moat-vmm / qemu microvm {name}, spawn->exit (median): {:.2}x",
                percentile(&vmm_exit, 0.5) / percentile(q, 0.5)
            );
        }
    }
    if let Some(exits) = rounds.iter().rev().find_map(|r| r.exits.as_ref()) {
        println!("moat-vmm exits until agent ready (last run): {exits}");
    }
    !vmm_exit.is_empty() && !ready.is_empty()
}

/// The `@round` lines of a saved benchmark output.
fn read_rounds(path: &Path) -> Result<Vec<Round>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .filter_map(|l| l.find(ROUND_TAG).map(|at| &l[at + ROUND_TAG.len()..]))
        .filter_map(|j| serde_json::from_str(j.trim()).ok())
        .collect())
}

fn main() {
    let a = Args::parse();
    if !a.table_from.is_empty() {
        let mut rounds = Vec::new();
        for p in &a.table_from {
            match read_rounds(p) {
                Ok(r) => rounds.extend(r),
                Err(e) => {
                    eprintln!("moat-bench-boot: {e}");
                    std::process::exit(2);
                }
            }
        }
        let ok = print_table(&rounds, a.memory_mib);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let vmm = a.vmm.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("moat-vmm")))
            .unwrap_or_else(|| PathBuf::from("moat-vmm"))
    });
    let (Some(kernel), Some(poweroff_initrd), Some(agent_initrd)) = (
        a.kernel.clone(),
        a.poweroff_initrd.clone(),
        a.agent_initrd.clone(),
    ) else {
        eprintln!("moat-bench-boot: --kernel, --poweroff-initrd and --agent-initrd are required");
        std::process::exit(2);
    };
    let files = Files {
        kernel,
        poweroff_initrd,
        agent_initrd,
    };
    let mut rounds = Vec::new();
    for i in 0..a.runs {
        let r = run_round(&a, &files, &vmm, i);
        match serde_json::to_string(&r) {
            Ok(j) => println!("{ROUND_TAG}{j}"),
            Err(e) => eprintln!("round {i}: {e}"),
        }
        rounds.push(r);
        eprintln!("run {}/{} done", i + 1, a.runs);
    }
    if !print_table(&rounds, a.memory_mib) {
        std::process::exit(1);
    }
}
