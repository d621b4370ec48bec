//! A real etcd cluster per test: Debian's `etcd` (3.4) members listening on
//! 127.0.0.1 ports, or on an address inside a network namespace the test
//! made, each in its own temp dir with its log, killed and removed on drop
//! (also when the test fails). It never touches an etcd it did not start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{free_ports, ns_command, run_in, unique, TempDir};

/// The etcd server binary (Debian package `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";
/// The etcd command-line client (Debian package `etcd-client`).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a cluster may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts when a picked port was taken before etcd bound it.
const PORT_RETRIES: usize = 3;
/// Log lines shown when a member fails.
const LOG_TAIL: usize = 40;

/// True when the test may run. Without etcd it skips with a reason, except
/// under `CI=true`, where a skip is a failure.
pub fn require_etcd(test: &str) -> bool {
    crate::require(
        test,
        Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file(),
        &format!("{ETCD} and {ETCDCTL}"),
        "apt-get install etcd-server etcd-client",
    )
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    log: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
    // Dropped last: the member is dead before its dir goes.
    dir: TempDir,
}

impl Member {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last [`LOG_TAIL`] lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        f.read_to_string(&mut text)
    });
    match read {
        Ok(_) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// An etcd cluster of one or more members, on loopback or inside a
/// network namespace.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The namespace the members (and etcdctl) run in; `None`: the caller's.
    netns: Option<PathBuf>,
}

impl EtcdCluster {
    /// Starts `members` members on 127.0.0.1 (fresh data, a token unique
    /// to this run) and waits until every one reports healthy.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        Self::start_on(None, "127.0.0.1", members)
    }

    /// Starts `members` members inside the network namespace pinned at
    /// `netns` (`/run/netns/NAME`), each listening for clients and peers on
    /// `http://<host>:<port>` (`host`: an IPv4 address of that namespace),
    /// and waits until every one reports healthy from inside it.
    pub fn start_in(netns: &Path, host: &str, members: usize) -> Result<EtcdCluster> {
        Self::start_on(Some(netns), host, members)
    }

    fn start_on(netns: Option<&Path>, host: &str, members: usize) -> Result<EtcdCluster> {
        if members == 0 {
            bail!("start etcd: a cluster needs at least one member");
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(netns, host, members) {
                Ok(c) => return Ok(c),
                // Ports are picked free then bound by etcd later; another
                // process may take one in between.
                Err(e)
                    if attempt < PORT_RETRIES
                        && format!("{e:#}").contains("address already in use") =>
                {
                    eprintln!("etcd: a port was taken meanwhile; retrying with new ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(netns: Option<&Path>, host: &str, n: usize) -> Result<EtcdCluster> {
        let token = unique("knode-etcd-");
        // Ports are checked where etcd will bind them: a thread inside the
        // namespace when there is one.
        let ports = match netns {
            Some(ns) => run_in(ns, || free_ports(host, 2 * n))?,
            None => free_ports(host, 2 * n),
        }
        .with_context(|| format!("pick etcd ports on {host}"))?;
        let planned: Vec<(String, String, String)> = ports
            .chunks(2)
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("m{i}"),
                    format!("http://{host}:{}", p[0]),
                    format!("http://{host}:{}", p[1]),
                )
            })
            .collect();
        let initial: Vec<String> = planned
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster {
            members: Vec::with_capacity(n),
            netns: netns.map(Path::to_path_buf),
        };
        for (name, client_url, peer_url) in planned {
            let dir = TempDir::new(&format!("etcd-{name}"))?;
            let log = dir.path().join("etcd.log");
            let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let err = out.try_clone()?;
            let mut cmd = ns_command(netns, ETCD);
            cmd.args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            // Settings for another etcd must not leak into ours.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("start {ETCD} member {name}"))?;
            cluster.members.push(Member {
                name,
                client_url,
                peer_url,
                log,
                child: Some(child),
                dir,
            });
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for m in &mut self.members {
                let Some(child) = m.child.as_mut() else {
                    continue;
                };
                if let Some(status) = child.try_wait()? {
                    m.child = None;
                    bail!(
                        "etcd member {} ({}, peer {}) exited with {status} while starting; log {}:\n{}",
                        m.name,
                        m.client_url,
                        m.peer_url,
                        m.log.display(),
                        m.log_tail()
                    );
                }
            }
            let health = self.etcdctl(&["endpoint", "health"]);
            if health.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {} ({}):\n{}", m.name, m.log.display(), m.log_tail()))
                    .collect();
                bail!(
                    "etcd cluster not healthy after {START_TIMEOUT:?}: {:#}\n{}",
                    health.err().unwrap_or_else(|| anyhow!("unknown")),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's client URL (killed ones included), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// `etcd://host:port,...`: the agent's `--control-plane` for this cluster.
    pub fn control_plane(&self) -> String {
        let hosts: Vec<&str> = self
            .members
            .iter()
            .map(|m| m.client_url.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// The client URLs of the members still running.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// SIGKILLs member `i` (no clean shutdown, as a crash would).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow!("kill etcd member {i}: no such member"))?;
        if let Some(mut child) = m.child.take() {
            child
                .kill()
                .with_context(|| format!("kill etcd member {}", m.name))?;
            child
                .wait()
                .with_context(|| format!("reap etcd member {}", m.name))?;
        }
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): its ports still accept connections
    /// but nothing answers, as with a hung process or a lost network.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let m = self
            .members
            .get(i)
            .ok_or_else(|| anyhow!("signal etcd member {i}: no such member"))?;
        let child = m
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("signal etcd member {}: it was killed", m.name))?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill has no memory preconditions; `pid` is our own child,
        // not yet reaped (we hold its Child), so it names no other process.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signal {sig} to etcd member {} (pid {pid})", m.name));
        }
        Ok(())
    }

    /// The index of the member that is the raft leader, as the running
    /// members report it.
    pub fn leader(&self) -> Result<usize> {
        let out = self.etcdctl(&["endpoint", "status", "--write-out", "json"])?;
        let statuses: Value =
            serde_json::from_str(&out).with_context(|| format!("parse endpoint status {out}"))?;
        let statuses = statuses
            .as_array()
            .ok_or_else(|| anyhow!("endpoint status is not a list: {out}"))?;
        for s in statuses {
            let member = s
                .pointer("/Status/header/member_id")
                .and_then(Value::as_u64);
            let leader = s.pointer("/Status/leader").and_then(Value::as_u64);
            if member.is_some() && member == leader {
                let ep = s
                    .get("Endpoint")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(i) = self.members.iter().position(|m| m.client_url == ep) {
                    return Ok(i);
                }
            }
        }
        bail!("no running etcd member reports itself leader: {out}")
    }

    /// Compacts the key-value history up to `revision` (physically, so a
    /// watch from before it fails at once).
    pub fn compact(&self, revision: u64) -> Result<()> {
        self.etcdctl(&["compact", &revision.to_string(), "--physical"])?;
        Ok(())
    }

    /// The namespace the members run in (`None`: the caller's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Runs etcdctl (API v3) against the running members, inside the
    /// cluster's namespace; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoints = self.live_endpoints().join(",");
        let out = ns_command(self.netns(), ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=2s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {ETCDCTL} {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "etcdctl --endpoints={endpoints} {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The data and log dir of member `i`.
    pub fn dir(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(|m| m.dir.path())
    }

    /// The process id of member `i` while it runs (e.g. to read its memory use).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Each member's TempDir is removed as `members` drops.
    }
}
