//! What moat-vmm gives up before any guest code runs: every capability
//! (`/dev/kvm`, the TAP and the sockets are open by then, and what it opens
//! later — image files, its own directory — belongs to its own uid) and the
//! right to gain privileges through exec (no_new_privs). Threads started
//! afterwards, the vCPUs, inherit both.

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
}

/// Sets no_new_privs and clears every capability set of the calling
/// thread (the bounding set too, where the thread may change it).
pub fn drop_privileges() -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)? {
        for c in caps::read(None, CapSet::Bounding)? {
            caps::drop(None, CapSet::Bounding, c)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
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
            drop_privileges().unwrap();
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
