//! The readiness benchmark: how long after a pod's readiness probe passes
//! a ClusterIP Service sends it traffic, and how long after it fails the
//! Service stops. One backend pod (busybox `httpd`) whose exec readiness
//! probe passes while `/tmp/ready` exists; the file is made and removed
//! from outside, through `/proc/PID/root`, so the toggle instant is exact.
//! Each probe run appends a byte to `/tmp/passes` or `/tmp/fails`, so the
//! run that saw the change is seen too. A client in its own network
//! namespace, routed through the node's, connects to the ClusterIP every
//! ~1 ms (nftables proxy, the default). The root namespace is untouched.

mod report;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::containerd::CONTAINERD;
use knode_tests::node::{tail, Node};
use knode_tests::TempDir;
use netns_tests::TestNs;
use serde_json::Value;

use crate::probes::{app_tasks, loadavg};
use crate::Opts;

/// Flips per direction.
pub const FLIPS: usize = 30;
/// The readiness probe's period.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The readiness probe's timeout, in seconds.
pub const PROBE_TIMEOUT_S: u64 = 10;
/// Between two connect attempts.
pub const POLL: Duration = Duration::from_millis(1);
/// A connect attempt that has no answer in this long counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// How long one flip may take before the run fails.
const FLIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client keeps connecting after the first refusal, to see
/// that no new connection gets through any more.
pub const AFTER: Duration = Duration::from_millis(300);
/// The Service's port and the pod's.
const SERVICE_PORT: u16 = 80;
const POD_PORT: u16 = 8080;
/// The client namespace's address and the node side of its veth.
const CLIENT_IP: &str = "192.0.3.2";
const CLIENT_GW: &str = "192.0.3.1";

/// Which way a flip goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Not ready -> ready: `/tmp/ready` made, until a connection succeeds.
    Up,
    /// Ready -> not ready: `/tmp/ready` removed, until a connection is refused.
    Down,
}

/// One flip's timings, from the toggle.
#[derive(Debug, Clone, Copy)]
pub struct Flip {
    pub dir: Dir,
    /// Toggle until the probe run that saw it was seen (its byte appended).
    pub probe: Duration,
    /// Toggle until traffic followed: the first connection through (Up), the
    /// first refused (Down).
    pub traffic: Duration,
    /// Connections that still got through after the first refusal (Down;
    /// should be 0).
    pub through_after: usize,
}

impl Flip {
    /// From the probe run that saw the toggle until traffic followed.
    pub fn beyond(&self) -> Duration {
        self.traffic.saturating_sub(self.probe)
    }
}

/// Everything one run measured.
pub struct Results {
    pub flips: Vec<Flip>,
    pub load_before: String,
    pub load_after: String,
    pub attempts: usize,
}

/// Runs the benchmark and writes `readiness.json` and `readiness.svg`.
pub fn run(opts: &Opts) -> Result<()> {
    if !Path::new(CONTAINERD).is_file() {
        bail!("{CONTAINERD} missing: install containerd (make bootstrap does)");
    }
    crate::require_node_bins()?;
    eprintln!("readiness: starting a node (private containerd, host namespace, knode agent)");
    let node = Node::start().context("start the node")?;
    let with_log = |what: &str| {
        format!(
            "{what}; agent log (last 40 lines):\n{}",
            tail(&node.agent.log(), 40)
        )
    };
    let img = TempDir::new("bench-img")?;
    let tar = knode_tests::image::busybox_oci_tar(img.path()).context("build the busybox image")?;
    node.import(&tar)
        .with_context(|| with_log("import the image"))?;
    node.apply(&manifest(knode_tests::image::BUSYBOX))
        .with_context(|| with_log("apply the Service and its pod"))?;
    node.wait_running("ready-bench")?;
    let tasks = app_tasks(&node)?;
    let [(_, pid)] = tasks.into_iter().collect::<Vec<_>>()[..] else {
        bail!("expected one app container");
    };
    let svc: Value =
        serde_json::from_str(&node.knode(&["get", "service", "ready-bench", "-o", "json"])?)?;
    let vip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .context("the Service has no clusterIP")?
        .parse()
        .context("the Service's clusterIP")?;
    let client = client_ns(&node, vip)?;
    let root = PathBuf::from(format!("/proc/{pid}/root/tmp"));
    let addr = SocketAddr::from((vip, SERVICE_PORT));
    let load_before = loadavg();
    eprintln!("readiness: {FLIPS} flips each way through {addr}, probe period {PERIOD:?}");
    let (flips, attempts) = client
        .run(|| flips(&root, addr))?
        .with_context(|| with_log("flips"))?;
    let results = Results {
        flips,
        load_before,
        load_after: loadavg(),
        attempts,
    };
    report::write(opts, &results)
}

/// The Service and its one backend: `httpd` on [`POD_PORT`], Ready while
/// `/tmp/ready` exists (period 1 s, thresholds 1), each run recorded.
pub fn manifest(image: &str) -> String {
    let probe = "if cat /tmp/ready >/dev/null 2>&1; then echo -n . >> /tmp/passes; \
                 else echo -n . >> /tmp/fails; exit 1; fi";
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ready-bench", "labels": {"app": "ready-bench"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", format!(
                "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p {POD_PORT} -h /www"
            )],
            "ports": [{"containerPort": POD_PORT}],
            "readinessProbe": {
                "exec": {"command": ["sh", "-c", probe]},
                // A generous timeout: on a loaded machine a slow exec must
                // not fail the probe unseen (only the command decides).
                "periodSeconds": PERIOD.as_secs(), "timeoutSeconds": PROBE_TIMEOUT_S,
                "successThreshold": 1, "failureThreshold": 1,
            },
        }]},
    });
    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ready-bench"},
        "spec": {"selector": {"app": "ready-bench"},
                 "ports": [{"port": SERVICE_PORT, "targetPort": POD_PORT}]},
    });
    format!("---\n{svc}\n---\n{pod}\n")
}

/// A client namespace joined to the node's by a veth, with a route to the
/// ClusterIP through the node (and nothing else).
fn client_ns(node: &Node, vip: Ipv4Addr) -> Result<TestNs> {
    let client = TestNs::new("cli")?;
    node.host
        .plug("kncli0", &client, &format!("{CLIENT_IP}/24"))?;
    node.host_sh(&[
        "ip",
        "addr",
        "add",
        &format!("{CLIENT_GW}/24"),
        "dev",
        "kncli0",
    ])?;
    node.host_sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // The proxy refuses a Service without endpoints with an ICMP port
    // unreachable, which the kernel rate-limits per peer (a burst of 6,
    // then one a second): the client's connects would mostly time out
    // instead of being refused, one every CONNECT_TIMEOUT, not every POLL.
    node.host_sh(&["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])?;
    client.sh(&["ip", "route", "add", &format!("{vip}/32"), "via", CLIENT_GW])?;
    Ok(client)
}

/// What one connect attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Through,
    Refused,
    /// No answer in time, or another error.
    Failed,
}

/// One connect attempt; a connection made is reset at once (SO_LINGER 0),
/// so none lingers in TIME_WAIT.
fn connect(addr: SocketAddr) -> Conn {
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket fd we own, and a linger value of the
            // size we pass.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            Conn::Through
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Conn::Refused,
        Err(_) => Conn::Failed,
    }
}

/// The size of a counter file (0 while it does not exist).
fn count(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

/// [`FLIPS`] flips each way, alternating, from the client's namespace;
/// returns them and how many connects were tried.
fn flips(root: &Path, addr: SocketAddr) -> Result<(Vec<Flip>, usize)> {
    let mut out = Vec::new();
    let mut attempts = 0;
    // Start not ready: the probe has not passed yet (no /tmp/ready).
    settle(addr, Conn::Refused, &mut attempts).context("the Service refuses at first")?;
    for i in 0..FLIPS * 2 {
        // Spread the toggles over the probe's phase.
        std::thread::sleep(Duration::from_millis((i as u64 * 137) % 1000));
        let dir = if i % 2 == 0 { Dir::Up } else { Dir::Down };
        let f =
            flip(root, addr, dir, &mut attempts).with_context(|| format!("flip {i} {dir:?}"))?;
        out.push(f);
    }
    Ok((out, attempts))
}

/// Waits until `want` is what connects find several times in a row.
fn settle(addr: SocketAddr, want: Conn, attempts: &mut usize) -> Result<()> {
    let deadline = Instant::now() + FLIP_TIMEOUT;
    let mut row = 0;
    while row < 5 {
        *attempts += 1;
        row = if connect(addr) == want { row + 1 } else { 0 };
        if Instant::now() > deadline {
            bail!("connects to {addr} are not {want:?} after {FLIP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One flip: toggles `/tmp/ready` and times the probe run and the traffic.
fn flip(root: &Path, addr: SocketAddr, dir: Dir, attempts: &mut usize) -> Result<Flip> {
    let ready = root.join("ready");
    let runs = root.join(match dir {
        Dir::Up => "passes",
        Dir::Down => "fails",
    });
    let before = count(&runs)?;
    let t0 = Instant::now();
    match dir {
        Dir::Up => std::fs::write(&ready, b"1"),
        Dir::Down => std::fs::remove_file(&ready),
    }
    .with_context(|| format!("toggle {}", ready.display()))?;
    let mut probe = None;
    let mut i: u64 = 0;
    let traffic = loop {
        if probe.is_none() && count(&runs)? > before {
            probe = Some(t0.elapsed());
        }
        // Going down, connections before the failed run only load the
        // pod: try one every 10 ms until then.
        if dir == Dir::Up || probe.is_some() || i.is_multiple_of(10) {
            *attempts += 1;
            let c = connect(addr);
            // A connect that timed out (a loaded machine) proves nothing
            // either way.
            let done = match dir {
                Dir::Up => c == Conn::Through,
                Dir::Down => c == Conn::Refused,
            };
            if done {
                break t0.elapsed();
            }
        }
        if t0.elapsed() > FLIP_TIMEOUT {
            bail!("traffic did not follow in {FLIP_TIMEOUT:?} (probe run seen: {probe:?})");
        }
        i += 1;
        std::thread::sleep(POLL);
    };
    // The run may have been seen only now (both within one poll).
    let probe = match probe {
        Some(p) => p,
        None if count(&runs)? > before => traffic,
        None => bail!(
            "traffic followed ({traffic:?}) before any probe run saw the toggle: \
             something else than the probe drives the Service"
        ),
    };
    let mut through_after = 0;
    if dir == Dir::Down {
        let end = Instant::now() + AFTER;
        while Instant::now() < end {
            *attempts += 1;
            if connect(addr) == Conn::Through {
                through_after += 1;
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(Flip {
        dir,
        probe,
        traffic,
        through_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_a_service_and_its_probed_pod() -> Result<()> {
        let m = manifest("example.test/busybox:1");
        let docs: Vec<&str> = m.split("---\n").filter(|d| !d.trim().is_empty()).collect();
        assert_eq!(docs.len(), 2);
        let svc = controlplane::Object::from_value(serde_json::from_str(docs[0])?)?;
        let pod: Value = serde_json::from_str(docs[1])?;
        controlplane::Object::from_value(pod.clone())?;
        assert_eq!(svc.name(), "ready-bench");
        let probe = &pod["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["periodSeconds"], 1);
        assert_eq!(probe["failureThreshold"], 1);
        Ok(())
    }

    #[test]
    fn beyond_is_what_follows_the_probe_run() {
        let f = Flip {
            dir: Dir::Up,
            probe: Duration::from_millis(700),
            traffic: Duration::from_millis(760),
            through_after: 0,
        };
        assert_eq!(f.beyond(), Duration::from_millis(60));
    }
}
