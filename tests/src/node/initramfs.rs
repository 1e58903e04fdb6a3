//! The node's initramfs: busybox, the kernel modules it loads, and its
//! `/init`.

use super::*;

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

impl NodeConfig {
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
}

/// Where module `name` of the kernel whose modules are in `dir` is: `None`
/// when that kernel has it built in (`builtin` is its `modules.builtin`), as
/// newer kernels have the virtio core.
pub(super) fn find_module(
    dir: &Path,
    name: &str,
    builtin: &str,
) -> Result<Option<PathBuf>, NodeError> {
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
pub(super) fn module_bytes(path: &Path) -> Result<Vec<u8>, NodeError> {
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

/// The node's `/init` (busybox sh).
pub(super) const NODE_INIT: &str = r#"#!/bin/busybox sh
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
# The command runs in a mount namespace of its own whose root mount is the
# host's root (moved over the initramfs, as switch_root does), not a chroot
# into it: a process entering a mount namespace (setns) lands on that
# namespace's root mount, so an OCI runtime's `exec` into a container would
# otherwise land in the initramfs instead of the container's root.
unshare -m sh -c "cd /host && mount --move /host / && exec chroot . /bin/sh -c '. $scratch/env.sh && exec /bin/sh $scratch/cmd.sh'" < /dev/null > /dev/console 2>&1
rc=$?
echo "$rc" > /host$scratch/rc
sync
echo "@@moat-node:end@@ rc=$rc" > /dev/console
poweroff -f
"#;
