//! What moat-vmm gives up before any guest code runs: with a jail, its
//! root (it chroots into the VM's own directory) and its uid and gid (the
//! VM's own, unprivileged, no supplementary groups); always, every
//! capability and the right to gain privileges through exec
//! (no_new_privs). `/dev/kvm`, the TAP, the kernel and initramfs, the
//! console and the vsock socket are open by then; image files arrive as
//! passed fds over the control socket. Threads started afterwards, the
//! vCPUs, inherit all of it. The process is still single-threaded here, so
//! the uid change covers the whole process.
//!
//! moatd starts the VMM already unprivileged: as the jail's uid and gid,
//! in the jail's directory, holding one capability, CAP_SYS_CHROOT (ambient),
//! for the chroot here, with `/dev/kvm`, the kernel, the initramfs and the
//! TAP as inherited fds. Run by hand as root, the VMM takes the uid and gid
//! itself after the chroot.

use crate::config::JailConfig;
use caps::CapSet;

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    /// A capability set could not be cleared.
    #[error("dropping capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    /// Entering the jail failed.
    #[error("jail: {0}: {1}")]
    Jail(&'static str, std::io::Error),
}

/// Sets no_new_privs, enters `jail` (if any), and clears every capability
/// set of the calling thread (the bounding set too, where the thread may
/// change it).
pub fn drop_privileges(jail: Option<&JailConfig>) -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)? {
        for c in caps::read(None, CapSet::Bounding)? {
            caps::drop(None, CapSet::Bounding, c)?;
        }
    }
    if let Some(j) = jail {
        enter(j)?;
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
}

/// chroot into the jail's root, then (when still root) take its gid, and
/// no other group, and uid, for real, effective and saved ids alike; an
/// unprivileged VMM must already run as them.
fn enter(j: &JailConfig) -> Result<(), ConfineError> {
    use std::os::unix::ffi::OsStrExt;
    let last = std::io::Error::last_os_error;
    // SAFETY: plain syscalls without arguments.
    let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    let privileged = euid == 0;
    // A VMM started unprivileged starts in its root and may not be able to
    // reach it by path; root goes there first.
    if privileged {
        let root = std::ffi::CString::new(j.root.as_os_str().as_bytes())
            .map_err(|e| ConfineError::Jail("root", std::io::Error::other(e)))?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::chdir(root.as_ptr()) } != 0 {
            return Err(ConfineError::Jail("chdir to the root", last()));
        }
    } else if (uid, gid) != (j.uid, j.gid) {
        return Err(ConfineError::Jail(
            "identity",
            std::io::Error::other(format!(
                "started as uid {uid} gid {gid}, not the jail's {} and {}",
                j.uid, j.gid
            )),
        ));
    }
    // SAFETY: plain syscalls on NUL-terminated paths and integers.
    unsafe {
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(ConfineError::Jail("chroot", last()));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(ConfineError::Jail("chdir", last()));
        }
        if !privileged {
            return Ok(());
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(ConfineError::Jail("setgroups", last()));
        }
        if libc::setresgid(j.gid, j.gid, j.gid) != 0 {
            return Err(ConfineError::Jail("setresgid", last()));
        }
        if libc::setresuid(j.uid, j.uid, j.uid) != 0 {
            return Err(ConfineError::Jail("setresuid", last()));
        }
    }
    Ok(())
}

/// The process's ids and effective capabilities, for its log's first line
/// (what its launcher left it).
pub fn identity() -> String {
    // SAFETY: plain syscalls without arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut caps: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|s| s.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    caps.sort();
    format!("uid {uid}, gid {gid}, capabilities [{}]", caps.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_new_privs() -> libc::c_int {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }
    }

    /// On a thread of its own (capabilities and no_new_privs are per
    /// thread), so the rest of the test process keeps its own.
    #[test]
    fn nothing_is_left_and_a_thread_started_after_inherits_it() {
        std::thread::spawn(|| {
            drop_privileges(None).unwrap();
            for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
                assert!(caps::read(None, set).unwrap().is_empty(), "{set:?}");
            }
            assert_eq!(no_new_privs(), 1);
            std::thread::spawn(|| {
                assert!(caps::read(None, CapSet::Effective).unwrap().is_empty());
                assert_eq!(no_new_privs(), 1);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
