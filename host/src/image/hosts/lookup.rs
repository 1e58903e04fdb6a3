//! Finding a registry's host directory (`<host>_<port>_`, `<host>:<port>`,
//! `<host>`, then `_default`) and reading it, with plain HTTP for loopback
//! and insecure registries; and validating every directory for
//! `moatd --check-config`.

use super::certs::cert_files;
use super::{parse_hosts_file, HostsError, RegistryHost, RegistryHosts, Scheme};
use std::path::{Path, PathBuf};

/// True for registries on the loopback interface, which are spoken to over
/// plain HTTP like containerd does for localhost.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// The directories containerd looks in for `registry`, in order.
pub fn host_dirs(root: &Path, registry: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        dirs.push(root.join(format!("{}_{}_", &registry[..idx], &registry[idx + 1..])));
    }
    dirs.push(root.join(registry));
    dirs.push(root.join("_default"));
    dirs
}

/// The hosts for a pull from `registry` (as in the image reference, e.g.
/// `docker.io` or `127.0.0.1:5000`): read from `config_dir` if it has a
/// directory for it, else just the registry itself. `insecure` lists
/// registries spoken to over plain HTTP when they are the default server.
pub fn registry_hosts(
    config_dir: Option<&Path>,
    registry: &str,
    insecure: &[String],
) -> Result<RegistryHosts, HostsError> {
    let default_scheme = if is_loopback_registry(registry) || insecure.iter().any(|r| r == registry)
    {
        Scheme::Http
    } else {
        Scheme::Https
    };
    let fallback = RegistryHosts {
        dir: None,
        hosts: vec![RegistryHost::default_server(registry, default_scheme)],
    };
    let Some(root) = config_dir else {
        return Ok(fallback);
    };
    if registry.contains('/') || registry.starts_with('.') || registry.is_empty() {
        // Never looked up as a path (a reference's registry cannot hold these).
        return Ok(fallback);
    }
    let mut found = None;
    for dir in host_dirs(root, registry) {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {
                found = Some(dir);
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(HostsError {
                    file: dir,
                    key: String::new(),
                    reason: e.to_string(),
                })
            }
        }
    }
    let Some(dir) = found else {
        return Ok(fallback);
    };
    let hosts = load_host_dir(&dir, registry, default_scheme)?;
    Ok(RegistryHosts {
        dir: Some(dir),
        hosts,
    })
}

/// Reads one registry host directory: its `hosts.toml`, else Docker's
/// certificate files. `registry` and `default_scheme` make the default
/// server.
pub fn load_host_dir(
    dir: &Path,
    registry: &str,
    default_scheme: Scheme,
) -> Result<Vec<RegistryHost>, HostsError> {
    let file = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(HostsError {
                file,
                key: String::new(),
                reason: e.to_string(),
            })
        }
    };
    if text.is_empty() {
        cert_files(dir, registry, default_scheme)
    } else {
        parse_hosts_file(&text, dir, &file, registry, default_scheme)
    }
}

/// Validates every registry host directory under `root` (for
/// `moatd --check-config`): each directory's name and its hosts' URLs in
/// the order pulls try them. A missing `root` holds none.
pub fn check_config_dir(root: &Path) -> Result<Vec<(String, Vec<String>)>, HostsError> {
    let err = |reason: String| HostsError {
        file: root.to_path_buf(),
        key: String::new(),
        reason,
    };
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hosts = load_host_dir(&dir, &name, Scheme::Https)?;
        out.push((name, hosts.iter().map(RegistryHost::url).collect()));
    }
    Ok(out)
}
