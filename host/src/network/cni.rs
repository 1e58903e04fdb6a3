//! Runs CNI plugins (the CNI 1.0 exec protocol): a network configuration
//! list is ADDed plugin by plugin, each getting the previous result, and
//! DELeted in reverse with the cached result.
//!
//! Written here rather than taken from a crate: the Rust CNI crates are for
//! writing plugins, not for running them, and the runtime side of the
//! protocol is a process spawn with environment variables and JSON on
//! stdin/stdout.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Longest a plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest plugin output read.
const MAX_OUTPUT: usize = 1 << 20;

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration.
    #[error("CNI config: {0}")]
    Config(String),
    /// A plugin binary is missing.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        /// Plugin type.
        plugin: String,
        /// Directories searched.
        dirs: String,
    },
    /// A plugin failed or answered nonsense.
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// ADD, DEL, …
        command: &'static str,
        /// Its error message.
        message: String,
    },
}

/// A loaded network configuration list and where its plugins live.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    name: String,
    version: String,
    plugins: Vec<Value>,
    bin_dirs: Vec<PathBuf>,
}

/// An IP the network gave the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    /// Address with prefix length, e.g. `10.88.0.5/16`.
    pub address: String,
    /// Gateway, if the plugin named one.
    pub gateway: Option<String>,
}

/// The final ADD result, kept with the sandbox for DEL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// The result JSON as the last plugin printed it.
    pub raw: Value,
}

impl CniResult {
    /// The pod's IPs.
    pub fn ips(&self) -> Vec<PodIp> {
        self.raw["ips"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| {
                        Some(PodIp {
                            address: ip["address"].as_str()?.to_string(),
                            gateway: ip["gateway"].as_str().map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Routes as (destination, gateway) pairs.
    pub fn routes(&self) -> Vec<(String, Option<String>)> {
        self.raw["routes"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        Some((
                            r["dst"].as_str()?.to_string(),
                            r["gw"].as_str().map(str::to_string),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Checks a value that goes into `CNI_ARGS` (`K=V;K=V`, which has no
/// escaping): a `;` or `=` in it would add arguments of the caller's
/// choosing (`web;IP=10.0.0.9`). Whitespace and control characters are
/// refused too. The error names `field`.
pub fn check_cni_arg(field: &str, value: &str) -> Result<(), String> {
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, ';' | '=') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{field}: {value:?} holds {c:?}, which CNI_ARGS cannot carry"
        ));
    }
    Ok(())
}

/// Who the plugins are plumbing (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS).
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The sandbox id.
    pub container_id: &'a str,
    /// Path of the pod's network namespace.
    pub netns: &'a Path,
    /// Interface name inside it.
    pub ifname: &'a str,
    /// Pod name and namespace, passed as K8S_POD_* CNI_ARGS.
    pub pod: Option<(&'a str, &'a str)>,
    /// CNI capability arguments by capability name (`portMappings`,
    /// `bandwidth`, `dns`, `cgroupPath`, …): each plugin gets, as its
    /// `runtimeConfig`, those it declares in its `capabilities`.
    pub capability_args: &'a serde_json::Map<String, Value>,
}

/// The `runtimeConfig` a plugin gets: the capability arguments it declares
/// (`"capabilities": {"portMappings": true}`), as libcni passes them.
fn runtime_config(plugin_conf: &Value, args: &serde_json::Map<String, Value>) -> Option<Value> {
    let caps = plugin_conf["capabilities"].as_object()?;
    let rc: serde_json::Map<String, Value> = caps
        .iter()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(name, _)| Some((name.clone(), args.get(name)?.clone())))
        .collect();
    (!rc.is_empty()).then_some(Value::Object(rc))
}

impl CniNetwork {
    /// Loads the first `*.conflist`/`*.conf`/`*.json` (by name) in `conf_dir`.
    pub fn load_dir(conf_dir: &Path, bin_dirs: Vec<PathBuf>) -> Result<Self, CniError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
            .map_err(|e| CniError::Config(format!("reading {}: {e}", conf_dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let first = files.first().ok_or_else(|| {
            CniError::Config(format!(
                "no network configuration in {}",
                conf_dir.display()
            ))
        })?;
        let text = std::fs::read_to_string(first)
            .map_err(|e| CniError::Config(format!("reading {}: {e}", first.display())))?;
        Self::parse(&text, bin_dirs)
            .map_err(|e| CniError::Config(format!("{}: {e}", first.display())))
    }

    /// Parses a configuration list, or a single plugin configuration.
    pub fn parse(text: &str, bin_dirs: Vec<PathBuf>) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let name = v["name"].as_str().ok_or("missing \"name\"")?.to_string();
        let version = v["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
        let plugins = match v.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p.clone(),
            Some(_) => return Err("\"plugins\" must be a non-empty list".into()),
            None => vec![v.clone()],
        };
        for p in &plugins {
            let t = p["type"].as_str().ok_or("a plugin has no \"type\"")?;
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(format!("invalid plugin type {t:?}"));
            }
        }
        Ok(Self {
            name,
            version,
            plugins,
            bin_dirs,
        })
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.into(),
                dirs: self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    async fn exec(
        &self,
        command: &'static str,
        plugin_conf: &Value,
        prev: Option<&Value>,
        att: &Attachment<'_>,
    ) -> Result<Value, CniError> {
        let plugin = plugin_conf["type"].as_str().unwrap_or_default().to_string();
        let bin = self.find_plugin(&plugin)?;
        let mut conf = plugin_conf.clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(self.version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if let Some(rc) = runtime_config(plugin_conf, att.capability_args) {
            conf["runtimeConfig"] = rc;
        }
        let fail = |message: String| CniError::Plugin {
            plugin: plugin.clone(),
            command,
            message,
        };
        let mut args = String::from("IgnoreUnknown=1");
        if let Some((name, ns)) = att.pod {
            check_cni_arg("pod name", name).map_err(&fail)?;
            check_cni_arg("pod namespace", ns).map_err(&fail)?;
            args.push_str(&format!(
                ";K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={}",
                att.container_id
            ));
        }
        let path = std::env::join_paths(&self.bin_dirs).map_err(|e| fail(e.to_string()))?;
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", att.netns)
            .env("CNI_IFNAME", att.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", bin.display())))?;
        let input = serde_json::to_vec(&conf).map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| fail(format!("writing config: {e}")))?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("timed out after {} s", PLUGIN_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
        if !out.status.success() {
            // Plugins report errors as {"code":…, "msg":…, "details":…} on stdout.
            let msg = serde_json::from_slice::<Value>(stdout)
                .ok()
                .and_then(|v| {
                    let msg = v["msg"].as_str()?.to_string();
                    Some(match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg,
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(fail(format!("{} ({})", msg, out.status)));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(stdout).map_err(|e| fail(format!("unreadable result: {e}")))
    }

    /// Plumbs the pod's namespace; returns the final result.
    pub async fn add(&self, att: &Attachment<'_>) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        for (i, p) in self.plugins.iter().enumerate() {
            match self.exec("ADD", p, prev.as_ref(), att).await {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    // Undo what the earlier plugins did.
                    for q in self.plugins[..i].iter().rev() {
                        let _ = self.exec("DEL", q, prev.as_ref(), att).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(CniResult {
            raw: prev.unwrap_or(Value::Null),
        })
    }

    /// Releases what ADD set up. Every plugin is called even if one fails;
    /// the first failure is returned.
    pub async fn del(
        &self,
        att: &Attachment<'_>,
        result: Option<&CniResult>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for p in self.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", p, result.map(|r| &r.raw), att).await {
                tracing::warn!("CNI DEL: {e}");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_get_only_the_capability_args_they_declare() {
        let args: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "dns": {"servers": ["10.96.0.10"]}
        }))
        .unwrap();
        let portmap =
            json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": true}});
        assert_eq!(
            runtime_config(&portmap, &args),
            Some(
                json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
            )
        );
        let off = json!({"type": "x", "capabilities": {"dns": false}});
        assert_eq!(runtime_config(&off, &args), None);
        assert_eq!(runtime_config(&json!({"type": "bridge"}), &args), None);
    }

    #[test]
    fn parses_lists_and_single_configs() {
        let n = CniNetwork::parse(
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
            vec![],
        )
        .unwrap();
        assert_eq!(n.name(), "pods");
        assert_eq!(n.plugins.len(), 2);
        let n = CniNetwork::parse(r#"{"name":"one","type":"ptp"}"#, vec![]).unwrap();
        assert_eq!(n.plugins.len(), 1);
        for bad in [
            r#"{"plugins":[]}"#,
            r#"{"name":"x","plugins":[]}"#,
            r#"{"name":"x","type":"../evil"}"#,
            "nope",
        ] {
            assert!(CniNetwork::parse(bad, vec![]).is_err(), "{bad}");
        }
    }

    #[test]
    fn result_accessors() {
        let r = CniResult {
            raw: json!({"ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.88.0.1"}]}),
        };
        assert_eq!(
            r.ips(),
            vec![PodIp {
                address: "10.88.0.5/16".into(),
                gateway: Some("10.88.0.1".into())
            }]
        );
        assert_eq!(
            r.routes(),
            vec![("0.0.0.0/0".to_string(), Some("10.88.0.1".to_string()))]
        );
        assert!(CniResult { raw: Value::Null }.ips().is_empty());
    }

    #[tokio::test]
    async fn missing_plugin_is_named() {
        let n = CniNetwork::parse(
            r#"{"name":"x","type":"nosuchplugin"}"#,
            vec!["/nonexistent".into()],
        )
        .unwrap();
        let att = Attachment {
            container_id: "c",
            netns: Path::new("/proc/self/ns/net"),
            ifname: "eth0",
            pod: None,
            capability_args: &serde_json::Map::new(),
        };
        let e = n.add(&att).await.unwrap_err().to_string();
        assert!(
            e.contains("nosuchplugin") && e.contains("/nonexistent"),
            "{e}"
        );
    }
}
