//! Certificates: Docker's certificate directory layout (used when a host
//! directory has no `hosts.toml`) and PEM CA files split into one
//! certificate each.

use super::{HostsError, RegistryHost, Scheme};
use std::path::{Path, PathBuf};

/// Docker's certificate layout: `*.crt` are CAs for the registry itself;
/// `*.cert`/`*.key` client certificates are refused (not supported).
pub(super) fn cert_files(
    dir: &Path,
    registry: &str,
    scheme: Scheme,
) -> Result<Vec<RegistryHost>, HostsError> {
    let mut server = RegistryHost::default_server(registry, scheme);
    let err = |file: PathBuf, reason: String| HostsError {
        file,
        key: String::new(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir.to_path_buf(), e.to_string()))?;
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        if path.is_dir() {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".crt") {
            server
                .ca
                .extend(read_ca(&path).map_err(|r| err(path.clone(), r))?);
        } else if name.ends_with(".cert") {
            return Err(err(
                path.clone(),
                "client certificates (Docker's *.cert/*.key) are not supported by moatd's registry client".into(),
            ));
        }
    }
    Ok(vec![server])
}

/// Reads a PEM file of one or more certificates, split into one PEM block
/// each (the TLS client takes one certificate per entry).
pub(super) fn read_ca(path: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    let mut rest = text.as_str();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(format!("{}: unterminated PEM certificate", path.display()));
        };
        let end = start + len + END.len();
        certs.push((
            path.to_path_buf(),
            format!("{}\n", &rest[start..end]).into_bytes(),
        ));
        rest = &rest[end..];
    }
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
