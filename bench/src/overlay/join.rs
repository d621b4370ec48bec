//! Join convergence: a node joins by hand (node 2: its vxlan devices, a
//! target address on lo, the way back to node 0's pods), and each sample
//! times from the write until node 0's pod gets an answer from it. Ours:
//! the joiner's SubnetLease created in etcd, node 0's agent programs the
//! entries. Reference: the same three entries written on node 0 with
//! `bridge -batch` + `ip -batch` on a second vxlan device the agent does not
//! own. Samples alternate sides; after each, the entries go again.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_tests::cluster::Pod;
use netns_tests::{TempDir, TestNs};

use super::{lease, mac, netlink_in, run_batches, wait_routes, Cluster, Cp, RouteFilter, DEVICE};

/// Timed samples per side.
pub const SAMPLES: usize = 40;
/// The reference's vxlan device (VNI 2, same port), on node 0 and the joiner.
const REF_DEVICE: &str = "kbref.2";
/// The UDP port the joiner answers probes on.
const ECHO_PORT: u16 = 7400;
/// How often the pod probes while waiting.
const PROBE_EVERY: Duration = Duration::from_millis(1);
/// How often the probe socket is read while waiting for an answer.
const POLL: Duration = Duration::from_micros(50);
/// How long one sample may take to converge (or to go again).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Reference,
}

impl Side {
    /// Both, in the first sample's order.
    pub const ALL: [Side; 2] = [Side::Ours, Side::Reference];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Reference => "reference",
        }
    }
}

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From the write until the pod's first answered probe.
    pub reach: Duration,
    /// From the write until it returned (the lease stored; `ip` exited).
    pub write: Duration,
    /// The round trip of the probe that was answered first.
    pub rtt: Duration,
}

/// Every timed sample, by side (indexed like [`Side::ALL`]).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub samples: [Vec<Sample>; 2],
    pub warmup: usize,
}

/// The joiner's two targets and what each side writes on node 0.
struct Joiner<'a> {
    node0: &'a TestNs,
    /// The joiner's subnet for ours (its lease) and for the reference.
    subnets: [Ipv4Addr; 2],
    macs: [String; 2],
    ip: Ipv4Addr,
    /// The reference's batch files (add, delete).
    batches: TempDir,
}

/// Sets the joiner up as a node would be, and the reference's device on
/// node 0; nothing is timed here.
fn setup<'a>(c: &'a Cluster, node0_subnet: Ipv4Addr, taken: &[Ipv4Addr]) -> Result<Joiner<'a>> {
    let (n0, j) = (c.net.node(0), c.net.node(2));
    let ip: Ipv4Addr = c.net.node_ip(2).parse()?;
    let n0_ip = c.net.node_ip(0);
    let free: Vec<Ipv4Addr> = (200..=254)
        .map(|x| Ipv4Addr::new(10, 244, x, 0))
        .filter(|s| !taken.contains(s))
        .take(2)
        .collect();
    let subnets = [free[0], free[1]];
    let macs = [mac(0xa0_0001), mac(0xa0_0002)];
    let n0_mac = netlink_in(n0)?
        .link()
        .get_by_name(DEVICE)?
        .with_context(|| format!("node 0 has no {DEVICE}"))?
        .mac_string();
    let ref0_mac = mac(0xa0_0003);
    let vtep0 = node0_subnet.to_string();
    let pods0 = format!("{node0_subnet}/24");
    let ip_s = ip.to_string();
    for (k, dev) in [DEVICE, REF_DEVICE].into_iter().enumerate() {
        let vni = (k + 1).to_string();
        let vtep = subnets[k].to_string();
        let (peer_mac, table) = if k == 0 {
            (n0_mac.as_str(), "main")
        } else {
            (ref0_mac.as_str(), "100")
        };
        let cmds: [&[&str]; 7] = [
            &[
                "ip",
                "link",
                "add",
                dev,
                "address",
                &macs[k],
                "type",
                "vxlan",
                "id",
                &vni,
                "dstport",
                "8472",
                "local",
                &ip_s,
                "dev",
                "eth0",
                "nolearning",
            ],
            &["ip", "addr", "add", &format!("{vtep}/32"), "dev", dev],
            &["ip", "link", "set", dev, "up"],
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", target(subnets[k])),
                "dev",
                "lo",
            ],
            &[
                "ip",
                "neigh",
                "replace",
                &vtep0,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
            &[
                "bridge",
                "fdb",
                "replace",
                peer_mac,
                "dev",
                dev,
                "dst",
                &n0_ip,
                "self",
                "permanent",
            ],
            &[
                "ip", "route", "replace", &pods0, "via", &vtep0, "dev", dev, "onlink", "table",
                table,
            ],
        ];
        for cmd in cmds {
            j.sh(cmd).context("set up the joiner")?;
        }
    }
    // Answers from the reference's target go back over its device too.
    let from = target(subnets[1]).to_string();
    j.sh(&["ip", "rule", "add", "from", &from, "table", "100"])?;
    n0.sh(&[
        "ip",
        "link",
        "add",
        REF_DEVICE,
        "address",
        &ref0_mac,
        "type",
        "vxlan",
        "id",
        "2",
        "dstport",
        "8472",
        "local",
        &n0_ip,
        "dev",
        "eth0",
        "nolearning",
    ])?;
    n0.sh(&["ip", "link", "set", REF_DEVICE, "up"])?;

    let batches = TempDir::new("ovb-join")?;
    let (s, m) = (subnets[1], &macs[1]);
    let write = |name: &str, text: String| std::fs::write(batches.path().join(name), text);
    write(
        "add.fdb",
        format!("fdb replace {m} dev {REF_DEVICE} dst {ip} self permanent\n"),
    )?;
    write(
        "add.ip",
        format!(
            "neigh replace {s} lladdr {m} dev {REF_DEVICE} nud permanent\n\
             route replace {s}/24 via {s} dev {REF_DEVICE} onlink\n"
        ),
    )?;
    write(
        "del.ip",
        format!(
            "route del {s}/24 via {s} dev {REF_DEVICE} onlink\nneigh del {s} dev {REF_DEVICE}\n"
        ),
    )?;
    write(
        "del.fdb",
        format!("fdb del {m} dev {REF_DEVICE} dst {ip} self\n"),
    )?;
    Ok(Joiner {
        node0: n0,
        subnets,
        macs,
        ip,
        batches,
    })
}

/// The address probed in a joiner subnet: `.1`, on the joiner's lo.
fn target(subnet: Ipv4Addr) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

impl Joiner<'_> {
    fn filter(&self, side: Side) -> RouteFilter {
        let (device, s) = match side {
            Side::Ours => (DEVICE, self.subnets[0]),
            Side::Reference => (REF_DEVICE, self.subnets[1]),
        };
        RouteFilter {
            device,
            first: s,
            last: s,
        }
    }

    /// The write that makes the joiner reachable: (when it started, how long it took).
    fn write(&self, side: Side, cp: &Cp) -> Result<(Instant, Duration)> {
        match side {
            Side::Ours => {
                let l = lease(self.subnets[0], self.ip, &self.macs[0])?;
                let t0 = Instant::now();
                cp.create(l, false)?;
                Ok((t0, t0.elapsed()))
            }
            Side::Reference => {
                let t0 = Instant::now();
                let took = self.batch("add")?;
                Ok((t0, took))
            }
        }
    }

    /// Takes the entries away again (untimed).
    fn undo(&self, side: Side, cp: &Cp) -> Result<()> {
        match side {
            Side::Ours => cp.delete_lease(self.subnets[0]),
            Side::Reference => self.batch("del").map(drop),
        }
    }

    fn batch(&self, which: &str) -> Result<Duration> {
        let d = self.batches.path();
        let (fdb, ip) = (
            d.join(format!("{which}.fdb")),
            d.join(format!("{which}.ip")),
        );
        run_batches(self.node0, &[("bridge", &fdb), ("ip", &ip)])
    }
}

/// Sends a probe every [`PROBE_EVERY`] from `sock` to `to` until an answer
/// tagged `id` comes back; returns when it did and that probe's round trip.
/// The socket is polled without blocking ([`POLL`] apart): a receive
/// timeout would sleep whole scheduler ticks.
fn probe(
    sock: &UdpSocket,
    to: SocketAddr,
    id: u32,
    stop: &AtomicBool,
) -> Result<(Instant, Duration)> {
    sock.set_nonblocking(true)?;
    let deadline = Instant::now() + SAMPLE_TIMEOUT;
    let mut buf = [0u8; 64];
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&id.to_be_bytes());
        msg[4..].copy_from_slice(&(sent.len() as u32).to_be_bytes());
        let at = Instant::now();
        sent.push(at);
        // Unreachable for now is what the loop waits out.
        let _ = sock.send_to(&msg, to);
        while at.elapsed() < PROBE_EVERY {
            match sock.recv_from(&mut buf) {
                Ok((8, _)) => {
                    let now = Instant::now();
                    let (tag, seq) = buf[..8].split_at(4);
                    let seq = u32::from_be_bytes(seq.try_into()?) as usize;
                    if tag == id.to_be_bytes() {
                        let rtt = sent.get(seq).map_or(Duration::ZERO, |t| now - *t);
                        return Ok((now, rtt));
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(POLL),
            }
        }
        if at > deadline {
            bail!("no answer from {to} within {SAMPLE_TIMEOUT:?}");
        }
    }
    bail!("probe {id} stopped")
}

/// Echoes every datagram back until `stop`.
fn echo(sock: &UdpSocket, stop: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Measures join convergence from node 0's pod `pod0`. Runs on a thread
/// inside the joiner (node 2); `subnets` are nodes 0 and 1's.
pub fn measure(
    c: &Cluster,
    cp: &Cp,
    pod0: &Pod,
    subnets: &[Ipv4Addr; 2],
    warmup: usize,
) -> Result<Outcome> {
    let j = setup(c, subnets[0], subnets)?;
    let mut nl0 = netlink_in(j.node0)?;
    // The echo sockets are the joiner's (this thread's namespace); the
    // probe socket is the pod's.
    let echoes = j
        .subnets
        .iter()
        .map(|s| UdpSocket::bind((target(*s), ECHO_PORT)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("bind the joiner's echo sockets")?;
    let prober = pod0
        .ns()
        .run(|| UdpSocket::bind("0.0.0.0:0"))?
        .context("bind the pod's probe socket")?;
    eprintln!(
        "overlay: join convergence, {warmup} warm-up + {SAMPLES} timed samples per side, interleaved \
         (joiner subnets {} ours, {} reference)",
        j.subnets[0], j.subnets[1]
    );
    let stop = AtomicBool::new(false);
    let mut out = Outcome {
        warmup,
        ..Default::default()
    };
    std::thread::scope(|s| -> Result<()> {
        for e in &echoes {
            s.spawn(|| echo(e, &stop));
        }
        let result = (|| -> Result<()> {
            let mut id = 0u32;
            for i in 0..warmup + SAMPLES {
                let order = if i % 2 == 0 {
                    Side::ALL
                } else {
                    [Side::Reference, Side::Ours]
                };
                for side in order {
                    id += 1;
                    let k = Side::ALL.iter().position(|x| *x == side).unwrap_or(0);
                    let to = SocketAddr::from((target(j.subnets[k]), ECHO_PORT));
                    let abort = AtomicBool::new(false);
                    let sample = std::thread::scope(|ps| -> Result<Sample> {
                        let answered = ps.spawn(|| probe(&prober, to, id, &abort));
                        let written = j.write(side, cp);
                        if written.is_err() {
                            abort.store(true, Ordering::Relaxed);
                        }
                        let (t0, write) = written?;
                        let (at, rtt) = answered
                            .join()
                            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
                        if at < t0 {
                            bail!("{to} answered before the {} write", side.name());
                        }
                        Ok(Sample {
                            reach: at - t0,
                            write,
                            rtt,
                        })
                    })
                    .with_context(|| format!("sample {i} ({})", side.name()))?;
                    j.undo(side, cp)?;
                    wait_routes(
                        &mut nl0,
                        j.filter(side),
                        0,
                        Duration::from_millis(2),
                        SAMPLE_TIMEOUT,
                    )
                    .with_context(|| format!("sample {i} ({}): the route stays", side.name()))?;
                    if i >= warmup {
                        out.samples[k].push(sample);
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    Ok(out)
}
