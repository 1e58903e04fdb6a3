//! Where a container's log may be written: under its pod's log directory
//! and nowhere else, whatever the CRI request says.

use std::path::{Component, Path, PathBuf};

/// Checks a pod's `log_directory`: empty (no logs) or an absolute path
/// without `.` or `..` parts. Errors name the field.
pub fn check_log_directory(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Ok(());
    }
    let p = Path::new(dir);
    if !p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(format!(
            "config.log_directory: {dir:?} must be an absolute path without `.` or `..` parts"
        ));
    }
    Ok(())
}

/// The log file of a container: `log_path` (relative, plain names only)
/// under the pod's `log_directory`, or None when either is empty, as CRI
/// says. Errors name the field.
pub fn log_file(log_directory: &str, log_path: &str) -> Result<Option<PathBuf>, String> {
    if log_path.is_empty() || log_directory.is_empty() {
        return Ok(None);
    }
    check_log_directory(log_directory)?;
    let rel = Path::new(log_path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) || log_path.ends_with('/') {
        return Err(format!(
            "config.log_path: {log_path:?} must be a relative file path of plain names (no `/` at the start, no `.` or `..`)"
        ));
    }
    Ok(Some(Path::new(log_directory).join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_stay_under_the_pod_directory() {
        let dir = "/var/log/pods/ns_pod_uid";
        assert_eq!(
            log_file(dir, "web/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/ns_pod_uid/web/0.log"))
        );
        assert_eq!(log_file("", "web/0.log").unwrap(), None);
        assert_eq!(log_file(dir, "").unwrap(), None);
        for bad in [
            "../../../../run/pwned.log",
            "web/../../x.log",
            "/run/pwned.log",
            "./web/0.log",
            "web/",
        ] {
            let e = log_file(dir, bad).unwrap_err();
            assert!(e.contains("config.log_path"), "{bad}: {e}");
        }
        for bad in ["relative/dir", "/var/log/../../run", "./var/log"] {
            assert!(check_log_directory(bad)
                .unwrap_err()
                .contains("log_directory"));
            assert!(log_file(bad, "web/0.log").is_err());
        }
    }
}
