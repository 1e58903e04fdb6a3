//! Parsing `hosts.toml`: the `server`, the `[host."…"]` mirror tables in
//! file order, and the settings each may carry (capabilities, CAs, a client
//! certificate, headers, `skip_verify`, `dial_timeout`, `proxy`); unknown
//! keys and settings moatd cannot honour are refused, naming the key.

use super::certs::{read_ca, read_client_identity};
use super::{
    parse_go_duration, parse_host_url, Capabilities, ClientIdentity, HostsError, RegistryHost,
    Role, Scheme,
};
use std::path::{Path, PathBuf};

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
    if let Some(v) = t.get("client") {
        host.client = Some(client_setting(v, dir).map_err(|r| err(&key("client"), r))?);
    }
    if let Some(v) = t.get("header") {
        host.headers = header_setting(v).map_err(|r| err(&key("header"), r))?;
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

/// `client`: a certificate path (its key in the same file), or a list of
/// paths or `[cert, key]` pairs, as containerd reads it. moatd presents one
/// client certificate per host, so a list must hold exactly one.
fn client_setting(v: &toml::Value, dir: &Path) -> Result<ClientIdentity, String> {
    const SHAPE: &str = "must be a path, or a list of one path or one [certificate, key] pair";
    let pair = |v: &toml::Value| -> Result<(String, Option<String>), String> {
        match v {
            toml::Value::String(s) => Ok((s.clone(), None)),
            toml::Value::Array(a) => match a.as_slice() {
                [toml::Value::String(c)] => Ok((c.clone(), None)),
                [toml::Value::String(c), toml::Value::String(k)] => {
                    Ok((c.clone(), Some(k.clone()).filter(|k| !k.is_empty())))
                }
                _ => Err(SHAPE.into()),
            },
            _ => Err(SHAPE.into()),
        }
    };
    let (cert, key) = match v {
        toml::Value::String(_) => pair(v)?,
        toml::Value::Array(list) => match list.as_slice() {
            [one] => pair(one)?,
            [] => return Err(SHAPE.into()),
            more => {
                return Err(format!(
                    "{} client certificates listed; moatd presents one per host",
                    more.len()
                ))
            }
        },
        _ => return Err(SHAPE.into()),
    };
    let abs = |p: &str| {
        if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            dir.join(p)
        }
    };
    let key = key.map(|k| abs(&k));
    read_client_identity(&abs(&cert), key.as_deref())
}

/// `header`: a table of header names to a value or a list of values.
fn header_setting(v: &toml::Value) -> Result<Vec<(String, String)>, String> {
    let table = v
        .as_table()
        .ok_or("must be a table such as [header] x-custom = \"value\"")?;
    let mut headers = Vec::new();
    for (name, value) in table {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        let values: Vec<&str> = match value {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{name}: must be a string or a list of strings"))?,
            _ => return Err(format!("{name}: must be a string or a list of strings")),
        };
        for v in values {
            http::HeaderValue::from_str(v)
                .map_err(|_| format!("{name}: {v:?} is not a valid header value"))?;
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}
