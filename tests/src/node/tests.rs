//! Unit tests of the node harness.

use super::initramfs::*;
use super::watch::*;
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
    let text = "boot\r\n@@moat-node:begin@@\r\nhello\r\nworld\r\n@@moat-node:end@@ rc=0\r\nbye\r\n";
    read_console(text.as_bytes(), &state, Instant::now(), false, false);
    let s = state.lock().unwrap();
    assert_eq!(s.output, "hello\nworld\n");
    assert!(s.console.starts_with("boot\n"));
    assert!(s.begun_at.is_some());
}
