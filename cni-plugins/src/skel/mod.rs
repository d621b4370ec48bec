//! The skel every knode CNI binary runs on: it reads the CNI environment and
//! stdin, validates them, dispatches ADD/DEL/CHECK/STATUS/GC/VERSION to a
//! [`Plugin`], and prints the result or the spec's error JSON. It owns no
//! networking; plugins must not print anything themselves.

pub mod error;
pub mod types;

use std::io::{Read, Write};
use std::path::PathBuf;

pub use error::{CniError, Code, Context, Result};
pub use types::{Attachment, CniResult, Dns, Interface, IpConfig, NetConf, Route};

use types::{version_at_least, REPORTED_VERSIONS};

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The spec's name for the command.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// Everything one invocation received, validated.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    /// `CNI_CONTAINERID`; empty for GC and STATUS.
    pub container_id: String,
    /// `CNI_NETNS`; `None` when unset (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; empty for GC and STATUS.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on ':'.
    pub path: Vec<PathBuf>,
    /// The raw network config.
    pub stdin: Vec<u8>,
    /// Its common fields.
    pub conf: NetConf,
}

impl CmdArgs {
    /// Validates an environment (as `(name, value)` lookups) and stdin.
    /// Pure, so it can be fuzzed and unit-tested without touching the process env.
    pub fn from_env(env: impl Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Result<CmdArgs> {
        let raw = env("CNI_COMMAND")
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_COMMAND: required"))?;
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                Code::InvalidEnv,
                format!("CNI_COMMAND: unknown command {raw:?} (want ADD, DEL, CHECK, STATUS, GC or VERSION)"),
            )
        })?;
        let mut a = CmdArgs {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: Vec::new(),
            path: Vec::new(),
            stdin,
            conf: NetConf::default(),
        };
        if command == Command::Version {
            return Ok(a);
        }
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            let id = env("CNI_CONTAINERID").unwrap_or_default();
            validate_container_id(&id)?;
            a.container_id = id;
            let ifname = env("CNI_IFNAME").unwrap_or_default();
            validate_ifname(&ifname)?;
            a.ifname = ifname;
            match env("CNI_NETNS").filter(|s| !s.is_empty()) {
                Some(ns) => a.netns = Some(PathBuf::from(ns)),
                None if command == Command::Del => {}
                None => return Err(CniError::new(Code::InvalidEnv, "CNI_NETNS: required")),
            }
            let path = env("CNI_PATH").filter(|s| !s.is_empty());
            let path = path.ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_PATH: required"))?;
            a.path = path
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        } else if let Some(path) = env("CNI_PATH") {
            a.path = path
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        a.args = parse_cni_args(&env("CNI_ARGS").unwrap_or_default())?;
        a.conf = NetConf::parse(&a.stdin)?;
        let min = match command {
            Command::Check => Some("0.4.0"),
            Command::Status | Command::Gc => Some("1.1.0"),
            _ => None,
        };
        if let Some(min) = min {
            if !version_at_least(&a.conf.cni_version, min) {
                return Err(CniError::new(
                    Code::IncompatibleVersion,
                    format!(
                        "cniVersion {} does not allow {} (needs {min} or later)",
                        a.conf.cni_version,
                        command.as_str()
                    ),
                ));
            }
        }
        Ok(a)
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks `CNI_CONTAINERID` as the spec describes it: non-empty, alphanumeric
/// plus `_`, `.` and `-`, starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<()> {
    validate_spec_name(id, "CNI_CONTAINERID", Code::InvalidEnv)
}

/// The spec's rule for container IDs and network names: an alphanumeric,
/// then alphanumerics, `_`, `.` and `-`. `what` names the field in errors.
fn validate_spec_name(s: &str, what: &str, code: Code) -> Result<()> {
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else if s.is_empty() {
        Err(CniError::new(code, format!("{what}: required")))
    } else {
        Err(CniError::new(
            code,
            format!("{what}: {s:?} must be alphanumeric, '_', '.' or '-', starting alphanumeric"),
        ))
    }
}

/// Checks `CNI_IFNAME` as the kernel and the spec want it: 1 to 15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "required"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "must not contain '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(CniError::new(
        Code::InvalidEnv,
        format!("CNI_IFNAME: {name:?} {why}"),
    ))
}

/// The spec's network name rule (as for container IDs). Names end up in
/// file paths (the IPAM data dir) and iptables comments.
pub fn validate_network_name(name: &str) -> Result<()> {
    validate_spec_name(name, "name", Code::InvalidConfig)
}

/// Parses `K1=V1;K2=V2`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// The operations of one plugin. STATUS and GC default to "nothing to do".
pub trait Plugin {
    /// ADD: attach and return the result.
    fn add(&self, args: &CmdArgs) -> Result<CniResult>;
    /// DEL: detach; must succeed when parts are already gone.
    fn del(&self, args: &CmdArgs) -> Result<()>;
    /// CHECK: verify the attachment still matches `prevResult`.
    fn check(&self, args: &CmdArgs) -> Result<()>;
    /// STATUS: can the plugin serve ADD now?
    fn status(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
    /// GC: release everything not in `cni.dev/valid-attachments`.
    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}

/// Runs one command against `plugin` and returns (stdout text, exit code).
pub fn run(
    plugin: &dyn Plugin,
    env: impl Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> (String, i32) {
    let version_hint = || {
        serde_json::from_slice::<serde_json::Value>(&stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .filter(|v| types::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| "1.1.0".to_string())
    };
    let args = match CmdArgs::from_env(env, stdin.clone()) {
        Ok(a) => a,
        Err(e) => return (e.to_json(&version_hint()), 1),
    };
    let version = args.conf.cni_version.clone();
    let out = match args.command {
        Command::Version => {
            let v = serde_json::json!({ "cniVersion": version_hint(), "supportedVersions": REPORTED_VERSIONS });
            Ok(v.to_string())
        }
        Command::Add => plugin.add(&args).map(|r| r.to_json(&version).to_string()),
        Command::Del => plugin.del(&args).map(|_| String::new()),
        Command::Check => plugin.check(&args).map(|_| String::new()),
        Command::Status => plugin.status(&args).map(|_| String::new()),
        Command::Gc => plugin.gc(&args).map(|_| String::new()),
    };
    match out {
        Ok(s) => (s, 0),
        Err(e) => (e.to_json(&version), 1),
    }
}

/// The binary entry point: runs against the process environment and stdin,
/// prints the outcome and exits.
pub fn plugin_main(plugin: &dyn Plugin) -> ! {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (out, code) = match read {
        Ok(_) => run(plugin, |k| std::env::var(k).ok(), stdin),
        Err(e) => (
            CniError::new(Code::Io, "read network config from stdin")
                .with_details(e)
                .to_json("1.1.0"),
            1,
        ),
    };
    let mut so = std::io::stdout().lock();
    // Nothing useful can be done if stdout is gone; the exit code still tells.
    let _ = so.write_all(out.as_bytes()).and_then(|_| so.flush());
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"net","type":"x"}"#;

    #[test]
    fn add_requires_netns_ifname_and_path() {
        let e = CmdArgs::from_env(
            env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]),
            CONF.to_vec(),
        )
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.msg.starts_with("CNI_IFNAME"), "{}", e.msg);
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt"),
        ];
        let e = CmdArgs::from_env(env(&base), CONF.to_vec()).unwrap_err();
        assert_eq!(e.msg, "CNI_NETNS: required");
        let mut ok = base.to_vec();
        ok.push(("CNI_NETNS", "/run/netns/x"));
        ok.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"));
        let a = CmdArgs::from_env(env(&ok), CONF.to_vec()).unwrap();
        assert_eq!(a.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(a.conf.name, "net");
    }

    #[test]
    fn del_without_netns_is_fine() {
        let a = CmdArgs::from_env(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/opt"),
            ]),
            CONF.to_vec(),
        )
        .unwrap();
        assert!(a.netns.is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id("abc_1.2-x").is_ok());
        assert!(validate_ifname("averyveryverylongname").is_err());
        assert!(validate_ifname("eth 0").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(parse_cni_args("a=b;novalue").is_err());
    }

    #[test]
    fn check_needs_0_4_and_gc_needs_1_1() {
        let e = CmdArgs::from_env(
            env(&[("CNI_COMMAND", "GC")]),
            br#"{"cniVersion":"1.0.0","name":"net","type":"x"}"#.to_vec(),
        )
        .unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
    }

    struct Nop;
    impl Plugin for Nop {
        fn add(&self, _: &CmdArgs) -> Result<CniResult> {
            Ok(CniResult::default())
        }
        fn del(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn version_lists_supported_versions() {
        let (out, code) = run(
            &Nop,
            env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#.to_vec(),
        );
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (out, code) = run(&Nop, env(&[("CNI_COMMAND", "BOGUS")]), Vec::new());
        assert_eq!(code, 1);
        assert!(out.contains("\"code\":4"), "{out}");
    }
}
