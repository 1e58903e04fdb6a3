//! Builds the test fixtures that run inside pod VMs' containers: static C
//! programs (the test image has no libc), found by the tests through
//! `MOAT_HANDLE_PROBE`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "fixtures/handle_probe.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let binary = out.join("handle-probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} for {source}: {e}"));
    assert!(status.success(), "{cc} failed on {source}: {status}");
    println!("cargo:rustc-env=MOAT_HANDLE_PROBE={}", binary.display());
}
