//! The udp backend against kernel vxlan, pod to pod in two clusters that
//! run side by side (the backend is cluster-wide): iperf3 TCP with 1 and 4
//! streams, interleaved, with the udp agent's CPU seconds per run; then ping
//! round trips, alternating blocks. Measures only; starts no cluster.

use anyhow::{bail, Context, Result};
use netns_tests::cluster::Pod;

use super::throughput::{interleaved, Ends, OMIT, SECONDS};

/// Ports of the four iperf3 servers.
const PORT: u16 = 5401;
/// Ping rounds per side, alternating, and pings per round.
const PING_ROUNDS: usize = 5;
const PINGS: usize = 100;

/// One timed iperf3 run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub udp: bool,
    pub streams: u32,
    pub gbps: f64,
    pub retransmits: u64,
    /// CPU seconds of both udp agents over the run (0 for vxlan).
    pub agent_cpu_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub runs: Vec<Run>,
    /// Ping round trips in ms: vxlan, udp.
    pub rtt_ms: [Vec<f64>; 2],
    pub seconds: u32,
    pub omit: u32,
    pub load: [String; 2],
}

impl Outcome {
    /// Gbit/s of every run of one backend and stream count.
    pub fn gbps(&self, udp: bool, streams: u32) -> Vec<f64> {
        self.of(udp, streams).map(|r| r.gbps).collect()
    }

    /// The runs of one backend and stream count.
    pub fn of(&self, udp: bool, streams: u32) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| r.udp == udp && r.streams == streams)
    }
}

/// utime + stime of a process, in seconds (0 when it cannot be read).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 = [12, 13]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // In USER_HZ ticks, which the kernel fixes at 100 for userspace.
    ticks / 100.0
}

/// Round trips in ms of `PINGS` pings 10 ms apart from `from` to `to`.
fn pings(from: &Pod, to: &Pod) -> Result<Vec<f64>> {
    let n = PINGS.to_string();
    let out = from
        .ns()
        .cmd(&["ping", "-n", "-c", &n, "-i", "0.01", "-W", "1", to.ip()])
        .output()
        .context("run ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    if rtts.len() < PINGS / 2 {
        bail!(
            "{} of {PINGS} pings to {} answered:\n{text}",
            rtts.len(),
            to.ip()
        );
    }
    Ok(rtts)
}

/// Measures udp against vxlan: each side is a pod on node 0 and one on
/// node 1; `udp_agents` are the udp cluster's agents' pids (their CPU is read).
pub fn measure(vxlan: &[Pod; 2], udp: &[Pod; 2], udp_agents: [Option<u32>; 2]) -> Result<Outcome> {
    let before = super::throughput::loadavg();
    eprintln!("overlay: udp vs vxlan, load {before}");
    let mut ends = Vec::new();
    for streams in [1, 4] {
        for (k, side) in [vxlan, udp].into_iter().enumerate() {
            ends.push(Ends {
                name: match (k, streams) {
                    (0, 1) => "vxlan-pod",
                    (0, _) => "vxlan-pod-x4",
                    (_, 1) => "udp-pod",
                    _ => "udp-pod-x4",
                },
                server: side[1].ns(),
                server_ip: side[1].ip().to_string(),
                client: side[0].ns(),
                bind: None,
                port: PORT + ends.len() as u16,
                streams,
            });
        }
    }
    let probe = || udp_agents.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let runs = interleaved(&ends, probe)?
        .into_iter()
        .map(|t| Run {
            udp: t.end % 2 == 1,
            streams: if t.end < 2 { 1 } else { 4 },
            gbps: t.gbps,
            retransmits: t.retransmits,
            agent_cpu_s: if t.end % 2 == 1 { t.probe } else { 0.0 },
        })
        .collect();
    let mut rtt_ms: [Vec<f64>; 2] = Default::default();
    for round in 0..PING_ROUNDS {
        for k in 0..2 {
            let k = (round + k) % 2;
            let side = [vxlan, udp][k];
            rtt_ms[k].extend(pings(&side[0], &side[1])?);
        }
    }
    let after = super::throughput::loadavg();
    eprintln!("overlay: udp vs vxlan done, load {after}");
    Ok(Outcome {
        runs,
        rtt_ms,
        seconds: SECONDS,
        omit: OMIT,
        load: [before, after],
    })
}
