//! Registry hosts: mirrors and per-registry settings in containerd's
//! `hosts.toml` format (containerd's `docs/hosts.md`), so an operator's
//! existing `/etc/containerd/certs.d` works unchanged.
//!
//! The configuration directory holds one subdirectory per registry host
//! namespace: `<host>_<port>_`, `<host>:<port>` or `<host>`, and `_default`
//! as the fallback, looked up in that order (the first that exists wins).
//! In it, `hosts.toml` lists mirror hosts (`[host."https://mirror"]`, tried in
//! file order) and the upstream `server` (tried last; default: the registry
//! itself). Without `hosts.toml` the directory is read in Docker's
//! certificate layout (`*.crt` are CAs of the registry itself).
//!
//! The directory is read at every pull, as containerd does, so edits take
//! effect without a restart. Unlike containerd, which logs a malformed
//! `hosts.toml` and carries on as if it were absent, a malformed file fails
//! the pull with an error that names the file and key: a typo must not route
//! pulls around the operator's mirror or certificate.
//!
//! Keys moatd cannot honour (an `override_path` API root that does not end
//! in `/v2`, more than one client certificate for a host) are refused with
//! an error rather than ignored.
//!
//! Files: this one holds the types a lookup answers with; `lookup.rs` finds
//! a registry's directory and reads it ([`registry_hosts`],
//! [`check_config_dir`]); `hosts_file.rs` parses `hosts.toml`
//! ([`parse_hosts_file`]); `values.rs` parses the host URLs and durations
//! it holds; `certs.rs` reads CA files, client certificates and Docker's
//! certificate layout.

mod certs;
mod hosts_file;
mod lookup;
#[cfg(test)]
mod tests;
mod values;

pub use hosts_file::parse_hosts_file;
pub use lookup::{
    check_config_dir, host_dirs, is_loopback_registry, load_host_dir, registry_hosts,
};
pub use values::{parse_go_duration, parse_host_url};

use std::path::PathBuf;
use std::time::Duration;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What a host may be used for (containerd's host capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetching content by digest (blobs, manifests by digest).
    pub pull: bool,
    /// Resolving a tag to a digest (a trusted operation).
    pub resolve: bool,
    /// Pushing (accepted for compatibility; moatd never pushes).
    pub push: bool,
}

impl Capabilities {
    /// Every capability (containerd's default when none are listed).
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// Whether a host is a mirror listed as `[host."…"]` or the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A `[host."…"]` entry.
    Mirror,
    /// The `server` (or the registry itself when none is configured).
    Server,
}

/// One host a pull may talk to, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryHost {
    /// Mirror or server.
    pub role: Role,
    /// `http` (plain) or `https`.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// The API root without its final `/v2` (`""` for the standard `/v2`).
    pub path_prefix: String,
    /// What this host may be used for.
    pub capabilities: Capabilities,
    /// Extra root certificates (PEM, one certificate each) and the file each
    /// came from.
    pub ca: Vec<(PathBuf, Vec<u8>)>,
    /// Accept any server certificate.
    pub skip_verify: bool,
    /// Connect timeout (`dial_timeout`).
    pub dial_timeout: Option<Duration>,
    /// Proxy URL for this host (`proxy`).
    pub proxy: Option<String>,
    /// The client certificate presented to the host (`client`, or Docker's
    /// `*.cert`/`*.key`).
    pub client: Option<ClientIdentity>,
    /// Headers sent with every request to the host (`header`), in order.
    pub headers: Vec<(String, String)>,
}

/// A client certificate with its private key, for mutual TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientIdentity {
    /// The certificate file and the key file (the same file when the key
    /// sits beside the certificate in one PEM).
    pub files: (PathBuf, PathBuf),
    /// The key and certificate chain, PEM, in one buffer.
    pub pem: Vec<u8>,
}

impl RegistryHost {
    /// The host as a registry name: `host[:port]` plus
    /// the path prefix of its API root.
    pub fn registry(&self) -> String {
        format!("{}{}", self.host, self.path_prefix)
    }

    /// `scheme://host[:port][prefix]`, for logs and errors.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.registry())
    }

    fn default_server(registry: &str, scheme: Scheme) -> Self {
        RegistryHost {
            role: Role::Server,
            scheme,
            host: registry.to_string(),
            path_prefix: String::new(),
            capabilities: Capabilities::ALL,
            ca: Vec::new(),
            skip_verify: false,
            dial_timeout: None,
            proxy: None,
            client: None,
            headers: Vec::new(),
        }
    }
}

/// The hosts a pull from one registry tries, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryHosts {
    /// The directory whose configuration applies, if any.
    pub dir: Option<PathBuf>,
    /// Mirrors in file order, then the server.
    pub hosts: Vec<RegistryHost>,
}

/// A registry host configuration that cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct HostsError {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// The TOML key at fault (`host."https://m".ca`), or empty.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for HostsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "registry host configuration {}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HostsError {}
