//! Runs one CNI plugin binary as the spec says: the `CNI_*` environment,
//! the config on stdin, the result (or the spec's error JSON) on stdout.
//! Never through a shell; a plugin that hangs is killed with its process
//! group after the timeout. It knows nothing of lists, chaining or caching.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The per-invocation parameters (everything but the config).
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: &'static str,
    pub container_id: &'a str,
    /// Empty when there is no namespace (allowed for DEL).
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

/// The plugin binary `ty` in `bin_dir`, or an error saying it is missing.
pub fn find(bin_dir: &Path, ty: &str) -> Result<PathBuf> {
    super::conf::check_type(ty).context("plugin type")?;
    let path = bin_dir.join(ty);
    if !path.is_file() {
        bail!("CNI plugin {ty:?} not found in {}", bin_dir.display());
    }
    Ok(path)
}

/// Runs plugin `ty` from `bin_dir` with `conf` on stdin and returns its
/// stdout. A failure names the command and the plugin and carries the
/// plugin's error (`[code] msg: details`), or its stderr when it printed
/// no error JSON.
pub async fn run(
    bin_dir: &Path,
    ty: &str,
    inv: Invocation<'_>,
    conf: &Value,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let what = format!("CNI {} {ty}", inv.command);
    let path = find(bin_dir, ty).with_context(|| what.clone())?;
    let mut cmd = tokio::process::Command::new(&path);
    // The plugin inherits our environment (PATH finds iptables), as with
    // libcni, but no stray CNI_* of ours.
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn(&mut cmd).await.with_context(|| what.clone())?;
    let pid = child.id();
    let input = conf.to_string().into_bytes();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let io = async {
        let write = async move {
            if let Some(mut s) = stdin {
                // A plugin may exit without reading its config; its exit
                // status says what happened, not our broken pipe.
                let _ = s.write_all(&input).await;
            }
        };
        let (_, out, err) = tokio::join!(write, read_all(stdout), read_all(stderr));
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = match tokio::time::timeout(timeout, io).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            bail!("{what}: no answer after {timeout:?}; killed it");
        }
    };
    let status = status.with_context(|| format!("{what}: wait"))?;
    let out = out.with_context(|| format!("{what}: read stdout"))?;
    let err = err.with_context(|| format!("{what}: read stderr"))?;
    if !status.success() {
        return Err(anyhow!("{what}: {}", plugin_error(status, &out, &err)));
    }
    Ok(out)
}

/// Spawns, retrying while the binary is busy being written (ETXTBSY: a
/// plugin being installed, or a descriptor briefly inherited by another
/// fork), as libcni does.
async fn spawn(cmd: &mut tokio::process::Command) -> Result<tokio::process::Child> {
    let mut delay = Duration::from_millis(10);
    for _ in 0..6 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            r => return r.context("start the plugin"),
        }
    }
    cmd.spawn().context("start the plugin")
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// The message of a failed call: the spec's error JSON from stdout when
/// there is one, else stderr, else the exit status.
fn plugin_error(status: std::process::ExitStatus, out: &[u8], err: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(out) {
        if let Some(msg) = v.get("msg").and_then(Value::as_str) {
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
            return match v.get("details").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("[{code}] {msg}: {d}"),
                _ => format!("[{code}] {msg}"),
            };
        }
    }
    let err = String::from_utf8_lossy(err);
    let err = err.trim();
    if !err.is_empty() {
        return format!("{status}: {err}");
    }
    let out = String::from_utf8_lossy(out);
    match out.trim() {
        "" => format!("{status} with no error message"),
        o => format!("{status}: {o}"),
    }
}
