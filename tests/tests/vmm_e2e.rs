//! End-to-end tests of moat-vmm: real boots of the guest kernel with the
//! moat-agent initramfs, on a VMX/SVM host directly or inside the test node.
//!
//! Needs `make artifacts` (build/vmlinux, build/initramfs.cpio) and release
//! builds of moat-vmm and moat-agentctl.

use std::time::Duration;

use moat_tests::artifacts;
use moat_tests::vm::run_vm_script;

const TIMEOUT: Duration = Duration::from_secs(400);

struct Paths {
    vmm: String,
    agentctl: String,
    kernel: String,
    initrd: String,
}

fn paths() -> Paths {
    let s = |p: std::path::PathBuf| p.display().to_string();
    Paths {
        vmm: s(artifacts::binary("moat-vmm").expect("moat-vmm release binary")),
        agentctl: s(artifacts::binary("moat-agentctl").expect("moat-agentctl release binary")),
        kernel: s(artifacts::vmlinux().expect("guest kernel")),
        initrd: s(artifacts::initramfs().expect("guest initramfs")),
    }
}

/// One line-delimited JSON request to the control API, answer on stdout.
const API_PY: &str = r#"api() { python3 -c 'import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2]+"\n").encode())
print(s.makefile().readline().strip())' "$@"; }"#;

/// The agent's poweroff and the boot benchmark's tiny poweroff `/init` both
/// end the VM with status 0.
#[test]
fn poweroff_exits_zero() {
    let p = paths();
    let bench_initrd = artifacts::poweroff_initramfs().expect("poweroff initramfs");
    let script = format!(
        "{vmm} --kernel {k} --initrd {i} --serial /tmp/console.log --cmdline-extra moat.test=poweroff; echo \"vmm-exit=$?\"; cat /tmp/console.log
{vmm} --kernel {k} --initrd {b} --serial /tmp/bench.log; echo \"bench-exit=$?\"; tail -3 /tmp/bench.log",
        vmm = p.vmm,
        k = p.kernel,
        i = p.initrd,
        b = bench_initrd.display()
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    assert!(run.output.contains("vmm-exit=0"), "{}", run.output);
    assert!(run.output.contains("moat-agent ready"), "{}", run.output);
    assert!(run.output.contains("bench-exit=0"), "{}", run.output);
}

#[test]
fn guest_panic_exits_with_reset_code() {
    let p = paths();
    // No init can run: the kernel panics, panic=-1 reboots, the VMM sees a
    // reset without a poweroff notice.
    let script = format!(
        "{vmm} --kernel {k} --initrd {i} --serial /tmp/console.log --cmdline-extra 'rdinit=/nonexistent init=/nonexistent'; echo \"vmm-exit=$?\"; tail -5 /tmp/console.log",
        vmm = p.vmm,
        k = p.kernel,
        i = p.initrd
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    assert!(run.output.contains("vmm-exit=3"), "{}", run.output);
    assert!(run.output.contains("Kernel panic"), "{}", run.output);
}

#[test]
fn agent_answers_over_hybrid_vsock_and_api_works() {
    let p = paths();
    let script = format!(
        r#"{api}
T=/tmp/vmm-e2e; mkdir -p $T
{vmm} --kernel {k} --initrd {i} --cpus 2 --vsock-uds $T/v.sock --api-sock $T/api.sock --serial $T/console.log &
PID=$!
{ctl} --vsock-uds $T/v.sock --wait-secs 300 ping && echo PING-OK
{ctl} --vsock-uds $T/v.sock details
echo "state: $(api $T/api.sock '{{"op":"state"}}')"
echo "pause: $(api $T/api.sock '{{"op":"pause"}}')"
echo "paused: $(api $T/api.sock '{{"op":"state"}}')"
echo "resume: $(api $T/api.sock '{{"op":"resume"}}')"
echo "bad: $(api $T/api.sock '{{"op":"detach_drive","slot":42}}')"
{ctl} --vsock-uds $T/v.sock ping && echo PING2-OK
echo "counters: $(api $T/api.sock '{{"op":"counters"}}')"
{ctl} --vsock-uds $T/v.sock shutdown
wait $PID; R=$?; echo "vmm-exit=$R"
ls $T
[ $R = 0 ] || {{ echo "--- guest console (tail)"; tail -40 $T/console.log; }}
"#,
        api = API_PY,
        vmm = p.vmm,
        ctl = p.agentctl,
        k = p.kernel,
        i = p.initrd
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    let out = &run.output;
    assert!(out.contains("PING-OK"), "{out}");
    assert!(out.contains("cpus 2"), "{out}");
    assert!(out.contains(r#""state":"running""#), "{out}");
    assert!(
        out.contains(r#"paused: {"ok":true,"result":{"memory_mib":128"#)
            && out.contains(r#""state":"paused""#),
        "{out}"
    );
    // Paused, every vCPU's registers are in the state; running, none are.
    let line = |prefix: &str| out.lines().find(|l| l.starts_with(prefix)).unwrap_or("");
    let paused = line("paused: ");
    assert!(
        paused.contains(r#""registers":{"0":"rip=0x"#) && paused.contains(r#""1":"rip=0x"#),
        "{paused}"
    );
    assert!(line("state: ").contains(r#""registers":{}"#), "{out}");
    assert!(
        out.contains(r#"bad: {"error":"slot: 42 is not below blk_slots (4)","ok":false}"#),
        "{out}"
    );
    assert!(out.contains("PING2-OK"), "{out}");
    assert!(out.contains(r#""host_connections":"#), "{out}");
    assert!(out.contains("vmm-exit=0"), "{out}");
    // The VMM removed its sockets.
    assert!(
        !out.contains("v.sock") || !out.lines().any(|l| l.trim() == "v.sock"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.trim() == "api.sock"), "{out}");
}

#[test]
fn hot_attach_block_image_resizes_guest_disk() {
    let p = paths();
    let script = format!(
        r#"{api}
T=/tmp/vmm-e2e-blk; mkdir -p $T/root
echo hello-from-moat > $T/root/hello.txt
mkfs.ext4 -q -d $T/root $T/disk.img 8M || exit 90
{vmm} --kernel {k} --initrd {i} --verbose-boot --vsock-uds $T/v.sock --api-sock $T/api.sock --serial $T/console.log &
PID=$!
{ctl} --vsock-uds $T/v.sock --wait-secs 300 ping || exit 91
echo "attach: $(api $T/api.sock '{{"op":"attach_drive","slot":1,"path":"'$T/disk.img'","read_only":true}}')"
echo "again: $(api $T/api.sock '{{"op":"attach_drive","slot":1,"path":"'$T/disk.img'","read_only":true}}')"
sleep 3
echo "state: $(api $T/api.sock '{{"op":"state"}}')"
echo "detach: $(api $T/api.sock '{{"op":"detach_drive","slot":1}}')"
sleep 3
{ctl} --vsock-uds $T/v.sock shutdown
wait $PID; echo "vmm-exit=$?"
grep -i "capacity change" $T/console.log
"#,
        api = API_PY,
        vmm = p.vmm,
        ctl = p.agentctl,
        k = p.kernel,
        i = p.initrd
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    let out = &run.output;
    assert!(out.contains(r#"attach: {"ok":true"#), "{out}");
    assert!(
        out.contains(r#"again: {"error":"slot 1 already has a drive attached"#),
        "{out}"
    );
    assert!(out.contains(r#""sectors":16384"#), "{out}");
    // The guest saw the config-change interrupt and resized the disk (reading
    // files from it needs an agent RPC; the device's read path has unit tests).
    assert!(out.contains(r#"detach: {"ok":true"#), "{out}");
    assert!(out.contains("capacity change from 0 to 16384"), "{out}");
    assert!(out.contains("capacity change from 16384 to 0"), "{out}");
    assert!(out.contains("vmm-exit=0"), "{out}");
}

/// virtio-fs: the VMM hands a real virtiofsd its guest memory and rings,
/// the agent mounts the tag the command line names, and the daemon's
/// answers come back as the device's interrupts.
#[test]
fn virtio_fs_served_by_virtiofsd_mounts_at_boot() {
    let p = paths();
    let virtiofsd = artifacts::virtiofsd().expect("virtiofsd (scripts/install-deps.sh)");
    let script = format!(
        r#"{api}
T=/tmp/vmm-e2e-fs; mkdir -p $T/shared
echo from-host > $T/shared/hello
{vfsd} --socket-path $T/fs.sock --shared-dir $T/shared --cache auto --log-level error &
FS=$!
for i in $(seq 100); do [ -S $T/fs.sock ] && break; sleep 0.1; done
{vmm} --kernel {k} --initrd {i} --vsock-uds $T/v.sock --api-sock $T/api.sock --serial $T/console.log \
  --fs-socket $T/fs.sock --fs-tag pod-volumes --cmdline-extra moat.volumes=pod-volumes &
PID=$!
{ctl} --vsock-uds $T/v.sock --wait-secs 300 ping && echo PING-OK
echo "counters: $(api $T/api.sock '{{"op":"counters"}}')"
{ctl} --vsock-uds $T/v.sock shutdown
wait $PID; echo "vmm-exit=$?"
wait $FS; echo "virtiofsd-exit=$?"
grep -E "volumes" $T/console.log
"#,
        api = API_PY,
        vfsd = virtiofsd.display(),
        vmm = p.vmm,
        ctl = p.agentctl,
        k = p.kernel,
        i = p.initrd
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    let out = &run.output;
    assert!(out.contains("PING-OK"), "{out}");
    assert!(out.contains("volumes mounted"), "{out}");
    let counters = out
        .lines()
        .find(|l| l.starts_with("counters: "))
        .unwrap_or("");
    eprintln!("{counters}");
    assert!(counters.contains(r#""activations":1"#), "{counters}");
    assert!(counters.contains(r#""activation_errors":0"#), "{counters}");
    // FUSE_INIT and the mount's lookups were answered.
    assert!(!counters.contains(r#""calls":0"#), "{counters}");
    assert!(out.contains("vmm-exit=0"), "{out}");
    // The daemon ends when its one client goes.
    assert!(out.contains("virtiofsd-exit=0"), "{out}");
}

#[test]
fn bad_config_exits_two_without_kvm() {
    let p = paths();
    let out = std::process::Command::new(&p.vmm)
        .args(["--kernel", &p.kernel, "--memory-mib", "8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory_mib: must be at least 64"));
}

/// Guest-initiated vsock: the agent connects to the host (CID 2) port 1025
/// once it serves; moat-vmm forwards that to the Unix socket `<uds>_1025`.
#[test]
fn guest_initiated_vsock_reaches_the_host_socket() {
    let p = paths();
    let script = format!(
        r#"T=/tmp/vmm-ready; mkdir -p $T
python3 -c 'import socket,sys
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); s.settimeout(300)
c,_=s.accept(); c.settimeout(30); data=b""
while not data.endswith(b"\n"):
    chunk=c.recv(64)
    if not chunk: break
    data+=chunk
print("host got: "+data.decode().strip())' $T/v.sock_1025 &
LISTENER=$!
while [ ! -S $T/v.sock_1025 ]; do sleep 0.05; done
{vmm} --kernel {k} --initrd {i} --vsock-uds $T/v.sock --serial $T/console.log &
PID=$!
wait $LISTENER; echo "listener-exit=$?"
{ctl} --vsock-uds $T/v.sock --wait-secs 60 shutdown
wait $PID; echo "vmm-exit=$?""#,
        vmm = p.vmm,
        k = p.kernel,
        i = p.initrd,
        ctl = p.agentctl
    );
    let run = run_vm_script(&script, TIMEOUT).unwrap();
    assert!(run.output.contains("host got: READY "), "{}", run.output);
    assert!(run.output.contains("listener-exit=0"), "{}", run.output);
    assert!(run.output.contains("vmm-exit=0"), "{}", run.output);
}
