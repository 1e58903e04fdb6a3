//! Values in `hosts.toml` that need more than TOML: host URLs, split the
//! way containerd reads them, and Go durations (`dial_timeout`).

use super::Scheme;
use std::time::Duration;

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
