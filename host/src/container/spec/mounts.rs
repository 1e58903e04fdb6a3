//! Bind mounts and the extra devices of privileged containers.

use oci_spec::runtime::Mount;
use std::path::PathBuf;

pub(super) fn bind(dest: &str, source: &str, readonly: bool, propagation: &str) -> Mount {
    let mut m = Mount::default();
    let mut options = vec!["rbind".to_string(), propagation.to_string()];
    if readonly {
        options.push("ro".into());
    }
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some("bind".into()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(options));
    m
}

/// The guest devices a privileged container gets besides the default ones.
pub(super) fn privileged_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    [("/dev/net/tun", 10, 200)]
        .into_iter()
        .filter_map(|(path, major, minor)| {
            serde_json::from_value(serde_json::json!({
                "path": path, "type": "c", "major": major, "minor": minor,
                "fileMode": 0o666, "uid": 0, "gid": 0
            }))
            .ok()
        })
        .collect()
}
