//! A `knode agent` process started by a test, with its own data and run
//! dirs, optionally inside a network namespace the test made, and the
//! `knode` CLI pointed at it. Every path it writes is in its temp dir, and
//! outside a test namespace its overlay and proxy are off: it never
//! programs the machine's own network. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{ns_command, our_bin, TempDir};

/// Node-side path flags (global) every agent gets inside its temp dir
/// unless the caller names them, so nothing lands in the machine's /etc,
/// /run or /var, and no agent reaches the machine's own containerd.
const PATH_DEFAULTS: [(&str, &str); 7] = [
    ("--containerd-socket", "no-containerd.sock"),
    ("--log-dir", "logs"),
    ("--netns-dir", "netns"),
    ("--cni-conf-dir", "cni-conf"),
    ("--cni-bin-dir", "cni-bin"),
    ("--cni-cache-dir", "cni-cache"),
    ("--pod-manifest-path", "manifests"),
];

/// True when `flags` set `name` (`--name value` or `--name=value`).
fn has_flag(flags: &[String], name: &str) -> bool {
    flags
        .iter()
        .any(|f| f == name || f.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
}

/// One agent; killed on drop.
pub struct Agent {
    dir: TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// Flags only `knode agent` takes (`--node-ip`, ...).
    agent_flags: Vec<String>,
    /// The network namespace the agent runs in (the node's "host" side).
    netns: Option<PathBuf>,
}

impl Agent {
    /// Starts an agent on the embedded control plane.
    pub fn start() -> Result<Agent> {
        Agent::start_with(&[])
    }

    /// Starts an agent with extra global flags (e.g. `--control-plane etcd://...`).
    /// It runs in the caller's namespace, so its overlay is disabled.
    pub fn start_with(extra: &[&str]) -> Result<Agent> {
        Agent::start_with_flags(extra, &[])
    }

    /// Starts an agent in the caller's namespace with extra agent flags
    /// (e.g. `--api-port`), its overlay and proxy disabled.
    pub fn start_with_agent_flags(agent_flags: &[&str]) -> Result<Agent> {
        Agent::start_with_flags(&[], agent_flags)
    }

    /// Starts an agent in the caller's namespace with extra global flags
    /// and extra agent flags.
    pub fn start_with_flags(extra: &[&str], agent_flags: &[&str]) -> Result<Agent> {
        let dir = TempDir::new("agent")?;
        let mut a = Agent {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            agent_flags: agent_flags.iter().map(|s| s.to_string()).collect(),
            netns: None,
        };
        a.spawn()?;
        Ok(a)
    }

    /// Starts an agent that runs pods: inside `netns` (so the bridge, veths
    /// and routes it makes stay in a namespace the test owns), with extra
    /// global flags `extra` (containerd socket, paths...) and agent flags.
    /// The node is `test-node` unless `agent_flags` has a `--node-name`;
    /// the subnet file is in the temp dir unless it has a `--subnet-file`.
    pub fn start_node(
        dir: TempDir,
        netns: &Path,
        extra: Vec<String>,
        agent_flags: Vec<String>,
    ) -> Result<Agent> {
        let mut a = Agent {
            dir,
            child: None,
            extra,
            agent_flags,
            netns: Some(netns.to_path_buf()),
        };
        a.spawn()?;
        Ok(a)
    }

    /// The agent's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The agent's `--run-dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The agent's API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("knode.sock")
    }

    /// The global flags that point a `knode` command at this agent.
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec![
            "--config".to_string(),
            "/dev/null".to_string(),
            "--data-dir".to_string(),
            self.data_dir().display().to_string(),
            "--run-dir".to_string(),
            self.run_dir().display().to_string(),
        ];
        f.extend(self.extra.iter().cloned());
        f
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start knode agent")?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops the agent (SIGKILL) and runs `knode agent --cleanup` with its
    /// flags, in its namespace.
    pub fn cleanup(&mut self) -> Result<Output> {
        self.kill9()?;
        Ok(self.command().arg("--cleanup").output()?)
    }

    /// `knode [global flags] agent [agent flags]` in the agent's namespace.
    fn command(&self) -> Command {
        let mut cmd = ns_command(self.netns.as_deref(), our_bin("knode"));
        cmd.args(self.flags());
        for (flag, rel) in PATH_DEFAULTS {
            if !has_flag(&self.extra, flag) {
                cmd.arg(flag).arg(self.dir.path().join(rel));
            }
        }
        cmd.arg("agent");
        let flags = &self.agent_flags;
        if !has_flag(flags, "--node-name") {
            cmd.args(["--node-name", "test-node"]);
        }
        // The Kubernetes API only when a test asks for it (port 6443 is
        // the machine's), and its kubeconfig never in /etc.
        if !has_flag(flags, "--api-port") {
            cmd.args(["--api-port", "0"]);
        }
        // The node API (kubelet's port) likewise: 10250 is the machine's.
        if !has_flag(flags, "--kubelet-port") {
            cmd.args(["--kubelet-port", "0"]);
        }
        if !has_flag(flags, "--write-kubeconfig") {
            cmd.arg("--write-kubeconfig")
                .arg(self.dir.path().join("kubeconfig.yaml"));
        }
        if !has_flag(flags, "--subnet-file") {
            cmd.arg("--subnet-file")
                .arg(self.dir.path().join("subnet.env"));
        }
        // The overlay and the proxy program links, routes and iptables, the
        // proxy listens on 127.0.0.1:10249, DNS puts addresses on lo,
        // nf_tables rules and forwards to the host's resolvers, and network
        // policy filters forwarded traffic: only ever inside a
        // namespace the test made. `--disable` adds up, so a caller's own
        // `--disable pods` keeps these off too.
        if self.netns.is_none() {
            cmd.args([
                "--disable",
                "overlay,proxy,dns,network-policy",
                "--metrics-bind-address",
                "",
            ]);
        }
        cmd.args(&self.agent_flags);
        cmd
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("knode agent exited with {status}:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "knode agent did not serve {} in 20s:\n{}",
            self.socket().display(),
            self.log()
        )
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, and wait (up to `timeout`) for it to exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("the agent is not running");
        };
        let pid = libc::pid_t::try_from(c.id()).context("pid")?;
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill -TERM {pid}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("the agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent again on the same dirs.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Stops the agent (SIGTERM) and starts it again on the same dirs with
    /// other agent flags (a bench comparing parts on the same store).
    pub fn restart_with(&mut self, agent_flags: Vec<String>) -> Result<()> {
        self.terminate(Duration::from_secs(30))?;
        self.agent_flags = agent_flags;
        self.spawn()
    }

    /// Runs `knode ARGS` against this agent.
    pub fn knode(&self, args: &[&str]) -> Result<Output> {
        self.knode_stdin(args, None)
    }

    /// Runs `knode ARGS` with `stdin` piped in, in the agent's namespace
    /// (where a node's CLI runs: it reaches the same etcd as the agent).
    pub fn knode_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = ns_command(self.netns.as_deref(), our_bin("knode"));
        cmd.args(self.flags()).args(args);
        run_with_stdin(cmd, stdin)
    }

    /// The temp dir the agent lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The network namespace the agent runs in (`None`: the caller's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The agent process's id while it runs (e.g. to read its memory use).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Runs a command, feeding `stdin`, and collects its output.
pub fn run_with_stdin(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run knode")?;
    if let Some(mut si) = child.stdin.take() {
        if let Some(text) = stdin {
            si.write_all(text.as_bytes())?;
        }
    }
    Ok(child.wait_with_output()?)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
