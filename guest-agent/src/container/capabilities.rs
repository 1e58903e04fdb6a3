//! Linux capabilities of the container process (with the `caps` crate).

use super::spec::CapsPlan;
use caps::{CapSet, Capability, CapsHashSet};

fn set_of(names: &[String]) -> CapsHashSet {
    names
        .iter()
        .filter_map(|n| n.parse::<Capability>().ok())
        .collect()
}

/// Drops every capability not in `plan.bounding` from the bounding set.
/// Must run while the process still has CAP_SETPCAP.
pub fn drop_bounding(plan: &CapsPlan) -> Result<(), caps::errors::CapsError> {
    let keep = set_of(&plan.bounding);
    for c in caps::all() {
        if keep.contains(&c) {
            continue;
        }
        // Capabilities newer than the running kernel cannot be dropped;
        // they cannot be held either.
        if let Err(e) = caps::drop(None, CapSet::Bounding, c) {
            if c.index() <= last_cap() {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The highest capability number the kernel knows.
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Sets the inheritable, effective, permitted and ambient sets (after the
/// uid change, which keeps the permitted set thanks to PR_SET_KEEPCAPS).
pub fn apply_sets(plan: &CapsPlan) -> Result<(), caps::errors::CapsError> {
    caps::set(None, CapSet::Inheritable, &set_of(&plan.inheritable))?;
    caps::set(None, CapSet::Effective, &set_of(&plan.effective))?;
    caps::set(None, CapSet::Permitted, &set_of(&plan.permitted))?;
    caps::clear(None, CapSet::Ambient)?;
    for c in set_of(&plan.ambient) {
        caps::raise(None, CapSet::Ambient, c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_caps() {
        let s = set_of(&[
            "CAP_KILL".into(),
            "CAP_BOGUS".into(),
            "CAP_SYS_ADMIN".into(),
        ]);
        assert_eq!(s.len(), 2);
        assert!(s.contains(&Capability::CAP_KILL));
        assert!(last_cap() >= 30);
    }
}
