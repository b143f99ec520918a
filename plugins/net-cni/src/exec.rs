//! Running one CNI plugin binary (spec 1.0): the `CNI_*` environment, the network config on stdin with
//! `runtimeConfig` (only the capabilities the plugin declares) and `prevResult`, the result or the error
//! object on stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::conf::ConfList;

/// A plugin taking longer than this is killed: a stuck plugin must not hold a pod's setup forever.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NotFound { plugin: String, dirs: String },
    #[error("cannot run CNI plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} timed out after {secs} s")]
    Timeout {
        plugin: String,
        command: &'static str,
        secs: u64,
    },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{details}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} {command} printed an invalid result: {source}")]
    BadResult {
        plugin: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The fixed part of every call for one pod.
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    /// Values for the capabilities plugins may declare (`portMappings`, `ipRanges`, `cgroupPath`, …).
    pub runtime_config: &'a Map<String, Value>,
}

pub fn find_binary(ty: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(ty)).find(|p| p.is_file())
}

/// The config a plugin reads on stdin.
pub fn stdin_config(
    plugin: &Map<String, Value>,
    list: &ConfList,
    runtime_config: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        let rc: Map<String, Value> = caps
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(k, _)| runtime_config.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Value::Object(conf)
}

/// Runs one plugin; returns its result for ADD (the JSON it printed), `None` for DEL and CHECK.
pub async fn run(
    inv: &Invocation<'_>,
    command: Command,
    plugin: &Map<String, Value>,
    list: &ConfList,
    prev_result: Option<&Value>,
) -> Result<Option<Value>, ExecError> {
    let ty = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let path = find_binary(&ty, inv.bin_dirs).ok_or_else(|| ExecError::NotFound {
        plugin: ty.clone(),
        dirs: join_paths(inv.bin_dirs),
    })?;
    let stdin = stdin_config(plugin, list, inv.runtime_config, prev_result).to_string();
    let spawn_err = |source| ExecError::Spawn {
        path: path.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path(inv.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes()).await.map_err(spawn_err)?;
    }
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ExecError::Timeout {
            plugin: ty.clone(),
            command: command.as_str(),
            secs: PLUGIN_TIMEOUT.as_secs(),
        })?
        .map_err(spawn_err)?;
    if !output.status.success() {
        return Err(plugin_error(&ty, command, &output));
    }
    if command != Command::Add {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|source| ExecError::BadResult {
            plugin: ty,
            command: command.as_str(),
            source,
        })
}

/// The spec's error object from stdout, or stderr when the plugin printed none.
fn plugin_error(ty: &str, command: Command, output: &std::process::Output) -> ExecError {
    let parsed: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let (code, msg, details) = match &parsed {
        Some(v) if v.get("msg").is_some() => (
            v["code"].as_u64().unwrap_or(0),
            v["msg"].as_str().unwrap_or_default().to_string(),
            v["details"].as_str().unwrap_or_default().to_string(),
        ),
        _ => (
            0,
            format!("{} ({})", String::from_utf8_lossy(&output.stderr).trim(), output.status),
            String::new(),
        ),
    };
    ExecError::Plugin {
        plugin: ty.to_string(),
        command: command.as_str(),
        code,
        msg,
        details: if details.is_empty() {
            details
        } else {
            format!("; {details}")
        },
    }
}

fn cni_path(dirs: &[PathBuf]) -> std::ffi::OsString {
    std::env::join_paths(dirs).unwrap_or_default()
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_carries_name_version_declared_capabilities_and_prev_result() {
        let list = ConfList::parse(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            Path::new("x"),
        )
        .unwrap();
        let mut rc = Map::new();
        rc.insert("portMappings".into(), serde_json::json!([{"hostPort": 80}]));
        rc.insert("bandwidth".into(), serde_json::json!({"ingressRate": 1}));
        rc.insert("ipRanges".into(), serde_json::json!([]));
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": []});
        let v = stdin_config(&list.plugins[0], &list, &rc, Some(&prev));
        assert_eq!(v["name"], "net");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 80}]})
        );
        assert_eq!(v["prevResult"], prev);
        let bare = stdin_config(&list.plugins[0], &list, &Map::new(), None);
        assert!(bare.get("runtimeConfig").is_none() && bare.get("prevResult").is_none());
    }
}
