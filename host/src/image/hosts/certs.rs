//! Certificates: Docker's certificate directory layout (used when a host
//! directory has no `hosts.toml`), PEM CA files split into one certificate
//! each, and client certificates with their keys.

use super::{ClientIdentity, HostsError, RegistryHost, Scheme};
use std::path::{Path, PathBuf};

/// Docker's certificate layout: `*.crt` are CAs for the registry itself;
/// `<name>.cert` with `<name>.key` is the client certificate (one per host;
/// a `.cert` without its `.key` is an error, as in Docker).
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
        } else if let Some(base) = name.strip_suffix(".cert") {
            let key = path.with_file_name(format!("{base}.key"));
            if !key.is_file() {
                return Err(err(
                    path.clone(),
                    format!("client certificate without its key {}", key.display()),
                ));
            }
            if let Some(first) = &server.client {
                return Err(err(
                    path.clone(),
                    format!(
                        "a second client certificate (moatd presents one per host; {} is the first)",
                        first.files.0.display()
                    ),
                ));
            }
            server.client =
                Some(read_client_identity(&path, Some(&key)).map_err(|r| err(path.clone(), r))?);
        }
    }
    Ok(vec![server])
}

/// Reads a client certificate (PEM, with its chain) and its private key,
/// from `key` or, when none is given, from the certificate's own file (as
/// containerd reads a `client` entry without a key).
pub(super) fn read_client_identity(
    cert: &Path,
    key: Option<&Path>,
) -> Result<ClientIdentity, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_path = key.unwrap_or(cert);
    let mut pem = if key.is_some() {
        read(key_path)?
    } else {
        Vec::new()
    };
    if !pem.is_empty() && !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(&cert_pem);
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    if !text.contains("PRIVATE KEY-----") {
        return Err(format!("{}: no PEM private key in it", key_path.display()));
    }
    // The TLS client's own check: the key must be one it can sign with.
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        format!(
            "{} with {}: not a usable certificate and key: {e}",
            cert.display(),
            key_path.display()
        )
    })?;
    Ok(ClientIdentity {
        files: (cert.to_path_buf(), key_path.to_path_buf()),
        pem,
    })
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
