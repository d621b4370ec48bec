//! The harness for kernel tests: network namespaces the test creates (and
//! always deletes), a way to run code or commands inside them, and a CNI
//! runner that execs plugin binaries as a runtime would. Nothing here touches
//! the root namespace's links, routes or rules.

pub mod agent;
pub mod cluster;
pub mod etcd;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test run: `prefix` + pid + counter.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// True when the test may run. Without root it skips with a reason, except
/// under `CI=true`, where a skip is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require(test, root, "root", "network namespaces")
}

/// The skip rule every `require_*` shares: true when `met`; else, under
/// `CI=true`, a panic (a skip is a failure there), otherwise a `SKIP` line
/// naming what the test `needs` and `how` to get it, and false.
pub fn require(test: &str, met: bool, needs: &str, how: &str) -> bool {
    if met {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {needs} ({how}), and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs {needs} ({how})");
    false
}

/// A network namespace pinned at /run/netns/NAME, deleted on drop.
pub struct TestNs {
    name: String,
    path: PathBuf,
}

impl TestNs {
    /// Creates a fresh namespace with `lo` up.
    pub fn new(tag: &str) -> Result<TestNs> {
        let name = unique(&format!("kn-{tag}-"));
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = TestNs {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ns.sh(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, as CNI_NETNS takes it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread inside the namespace (processes it spawns start there too).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.path, f)
    }

    /// Runs a command inside the namespace and fails unless it succeeds; returns stdout.
    pub fn sh(&self, argv: &[&str]) -> Result<String> {
        let out = self
            .cmd(argv)
            .output()
            .with_context(|| format!("run {argv:?} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {}: {}: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs inside the namespace (via nsenter, keeping the mount namespace).
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let (program, args) = argv
            .split_first()
            .map_or(("true", &[][..]), |(p, a)| (*p, a));
        let mut c = ns_command(Some(&self.path), program);
        c.args(args);
        c.stdin(Stdio::null());
        c
    }

    /// A veth from this namespace (named `host`, up) to `peer` (`eth0`
    /// with `cidr`, up).
    pub fn plug(&self, host: &str, peer: &TestNs, cidr: &str) -> Result<()> {
        let add = [
            "ip",
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ];
        self.sh(&add)?;
        self.sh(&["ip", "link", "set", host, "up"])?;
        peer.sh(&["ip", "addr", "add", cidr, "dev", "eth0"])?;
        peer.sh(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// True when one ping to `ip` is answered within a second.
    pub fn ping(&self, ip: &str) -> bool {
        self.cmd(&["ping", "-c", "1", "-W", "1", "-q", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a fresh thread inside the network namespace pinned at
/// `netns` (e.g. `/run/netns/NAME`); the caller's thread is never moved.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (scoped, fresh) thread with an fd we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!(
                    "setns {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", netns.display()))?
    })
}

/// A command for `program`, run inside `netns` when given (through
/// `nsenter --net`, which keeps the mount namespace, so cgroups stay
/// visible to runc), else in the caller's namespace. nsenter execs the
/// program, so the child's pid is the program's own.
pub fn ns_command(netns: Option<&Path>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `n` distinct TCP ports free on `host` in the caller's namespace (all
/// bound at once, then released; the caller binds them again soon after,
/// as every port picker does).
pub fn free_ports(host: &str, n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((host, 0)).with_context(|| format!("bind {host}:0")))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A free TCP port on 127.0.0.1 of the caller's namespace (bound then
/// released; the caller binds it again soon after).
pub fn free_port() -> Result<u16> {
    Ok(free_ports("127.0.0.1", 1)?[0])
}

fn run_ok(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| format!("run {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The directory holding the workspace's built binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("KNODE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of our binaries; fails the test with a hint if it was not built.
pub fn our_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --bins` first (or `make test`)",
        p.display()
    );
    p
}

/// The reference CNI plugins' directory.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";

/// One CNI invocation.
#[derive(Debug, Clone)]
pub struct CniCall {
    pub plugin: PathBuf,
    pub command: &'static str,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub cni_args: String,
    /// `CNI_PATH`; `None`: our bin dir, then the reference plugins'.
    pub cni_path: Option<String>,
}

impl CniCall {
    /// A call of `command` for container `id` at `ifname` in `netns`.
    pub fn new(
        plugin: &Path,
        command: &'static str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
    ) -> CniCall {
        CniCall {
            plugin: plugin.to_path_buf(),
            command,
            container_id: id.to_string(),
            netns: netns.map(Path::to_path_buf),
            ifname: ifname.to_string(),
            cni_args: String::new(),
            cni_path: None,
        }
    }

    /// Runs the plugin in the calling thread's namespace with `conf` on stdin.
    pub fn run(&self, conf: &Value) -> Result<CniOutcome> {
        let cni_path = self
            .cni_path
            .clone()
            .unwrap_or_else(|| format!("{}:{REFERENCE_CNI_DIR}", bin_dir().display()));
        let mut child = Command::new(&self.plugin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env(
                "CNI_NETNS",
                self.netns
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.cni_args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", self.plugin.display()))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out: Output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Ok(CniOutcome {
            ok: out.status.success(),
            json,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct CniOutcome {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    /// The result, or an error carrying the plugin's output.
    pub fn expect_ok(self, what: &str) -> Result<Value> {
        if !self.ok {
            bail!("{what} failed: {} {}", self.stdout, self.stderr);
        }
        Ok(self.json)
    }

    /// The error code of a failed call.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
}

/// The first IPv4 address (without prefix) of a result.
pub fn first_ip(result: &Value) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        let (addr, _) = a.split_once('/')?;
        addr.contains('.').then(|| addr.to_string())
    })
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(unique(&format!("knode-{tag}-")));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
