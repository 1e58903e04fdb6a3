//! The process: arguments by Kubernetes' command/args rules over the
//! image's entrypoint/cmd, and the environment.

use super::{bad, image_section, strings, SpecError};
use moat_proto::cri::ContainerConfig;

/// The process arguments by Kubernetes' rules: `command` replaces the
/// image's entrypoint (and drops its cmd), `args` replaces its cmd.
pub fn process_args(
    config: &ContainerConfig,
    image: &serde_json::Value,
) -> Result<Vec<String>, SpecError> {
    let img = image_section(image);
    let mut args = if config.command.is_empty() {
        strings(&img["Entrypoint"])
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(strings(&img["Cmd"]));
    }
    if args.is_empty() {
        return Err(bad(
            "config.command",
            "neither the request nor the image says what to run",
        ));
    }
    Ok(args)
}

/// Environment: the image's, overridden and extended by the request's.
pub fn environment(
    config: &ContainerConfig,
    image: &serde_json::Value,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    for kv in strings(&image_section(image)["Env"]) {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k, v);
    }
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(bad(
                &format!("config.envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        if kv.value.contains('\0') {
            return Err(bad(&format!("config.envs[{i}].value"), "contains NUL"));
        }
        set(&mut env, &kv.key, &kv.value);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut env,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}
