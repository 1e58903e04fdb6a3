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
//! Keys moatd cannot honour with its registry client (`client` certificates,
//! `header`, an `override_path` API root that does not end in `/v2`) are
//! refused with an error rather than ignored.

use std::path::{Path, PathBuf};
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
}

impl RegistryHost {
    /// The host as a registry name for the OCI client: `host[:port]` plus
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

/// Docker's certificate layout: `*.crt` are CAs for the registry itself;
/// `*.cert`/`*.key` client certificates are refused (not supported).
fn cert_files(dir: &Path, registry: &str, scheme: Scheme) -> Result<Vec<RegistryHost>, HostsError> {
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
fn read_ca(path: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
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

/// Keys a host table (and the top level, for the server) may hold.
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
    "proxy",
];

/// Parses `hosts.toml` text: mirrors in file order, then the server.
/// `dir` resolves relative paths; `file` names the file in errors.
pub fn parse_hosts_file(
    text: &str,
    dir: &Path,
    file: &Path,
    registry: &str,
    default_scheme: Scheme,
) -> Result<Vec<RegistryHost>, HostsError> {
    let err = |key: &str, reason: String| HostsError {
        file: file.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err("", format!("invalid TOML: {}", e.to_string().trim())))?;
    let mut server_url = None;
    let mut mirrors = Vec::new();
    for (key, value) in &doc {
        match key.as_str() {
            "server" => {
                let Some(s) = value.as_str() else {
                    return Err(err("server", "must be a string (a URL)".into()));
                };
                if !s.is_empty() {
                    server_url = Some(s.to_string());
                }
            }
            "host" => {
                let Some(table) = value.as_table() else {
                    return Err(err(
                        "host",
                        "must be tables of the form [host.\"https://mirror\"]".into(),
                    ));
                };
                for (url, settings) in table {
                    let key = format!("host.{}", quote_key(url));
                    let Some(settings) = settings.as_table() else {
                        return Err(err(&key, "must be a table of host settings".into()));
                    };
                    for k in settings.keys() {
                        if !HOST_KEYS.contains(&k.as_str()) {
                            let reason = if k == "host" {
                                "nested host tables are not supported (as in containerd)".into()
                            } else {
                                format!("unknown key (known: {})", HOST_KEYS.join(", "))
                            };
                            return Err(err(&format!("{key}.{}", quote_key(k)), reason));
                        }
                    }
                    let mut host = host_settings(settings, dir, &key, &err)?;
                    let (scheme, hostport, prefix) =
                        parse_host_url(url, host_bool(settings, "override_path", &key, &err)?)
                            .map_err(|r| err(&key, r))?;
                    host.role = Role::Mirror;
                    host.scheme = scheme;
                    host.host = hostport;
                    host.path_prefix = prefix;
                    mirrors.push(host);
                }
            }
            k if HOST_KEYS.contains(&k) => {}
            k => {
                return Err(err(
                    &quote_key(k),
                    format!(
                        "unknown key (known: server, host, {})",
                        HOST_KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    let mut server = host_settings(&doc, dir, "", &err)?;
    server.role = Role::Server;
    match server_url {
        Some(url) => {
            let (scheme, hostport, prefix) =
                parse_host_url(&url, host_bool(&doc, "override_path", "", &err)?)
                    .map_err(|r| err("server", r))?;
            server.scheme = scheme;
            server.host = hostport;
            server.path_prefix = prefix;
        }
        None => {
            server.scheme = default_scheme;
            server.host = registry.to_string();
            server.path_prefix = String::new();
        }
    }
    mirrors.push(server);
    Ok(mirrors)
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn join_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn host_bool(
    t: &toml::Table,
    k: &str,
    prefix: &str,
    err: &impl Fn(&str, String) -> HostsError,
) -> Result<bool, HostsError> {
    match t.get(k) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| err(&join_key(prefix, k), "must be true or false".into())),
    }
}

/// The settings shared by `[host."…"]` tables and the top level.
fn host_settings(
    t: &toml::Table,
    dir: &Path,
    prefix: &str,
    err: &impl Fn(&str, String) -> HostsError,
) -> Result<RegistryHost, HostsError> {
    let key = |k: &str| join_key(prefix, k);
    let mut host = RegistryHost::default_server("", Scheme::Https);
    if let Some(v) = t.get("capabilities") {
        let list = v.as_array().ok_or_else(|| {
            err(
                &key("capabilities"),
                "must be a list such as [\"pull\", \"resolve\"]".into(),
            )
        })?;
        let mut caps = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for c in list {
            match c.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("pull") => caps.pull = true,
                Some("resolve") => caps.resolve = true,
                Some("push") => caps.push = true,
                _ => {
                    return Err(err(
                        &key("capabilities"),
                        format!("unknown capability {c} (known: \"pull\", \"resolve\", \"push\")"),
                    ))
                }
            }
        }
        // containerd: an empty list means every capability.
        if !list.is_empty() {
            host.capabilities = caps;
        }
    }
    if let Some(v) = t.get("ca") {
        let paths: Vec<&str> = match v {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a
                .iter()
                .map(|p| p.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(&key("ca"), "must be a path or a list of paths".into()))?,
            _ => return Err(err(&key("ca"), "must be a path or a list of paths".into())),
        };
        for p in paths {
            let path = if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                dir.join(p)
            };
            host.ca
                .extend(read_ca(&path).map_err(|r| err(&key("ca"), r))?);
        }
    }
    if t.contains_key("client") {
        return Err(err(
            &key("client"),
            "client certificates are not supported by moatd's registry client (oci-client has no client identity setting)".into(),
        ));
    }
    if t.contains_key("header") {
        return Err(err(
            &key("header"),
            "custom headers are not supported by moatd's registry client (oci-client cannot add request headers)".into(),
        ));
    }
    host.skip_verify = host_bool(t, "skip_verify", prefix, err)?;
    if let Some(v) = t.get("dial_timeout") {
        let s = v.as_str().ok_or_else(|| {
            err(
                &key("dial_timeout"),
                "must be a duration such as \"1s\"".into(),
            )
        })?;
        host.dial_timeout = Some(parse_go_duration(s).map_err(|r| err(&key("dial_timeout"), r))?);
    }
    if let Some(v) = t.get("proxy") {
        let s = v
            .as_str()
            .ok_or_else(|| err(&key("proxy"), "must be a URL string".into()))?;
        let ok = ["http://", "https://", "socks5://", "socks5h://"]
            .iter()
            .any(|p| s.starts_with(p) && s.len() > p.len());
        if !ok {
            return Err(err(
                &key("proxy"),
                format!("{s:?}: must be an http, https, socks5 or socks5h URL"),
            ));
        }
        host.proxy = Some(s.to_string());
    }
    Ok(host)
}

/// Splits a host URL into scheme, `host[:port]` and the API root's prefix
/// before `/v2`, the way containerd reads it: no scheme means https; no
/// path means `/v2`; a path gets `/v2` appended unless it ends in `/v2` or
/// `override_path` is set.
pub fn parse_host_url(url: &str, override_path: bool) -> Result<(Scheme, String, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((s, _)) => return Err(format!("{url:?}: scheme {s:?} is not http or https")),
        None => (Scheme::Https, url),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if hostport.is_empty()
        || hostport
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '@' | '?' | '#' | '\\'))
        || path.contains(['?', '#'])
    {
        return Err(format!(
            "{url:?} is not a host URL (scheme://host[:port][/path])"
        ));
    }
    // path.Clean, as containerd does: no empty, `.` or trailing segments.
    let mut segments: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut path = segments.iter().map(|s| format!("/{s}")).collect::<String>();
    if !path.ends_with("/v2") {
        if override_path {
            return Err(format!(
                "{url:?}: override_path with an API root that does not end in /v2 is not supported by moatd's registry client (it always requests <root>/v2/…)"
            ));
        }
        path.push_str("/v2");
    }
    let prefix = path.strip_suffix("/v2").unwrap_or("").to_string();
    Ok((scheme, hostport.to_ascii_lowercase(), prefix))
}

/// Parses a Go duration (`"1s"`, `"500ms"`, `"1m30s"`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as \"1s\", \"500ms\" or \"1m30s\"");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 86400.0 * 365.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn parse(text: &str, dir: &Path) -> Result<Vec<RegistryHost>, HostsError> {
        parse_hosts_file(
            text,
            dir,
            &dir.join("hosts.toml"),
            "docker.io",
            Scheme::Https,
        )
    }

    fn urls(hosts: &[RegistryHost]) -> Vec<String> {
        hosts.iter().map(|h| h.url()).collect()
    }

    #[test]
    fn containerd_simple_example() {
        let d = tempfile::tempdir().unwrap();
        let hosts = parse(
            "server = \"https://docker.io\"\n\n[host.\"https://registry-1.docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            d.path(),
        )
        .unwrap();
        assert_eq!(
            urls(&hosts),
            ["https://registry-1.docker.io", "https://docker.io"]
        );
        assert_eq!(hosts[0].role, Role::Mirror);
        assert_eq!(
            hosts[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert_eq!(hosts[1].role, Role::Server);
        assert_eq!(hosts[1].capabilities, Capabilities::ALL);
    }

    #[test]
    fn containerd_local_mirror_example_keeps_file_order_and_reads_ca() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("docker-mirror.crt"), format!("{CA}{CA}")).unwrap();
        let hosts = parse(
            r#"
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
[host."http://a-plain.example:5000"]
  skip_verify = true
  dial_timeout = "1.5s"
"#,
            d.path(),
        )
        .unwrap();
        assert_eq!(
            urls(&hosts),
            [
                "https://public-mirror.example.com",
                "https://docker-mirror.internal",
                "http://a-plain.example:5000",
                "https://registry-1.docker.io"
            ]
        );
        assert!(hosts[0].capabilities.pull && !hosts[0].capabilities.resolve);
        assert_eq!(hosts[1].ca.len(), 2, "a bundle is split per certificate");
        assert_eq!(hosts[1].ca[0].0, d.path().join("docker-mirror.crt"));
        assert_eq!(hosts[2].scheme, Scheme::Http);
        assert!(hosts[2].skip_verify);
        assert_eq!(hosts[2].dial_timeout, Some(Duration::from_millis(1500)));
        assert!(!hosts[0].skip_verify);
    }

    #[test]
    fn reverse_alphabetical_order_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let hosts = parse(
            "[host.\"https://z.example\"]\n[host.\"https://a.example\"]\n[host.\"https://m.example\"]\ncapabilities = [\"pull\"]\n",
            d.path(),
        )
        .unwrap();
        assert_eq!(
            urls(&hosts),
            [
                "https://z.example",
                "https://a.example",
                "https://m.example",
                "https://docker.io"
            ]
        );
    }

    #[test]
    fn server_defaults_to_the_registry_and_top_level_settings_apply_to_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.pem"), CA).unwrap();
        let ca = d.path().join("ca.pem");
        let hosts = parse_hosts_file(
            &format!("ca = [{:?}]\nskip_verify = false\ncapabilities = [\"pull\"]\n[host.\"mirror.example:5000/some/path/\"]\n", ca.display()),
            d.path(),
            &d.path().join("hosts.toml"),
            "127.0.0.1:5000",
            Scheme::Http,
        )
        .unwrap();
        assert_eq!(hosts[0].url(), "https://mirror.example:5000/some/path");
        assert_eq!(hosts[0].registry(), "mirror.example:5000/some/path");
        assert_eq!(hosts[1].url(), "http://127.0.0.1:5000");
        assert_eq!(hosts[1].ca.len(), 1);
        assert!(hosts[1].capabilities.pull && !hosts[1].capabilities.resolve);
    }

    #[test]
    fn host_urls_follow_containerd() {
        let ok = |u: &str, o: bool| parse_host_url(u, o).unwrap();
        assert_eq!(
            ok("https://m.example", false),
            (Scheme::Https, "m.example".into(), "".into())
        );
        assert_eq!(
            ok("m.example:443", false),
            (Scheme::Https, "m.example:443".into(), "".into())
        );
        assert_eq!(
            ok("http://m/v2", false),
            (Scheme::Http, "m".into(), "".into())
        );
        assert_eq!(
            ok("https://m/us//", false),
            (Scheme::Https, "m".into(), "/us".into())
        );
        assert_eq!(
            ok("https://non-compliant-mirror.registry/v2/upstream/v2", true),
            (
                Scheme::Https,
                "non-compliant-mirror.registry".into(),
                "/v2/upstream".into()
            )
        );
        // containerd's own override_path example has an API root moatd's
        // client cannot address: refused, not silently rewritten.
        let e =
            parse_host_url("https://non-compliant-mirror.registry/v2/upstream", true).unwrap_err();
        assert!(e.contains("override_path"), "{e}");
        assert!(parse_host_url("ftp://m", false).is_err());
        assert!(parse_host_url("https://", false).is_err());
        assert!(parse_host_url("https://u@m", false).is_err());
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str, &str)] = &[
            ("server = 5", "server", "string"),
            (
                "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]",
                "host.\"https://m\".capabilities",
                "fetch",
            ),
            (
                "[host.\"https://m\"]\ncapabilities = \"pull\"",
                "host.\"https://m\".capabilities",
                "list",
            ),
            (
                "[host.\"https://m\"]\nskip_verfy = true",
                "host.\"https://m\".skip_verfy",
                "unknown key",
            ),
            ("skip_verify = \"yes\"", "skip_verify", "true or false"),
            (
                "[host.\"https://m\"]\nca = \"missing.pem\"",
                "host.\"https://m\".ca",
                "missing.pem",
            ),
            (
                "[host.\"https://m\"]\nca = [1]",
                "host.\"https://m\".ca",
                "list of paths",
            ),
            (
                "[host.\"https://m\"]\nclient = [[\"/c.cert\", \"/c.key\"]]",
                "host.\"https://m\".client",
                "not supported",
            ),
            (
                "[host.\"https://m\".header]\nx-custom = \"v\"",
                "host.\"https://m\".header",
                "not supported",
            ),
            (
                "[host.\"https://m\"]\ndial_timeout = \"soon\"",
                "host.\"https://m\".dial_timeout",
                "soon",
            ),
            ("[host.\"ftp://m\"]", "host.\"ftp://m\"", "scheme"),
            (
                "[host.\"http://m\"]\n[host.\"http://m\".host.\"http://n\"]",
                "host.\"http://m\".host",
                "nested",
            ),
            ("mirrors = []", "mirrors", "unknown key"),
            (
                "server = \"https://m\"\nserver = \"https://n\"",
                "",
                "invalid TOML",
            ),
            ("proxy = \"my-proxy:8080\"", "proxy", "URL"),
        ];
        for (text, key, what) in cases {
            let e = parse(text, d.path()).unwrap_err();
            assert_eq!(e.key, *key, "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("hosts.toml"), "{msg}");
            assert!(msg.contains(what), "{text}: {msg}");
        }
        std::fs::write(d.path().join("not-a-cert.pem"), "hello").unwrap();
        let e = parse("ca = \"not-a-cert.pem\"", d.path()).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn directories_are_looked_up_like_containerd() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Nothing configured: the registry itself, http for loopback and
        // insecure registries.
        let h = registry_hosts(Some(r), "127.0.0.1:5000", &[]).unwrap();
        assert_eq!(h.dir, None);
        assert_eq!(urls(&h.hosts), ["http://127.0.0.1:5000"]);
        let h = registry_hosts(Some(r), "reg.example", &["reg.example".into()]).unwrap();
        assert_eq!(urls(&h.hosts), ["http://reg.example"]);
        let h = registry_hosts(None, "reg.example", &[]).unwrap();
        assert_eq!(urls(&h.hosts), ["https://reg.example"]);

        std::fs::create_dir(r.join("_default")).unwrap();
        std::fs::write(
            r.join("_default/hosts.toml"),
            "[host.\"https://default-mirror\"]\n",
        )
        .unwrap();
        let h = registry_hosts(Some(r), "quay.io", &[]).unwrap();
        assert_eq!(h.dir, Some(r.join("_default")));
        assert_eq!(
            urls(&h.hosts),
            ["https://default-mirror", "https://quay.io"]
        );

        std::fs::create_dir(r.join("reg.example:5000")).unwrap();
        std::fs::write(
            r.join("reg.example:5000/hosts.toml"),
            "server = \"http://colon\"\n",
        )
        .unwrap();
        let h = registry_hosts(Some(r), "reg.example:5000", &[]).unwrap();
        assert_eq!(urls(&h.hosts), ["http://colon"]);
        std::fs::create_dir(r.join("reg.example_5000_")).unwrap();
        std::fs::write(
            r.join("reg.example_5000_/hosts.toml"),
            "server = \"http://underscore\"\n",
        )
        .unwrap();
        let h = registry_hosts(Some(r), "reg.example:5000", &[]).unwrap();
        assert_eq!(urls(&h.hosts), ["http://underscore"], "host_port_ first");

        // A directory without hosts.toml: Docker's certificate layout.
        std::fs::create_dir(r.join("private.example")).unwrap();
        std::fs::write(r.join("private.example/ca.crt"), CA).unwrap();
        let h = registry_hosts(Some(r), "private.example", &[]).unwrap();
        assert_eq!(urls(&h.hosts), ["https://private.example"]);
        assert_eq!(h.hosts[0].ca.len(), 1);
        std::fs::write(r.join("private.example/client.cert"), CA).unwrap();
        let e = registry_hosts(Some(r), "private.example", &[]).unwrap_err();
        assert!(e.to_string().contains("client.cert"), "{e}");

        // A malformed file fails the lookup, naming the file.
        std::fs::write(r.join("_default/hosts.toml"), "[host.\"https://m\"\n").unwrap();
        let e = registry_hosts(Some(r), "quay.io", &[]).unwrap_err();
        assert_eq!(e.file, r.join("_default/hosts.toml"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "1", "s", "1x", "-1s", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("registry.example.com"));
        assert!(!is_loopback_registry("localhost.evil.com:5000"));
    }
}
