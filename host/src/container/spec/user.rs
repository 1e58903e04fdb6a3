//! The process user and groups, resolved against the image's account files.

use super::{bad, image_section, SpecError};
use moat_proto::cri::LinuxContainerSecurityContext;

/// One `/etc/passwd` entry: (name, uid, gid).
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// One `/etc/group` entry: (name, gid, members).
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves the process user: the request's run_as_user/username/group, else
/// the image's `User` ("name", "uid", "name:group", "uid:gid"), against the
/// image's account files. Returns (uid, gid, additional gids).
pub fn resolve_user(
    sc: Option<&LinuxContainerSecurityContext>,
    image: &serde_json::Value,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let id = |v: i64, field: &str| {
        u32::try_from(v).map_err(|_| bad(field, format!("{v} is not a valid id")))
    };
    if let Some(sc) = sc {
        if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
            return Err(bad(
                "run_as_group",
                "only allowed together with run_as_user or run_as_username",
            ));
        }
    }
    let image_user = image_section(image)["User"].as_str().unwrap_or("");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.to_string(), None),
    };
    let (user_field, user) = match sc {
        Some(sc) if sc.run_as_user.is_some() => (
            "run_as_user",
            sc.run_as_user
                .map(|v| v.value.to_string())
                .unwrap_or_default(),
        ),
        Some(sc) if !sc.run_as_username.is_empty() => {
            ("run_as_username", sc.run_as_username.clone())
        }
        _ => ("image config User", user_part),
    };
    let (uid, name, primary) = if user.is_empty() {
        (0, Some("root".to_string()), 0)
    } else if let Ok(uid) = user.parse::<i64>() {
        let uid = id(uid, user_field)?;
        let entry = passwd_entries(passwd).find(|e| e.1 == uid);
        (
            uid,
            entry.map(|e| e.0.to_string()),
            entry.map(|e| e.2).unwrap_or(0),
        )
    } else {
        let Some(e) = passwd_entries(passwd).find(|e| e.0 == user) else {
            return Err(bad(
                user_field,
                format!("user {user:?} is not in the image's /etc/passwd"),
            ));
        };
        (e.1, Some(user.clone()), e.2)
    };
    let gid = match (sc.and_then(|s| s.run_as_group), group_part) {
        (Some(g), _) => id(g.value, "run_as_group")?,
        (None, Some(g)) if user_field == "image config User" => match g.parse::<i64>() {
            Ok(n) => id(n, "image config User")?,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| {
                    bad(
                        "image config User",
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
        },
        _ => primary,
    };
    let mut extra: Vec<u32> = Vec::new();
    if let Some(name) = &name {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && g != gid && !extra.contains(&g) {
                extra.push(g);
            }
        }
    }
    if let Some(sc) = sc {
        for &g in &sc.supplemental_groups {
            let g = id(g, "supplemental_groups")?;
            if !extra.contains(&g) {
                extra.push(g);
            }
        }
    }
    Ok((uid, gid, extra))
}
