//! moat-bench-boot: boots the same kernel and initramfs N times with
//! moat-vmm and with QEMU `-machine microvm` and prints a table of
//! spawn → exit (guest powers off at once via `moat.test=poweroff`),
//! moat-vmm spawn → agent ready (vsock `CONNECT 1024` answered `OK`),
//! time to vCPU0's first KVM_RUN, and moat-vmm's RSS without guest memory.
//!
//! Run it where KVM guests boot, e.g.
//! `moat-node run -- target/release/moat-bench-boot --kernel build/vmlinux --initrd build/initramfs.cpio`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Boot benchmark: moat-vmm vs QEMU microvm")]
struct Args {
    /// Guest kernel (ELF vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs with moat-agent as /init.
    #[arg(long)]
    initrd: PathBuf,
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
}

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodules i8042.noaux i8042.nomux i8042.dumbkbd 8250.nr_uarts=1 quiet";

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

fn time_exit(mut cmd: Command, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let code = wait_exit(&mut child, timeout)?;
    let t = start.elapsed();
    if code != 0 {
        return Err(format!("exit code {code}"));
    }
    Ok(t)
}

/// RSS of `pid` in KiB: (total, guest memory mapping).
fn rss_kib(pid: u32, guest_bytes: u64) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest, mut cur_is_guest) = (0u64, 0u64, false);
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                cur_is_guest = b - a == guest_bytes;
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kib;
            if cur_is_guest {
                guest += kib;
            }
        }
    }
    Some((total, guest))
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

fn time_ready(a: &Args, vmm: &Path, i: usize) -> Result<ReadyRun, String> {
    let uds = a
        .scratch
        .join(format!("bench-{}-{i}.vsock", std::process::id()));
    let api_sock = a
        .scratch
        .join(format!("bench-{}-{i}.api", std::process::id()));
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .args([
            "--kernel".as_ref(),
            a.kernel.as_os_str(),
            "--initrd".as_ref(),
            a.initrd.as_os_str(),
        ])
        .args(["--memory-mib", &a.memory_mib.to_string(), "--serial", "off"])
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--api-sock")
        .arg(&api_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let deadline = start + Duration::from_secs(a.timeout_secs);
    let ready = loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("agent not ready in time".into());
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("moat-vmm exited early: {s}"));
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
    let (total, guest) = rss_kib(child.id(), a.memory_mib << 20).unwrap_or((0, 0));
    let counters = api(&api_sock, r#"{"op":"counters"}"#).unwrap_or_default();
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

fn main() {
    let a = Args::parse();
    let vmm = a.vmm.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("moat-vmm")))
            .unwrap_or_else(|| PathBuf::from("moat-vmm"))
    });
    let timeout = Duration::from_secs(a.timeout_secs);
    let (mut vmm_exit, mut qemu_exit, mut ready, mut rss, mut first) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut last_exits = serde_json::Value::Null;
    for i in 0..a.runs {
        let mut c = Command::new(&vmm);
        c.args([
            "--kernel".as_ref(),
            a.kernel.as_os_str(),
            "--initrd".as_ref(),
            a.initrd.as_os_str(),
        ])
        .args(["--memory-mib", &a.memory_mib.to_string(), "--serial", "off"])
        .args(["--cmdline-extra", "moat.test=poweroff"]);
        match time_exit(c, timeout) {
            Ok(t) => vmm_exit.push(t.as_secs_f64() * 1000.0),
            Err(e) => eprintln!("moat-vmm run {i}: {e}"),
        }
        match time_ready(&a, &vmm, i) {
            Ok(r) => {
                ready.push(r.ready.as_secs_f64() * 1000.0);
                rss.push(r.overhead_kib as f64 / 1024.0);
                first.push(r.first_run_us as f64 / 1000.0);
                last_exits = r.exits;
            }
            Err(e) => eprintln!("moat-vmm ready run {i}: {e}"),
        }
        if !a.skip_qemu {
            let mut q = Command::new(&a.qemu);
            q.args([
                "-machine",
                "microvm,acpi=off",
                "-enable-kvm",
                "-cpu",
                "host",
                "-smp",
                "1",
            ])
            .args(["-m", &a.memory_mib.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "none",
            ])
            .arg("-kernel")
            .arg(&a.kernel)
            .arg("-initrd")
            .arg(&a.initrd)
            // QEMU's microvm machine has no i8042: its guest resets by
            // triple fault (`reboot=t`), which `-no-reboot` turns into exit.
            .args([
                "-append",
                &format!(
                    "{} moat.test=poweroff",
                    CMDLINE.replace("reboot=k", "reboot=t")
                ),
            ]);
            match time_exit(q, timeout) {
                Ok(t) => qemu_exit.push(t.as_secs_f64() * 1000.0),
                Err(e) => eprintln!("qemu run {i}: {e}"),
            }
        }
        eprintln!("run {}/{} done", i + 1, a.runs);
    }
    println!(
        "moat boot benchmark: 1 vCPU, {} MiB, same kernel + initramfs, {} runs",
        a.memory_mib, a.runs
    );
    println!(
        "| {:<40} | {:>9} | {:>9} | unit | n   |",
        "metric", "median", "p90"
    );
    println!("|{:-<42}|{:->11}|{:->11}|------|-----|", "", "", "");
    row("moat-vmm spawn -> exit (poweroff)", &vmm_exit, "ms");
    if !a.skip_qemu {
        row("qemu microvm spawn -> exit (poweroff)", &qemu_exit, "ms");
    }
    row("moat-vmm spawn -> agent ready (vsock OK)", &ready, "ms");
    row("moat-vmm spawn -> first KVM_RUN", &first, "ms");
    row("moat-vmm RSS without guest memory", &rss, "MiB");
    if !a.skip_qemu && !vmm_exit.is_empty() && !qemu_exit.is_empty() {
        println!(
            "moat-vmm / qemu spawn->exit (median): {:.2}x",
            percentile(&vmm_exit, 0.5) / percentile(&qemu_exit, 0.5)
        );
    }
    println!("moat-vmm exits until agent ready (last run): {last_exits}");
    if vmm_exit.is_empty() || ready.is_empty() {
        std::process::exit(1);
    }
}
