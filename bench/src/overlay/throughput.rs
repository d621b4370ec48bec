//! Throughput: iperf3 TCP from node 0 to node 1 over four paths, the
//! rounds interleaved: pod to pod over knode's overlay (veth, bridge,
//! vxlan), node to node over the raw underlay (veth and the underlay
//! bridge), VTEP to VTEP over the kernel VXLAN device alone, and a second
//! check of the underlay: two namespaces on one veth pair, no bridge.
//! Retransmits are kept per run: a reference that retransmits is not clean.
//! A dual-stack cluster is measured the same way over IPv6 (pod, VTEP and
//! underlay paths, the VTEPs on `knode-v6.1` over the IPv6 underlay).
//! Servers are killed on return; clients end on their own.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_tests::cluster::{steer_flows, wait_until, Pod};
use netns_tests::TestNs;
use serde_json::Value;

use super::{Cluster, IPERF3};

/// Timed runs per path.
pub const ROUNDS: usize = 5;
/// Seconds each timed run measures.
pub const SECONDS: u32 = 3;
/// Seconds of each run left out first (TCP slow start).
pub const OMIT: u32 = 1;
/// The first server port; each path has its own.
const PORT: u16 = 5301;

/// A path between node 0 and node 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Pod,
    Vxlan,
    Underlay,
    Veth,
}

impl Path {
    /// Every path, in the first round's order.
    pub const ALL: [Path; 4] = [Path::Pod, Path::Vxlan, Path::Underlay, Path::Veth];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Path::Pod => "pod",
            Path::Vxlan => "vxlan",
            Path::Underlay => "underlay",
            Path::Veth => "veth",
        }
    }

    /// What it measures over IPv6, for the report (no veth check there).
    pub fn about6(self) -> &'static str {
        match self {
            Path::Pod => "ours: pod on node 0 -> pod on node 1 over IPv6 (veth, bridge, knode-v6.1 vxlan, IPv6 underlay)",
            Path::Vxlan => "reference: node 0's IPv6 VTEP address -> node 1's, over knode-v6.1 alone",
            Path::Underlay => "reference: node 0 eth0 -> node 1 eth0 over IPv6 (the underlay veth and bridge)",
            Path::Veth => "check of the reference: two namespaces on one veth pair over IPv6, no bridge",
        }
    }

    /// What it measures, for the report.
    pub fn about(self) -> &'static str {
        match self {
            Path::Pod => "ours: pod on node 0 -> pod on node 1 (veth, bridge, knode.1 vxlan, underlay)",
            Path::Vxlan => "reference: node 0's VTEP address -> node 1's, over knode.1 alone (no bridge or veth hop)",
            Path::Underlay => "reference: node 0 eth0 -> node 1 eth0 over the underlay veth and bridge",
            Path::Veth => "check of the reference: two namespaces on one veth pair, no bridge",
        }
    }
}

/// One timed iperf3 run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub path: Path,
    pub round: usize,
    /// Received, in Gbit/s.
    pub gbps: f64,
    pub retransmits: u64,
}

/// Every timed run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub runs: Vec<Run>,
    pub rounds: usize,
    pub seconds: u32,
    pub omit: u32,
    /// /proc/loadavg before the first and after the last run.
    pub load: [String; 2],
    /// The paths measured, in order.
    pub paths: Vec<Path>,
    /// Measured over IPv6 (a dual-stack cluster with an IPv6 underlay).
    pub ipv6: bool,
}

impl Outcome {
    /// The Gbit/s of every run of `path`.
    pub fn gbps(&self, path: Path) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.gbps)
            .collect()
    }

    /// The retransmits of every run of `path`.
    pub fn retransmits(&self, path: Path) -> Vec<u64> {
        self.runs
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.retransmits)
            .collect()
    }
}

/// Two namespaces joined by one veth pair, steered like the underlay
/// (198.19.0.1 and .2, RFC 2544 space; fd00:198:19::1 and ::2 over
/// IPv6): the underlay without its bridge.
struct VethPair {
    a: TestNs,
    b: TestNs,
}

impl VethPair {
    const A: &'static str = "198.19.0.1";
    const B: &'static str = "198.19.0.2";
    const A6: &'static str = "fd00:198:19::1";
    const B6: &'static str = "fd00:198:19::2";

    fn new() -> Result<VethPair> {
        let (a, b) = (TestNs::new("vpa")?, TestNs::new("vpb")?);
        let add = format!(
            "ip link add eth0 type veth peer name eth0 netns {}",
            b.name()
        );
        a.sh(&add.split(' ').collect::<Vec<_>>())?;
        for (ns, ip, ip6) in [(&a, Self::A, Self::A6), (&b, Self::B, Self::B6)] {
            ns.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            let ip6 = format!("{ip6}/64");
            ns.sh(&["ip", "-6", "addr", "add", &ip6, "dev", "eth0", "nodad"])?;
            ns.sh(&["ip", "link", "set", "eth0", "up"])?;
            steer_flows(ns, "eth0")?;
        }
        Ok(VethPair { a, b })
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Who serves and who sends on a path.
pub(super) struct Ends<'a> {
    /// The path's name, for errors.
    pub name: &'static str,
    pub server: &'a TestNs,
    pub server_ip: String,
    pub client: &'a TestNs,
    /// The client's source address, when it must be chosen.
    pub bind: Option<String>,
    pub port: u16,
    /// Parallel streams (`-P`).
    pub streams: u32,
}

/// An `iperf3 -s` in a namespace; killed on drop.
pub(super) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Ends<'_> {
    /// Starts the server and waits until it listens.
    pub fn serve(&self) -> Result<Server> {
        let port = self.port.to_string();
        let child = self
            .server
            .cmd(&[IPERF3, "-s", "-B", &self.server_ip, "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start iperf3 -s in {}", self.server.name()))?;
        let server = Server(child);
        let filter = format!("sport = :{port}");
        let listening = wait_until(Duration::from_secs(5), || {
            self.server
                .sh(&["ss", "-Hltn", &filter])
                .is_ok_and(|o| !o.trim().is_empty())
        });
        if !listening {
            bail!(
                "iperf3 -s on {}:{port} in {} does not listen",
                self.server_ip,
                self.server.name()
            );
        }
        Ok(server)
    }

    /// One client run of `seconds` (after `omit` left out); (Gbit/s, retransmits).
    pub fn send(&self, seconds: u32, omit: u32) -> Result<(f64, u64)> {
        let (port, t, o) = (self.port.to_string(), seconds.to_string(), omit.to_string());
        let streams = self.streams.to_string();
        let mut argv = vec![
            IPERF3,
            "-c",
            &self.server_ip,
            "-p",
            &port,
            "-t",
            &t,
            "-O",
            &o,
            "-J",
            "-P",
            &streams,
            "--connect-timeout",
            "3000",
        ];
        if let Some(b) = &self.bind {
            argv.extend(["-B", b.as_str()]);
        }
        // The server takes a moment between tests: "busy" is retried.
        let mut last = String::new();
        for _ in 0..3 {
            let out = self
                .client
                .cmd(&argv)
                .output()
                .with_context(|| format!("run iperf3 -c in {}", self.client.name()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            match parse(&text) {
                Ok(r) if out.status.success() => return Ok(r),
                Ok(_) => last = format!("{}: {text}", out.status),
                Err(e) => last = format!("{e:#}"),
            }
            if !last.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!(
            "iperf3 {} -> {}:{}: {last}",
            self.name,
            self.server_ip,
            self.port
        )
    }
}

/// (Gbit/s received, retransmits) from `iperf3 -J` output.
fn parse(json: &str) -> Result<(f64, u64)> {
    let v: Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retr))
}

/// One timed run of [`interleaved`].
pub(super) struct Timed {
    /// Which of the ends.
    pub end: usize,
    pub round: usize,
    pub gbps: f64,
    pub retransmits: u64,
    /// How much `probe` grew over the run.
    pub probe: f64,
}

/// Starts every end's server, warms each path up for 1 s, then runs
/// [`ROUNDS`] rounds of every end (the first end rotating), reading
/// `probe` (e.g. an agent's CPU seconds) before and after each run.
pub(super) fn interleaved(ends: &[Ends], mut probe: impl FnMut() -> f64) -> Result<Vec<Timed>> {
    let _servers = ends.iter().map(Ends::serve).collect::<Result<Vec<_>>>()?;
    for e in ends {
        e.send(1, 0)
            .with_context(|| format!("warm-up on the {} path", e.name))?;
    }
    let mut runs = Vec::new();
    for round in 0..ROUNDS {
        for k in 0..ends.len() {
            let end = (round + k) % ends.len();
            let e = &ends[end];
            let p0 = probe();
            let (gbps, retransmits) = e.send(SECONDS, OMIT)?;
            let probe = probe() - p0;
            eprintln!(
                "overlay: round {round} {:<12} {gbps:.2} Gbit/s ({retransmits} retransmits)",
                e.name
            );
            runs.push(Timed {
                end,
                round,
                gbps,
                retransmits,
                probe,
            });
        }
    }
    Ok(runs)
}

/// The addresses of node 0 and node 1 on each path, of one family.
struct Addrs {
    pods: [String; 2],
    vteps: [String; 2],
    underlay: [String; 2],
    /// The veth pair's server address.
    veth: &'static str,
}

/// Measures the paths between node 0 and node 1: `pods` are one pod
/// per node, `subnets` the nodes' subnets (their VTEP addresses).
pub fn measure(c: &Cluster, pods: &[Pod; 2], subnets: &[Ipv4Addr; 2]) -> Result<Outcome> {
    let pair = VethPair::new().context("the veth pair")?;
    let addrs = Addrs {
        pods: [pods[0].ip().to_string(), pods[1].ip().to_string()],
        vteps: subnets.map(|s| s.to_string()),
        underlay: [c.net.node_ip(0), c.net.node_ip(1)],
        veth: VethPair::B,
    };
    measure_paths(c, pods, &addrs, &pair, false)
}

/// As [`measure`] over IPv6, on a dual-stack cluster with an IPv6
/// underlay: `vteps6` are the nodes' IPv6 VTEP addresses (on knode-v6.1).
pub fn measure_ipv6(c: &Cluster, pods: &[Pod; 2], vteps6: [String; 2]) -> Result<Outcome> {
    let ip6 = |p: &Pod| {
        p.ip6()
            .with_context(|| format!("pod {} has no IPv6 address", p.ip()))
    };
    let pair = VethPair::new().context("the veth pair")?;
    let addrs = Addrs {
        pods: [ip6(&pods[0])?, ip6(&pods[1])?],
        vteps: vteps6,
        underlay: [c.net.node_ip6(0), c.net.node_ip6(1)],
        veth: VethPair::B6,
    };
    measure_paths(c, pods, &addrs, &pair, true)
}

/// The interleaved runs over every path, at the addresses `a` names.
fn measure_paths(
    c: &Cluster,
    pods: &[Pod; 2],
    a: &Addrs,
    pair: &VethPair,
    ipv6: bool,
) -> Result<Outcome> {
    let (n0, n1) = (c.net.node(0), c.net.node(1));
    let mut paths = Vec::new();
    let mut ends = Vec::new();
    for &path in &Path::ALL {
        let (server, server_ip, client, bind) = match path {
            Path::Pod => (pods[1].ns(), a.pods[1].clone(), pods[0].ns(), None),
            Path::Vxlan => (n1, a.vteps[1].clone(), n0, Some(a.vteps[0].clone())),
            Path::Underlay => (n1, a.underlay[1].clone(), n0, Some(a.underlay[0].clone())),
            Path::Veth => (&pair.b, a.veth.to_string(), &pair.a, None),
        };
        ends.push(Ends {
            name: path.name(),
            server,
            server_ip,
            client,
            bind,
            port: PORT + paths.len() as u16,
            streams: 1,
        });
        paths.push(path);
    }
    let before = loadavg();
    eprintln!(
        "overlay: {} throughput, load {before}, {ROUNDS} interleaved rounds of {SECONDS} s (+{OMIT} s left out) per path, after a 1 s warm-up each",
        if ipv6 { "IPv6" } else { "IPv4" }
    );
    let runs = interleaved(&ends, || 0.0)?
        .into_iter()
        .map(|r| Run {
            path: paths[r.end],
            round: r.round,
            gbps: r.gbps,
            retransmits: r.retransmits,
        })
        .collect();
    let after = loadavg();
    eprintln!("overlay: throughput done, load {after}");
    Ok(Outcome {
        runs,
        rounds: ROUNDS,
        seconds: SECONDS,
        omit: OMIT,
        load: [before, after],
        paths,
        ipv6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf3_json() -> Result<()> {
        let ok = r#"{"start": {}, "end": {"sum_sent": {"bits_per_second": 2.1e10, "retransmits": 7},
            "sum_received": {"bits_per_second": 2.0e10}}}"#;
        assert_eq!(parse(ok)?, (20.0, 7));
        let err = r#"{"start": {}, "end": {}, "error": "the server is busy running a test. try again later"}"#;
        assert!(format!("{:#}", parse(err).unwrap_err()).contains("busy"));
        assert!(parse("iperf3: error").is_err());
        Ok(())
    }
}
