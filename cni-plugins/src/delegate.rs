//! Calling an IPAM plugin as the spec says: find `ipam.type` in `CNI_PATH`,
//! run it with the same environment and config, parse its result or error.
//! Our own `knode-host-local` runs in-process instead: same code, same
//! on-disk state, without a second exec per pod.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use crate::ipam;
use crate::skel::{CmdArgs, CniError, CniResult, Code, Command, Context, Result};

/// The IPAM plugin name served in-process.
pub const IN_PROCESS: &str = "knode-host-local";

/// Checks that an IPAM type is a plain binary name, so it can never name a
/// path outside `CNI_PATH`.
pub fn validate_type(t: &str) -> Result<()> {
    if t.is_empty()
        || t == "."
        || t == ".."
        || t.contains('/')
        || t.chars().any(|c| c.is_control() || c == '\0')
    {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("ipam.type: {t:?} is not a plugin name"),
        ));
    }
    Ok(())
}

/// Runs `cmd` on IPAM plugin `ipam_type` for this invocation. ADD returns
/// the result; the other commands return `None`.
pub fn call(args: &CmdArgs, ipam_type: &str, cmd: Command) -> Result<Option<CniResult>> {
    validate_type(ipam_type)?;
    if ipam_type == IN_PROCESS {
        return match cmd {
            Command::Add => ipam::add(args).map(Some),
            Command::Del => ipam::del(args).map(|_| None),
            Command::Check => ipam::check(args).map(|_| None),
            Command::Gc => ipam::gc(args).map(|_| None),
            Command::Status => ipam::status(args).map(|_| None),
            Command::Version => Ok(None),
        };
    }
    exec(args, ipam_type, cmd)
}

fn find(args: &CmdArgs, name: &str) -> Result<PathBuf> {
    args.path
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = args.path.iter().map(|p| p.display().to_string()).collect();
            CniError::new(
                Code::InvalidConfig,
                format!(
                    "ipam.type: plugin {name:?} not found in CNI_PATH {}",
                    dirs.join(":")
                ),
            )
        })
}

fn exec(args: &CmdArgs, name: &str, cmd: Command) -> Result<Option<CniResult>> {
    let bin = find(args, name)?;
    let cni_args: Vec<String> = args.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path: Vec<String> = args.path.iter().map(|p| p.display().to_string()).collect();
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", &args.container_id)
        .env(
            "CNI_NETNS",
            args.netns
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", cni_args.join(";"))
        .env("CNI_PATH", path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .cni(Code::Ipam, || format!("run ipam plugin {}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&args.stdin)
            .cni(Code::Ipam, || format!("write config to ipam plugin {name}"))?;
    }
    let out = child
        .wait_with_output()
        .cni(Code::Ipam, || format!("wait for ipam plugin {name}"))?;
    if !out.status.success() {
        return Err(plugin_error(name, &out.stdout, &out.stderr));
    }
    if cmd != Command::Add {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).cni(Code::Ipam, || {
        format!("decode result of ipam plugin {name}")
    })?;
    CniResult::from_value(v).map(Some)
}

/// Turns a failed plugin's error JSON into our error, keeping its code.
fn plugin_error(name: &str, stdout: &[u8], stderr: &[u8]) -> CniError {
    #[derive(serde::Deserialize)]
    struct Wire {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<Wire>(stdout) {
        Ok(w) => {
            let code = match w.code {
                1 => Code::IncompatibleVersion,
                2 => Code::UnsupportedField,
                3 => Code::UnknownContainer,
                4 => Code::InvalidEnv,
                5 => Code::Io,
                6 => Code::Decode,
                7 => Code::InvalidConfig,
                11 => Code::TryAgainLater,
                50 => Code::NotAvailable,
                51 => Code::LimitedConnectivity,
                100 => Code::RangeExhausted,
                _ => Code::Ipam,
            };
            let e = CniError::new(code, format!("ipam {name}: {}", w.msg));
            if w.details.is_empty() {
                e
            } else {
                e.with_details(w.details)
            }
        }
        Err(_) => CniError::new(Code::Ipam, format!("ipam plugin {name} failed"))
            .with_details(String::from_utf8_lossy(stderr).trim()),
    }
}
