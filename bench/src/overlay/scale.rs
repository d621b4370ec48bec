//! Scale: programming [`PEERS`] remote leases of fake peers (subnets in
//! 10.244.0.0-10.247.255, public IPs in 198.18.1-4.x that nothing is ever
//! sent to). Stored: the leases are in etcd when an agent starts on a
//! fresh node; timed from its spawn until the kernel holds every route.
//! Live: a running agent, timed from the first write until every route.
//! Reference: the same entries with one `bridge -batch` and one `ip -batch`
//! on a fresh node's hand-made device. Rounds interleave the three.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::Object;
use knode_tests::node::tail;
use netns_tests::agent::Agent;
use netns_tests::TempDir;
use serde_json::json;

use hostnet::Netlink;

use super::{
    lease, mac, netlink_in, overlay_routes, run_batches, wait_subnet, Cluster, Cp, RouteFilter,
    DEVICE,
};
use crate::controlplane::procfs::{self, Mem};

/// Remote leases per measurement.
pub const PEERS: usize = 1000;
/// Interleaved rounds (each: live, stored, reference).
pub const ROUNDS: usize = 5;
/// Namespaces the scale cluster needs: the writers' and three per round.
pub const NODES: usize = 1 + 3 * ROUNDS;
/// The network the agents propose (the stored config's).
const SCALE_NETWORK: &str = "10.0.0.0/8";
/// Lease writes in flight during the live measurement.
pub const WRITERS: usize = 16;
/// The cluster network: room for the fake peers and the agents' own
/// subnets (kept apart by SubnetMin/SubnetMax).
pub const NET_CONF: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.200.0.0", "SubnetMax": "10.200.255.0", "Backend": {"Type": "vxlan"}}"#;
/// Quiet time before a memory reading.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How often the kernel's routes are counted while waiting.
const POLL: Duration = Duration::from_millis(5);
/// How long programming may take before the round fails.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The fake peers' routes: /24s via knode.1 in 10.244.0.0-10.247.255.
const FAKE: RouteFilter = RouteFilter {
    device: DEVICE,
    first: Ipv4Addr::new(10, 244, 0, 0),
    last: Ipv4Addr::new(10, 247, 255, 0),
};

/// Fake peer `i`: (subnet, public IP, VTEP MAC).
pub fn peer(i: usize) -> (Ipv4Addr, Ipv4Addr, String) {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    (
        Ipv4Addr::new(10, 244 + hi, lo, 0),
        Ipv4Addr::new(198, 18, 1 + hi, lo),
        mac(0x10_0000 + i as u32),
    )
}

/// Agent start with the leases stored.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// Spawn until every route is in.
    pub total: Duration,
    /// Spawn until the subnet file (lease held, peers listed, nothing programmed yet).
    pub startup: Duration,
    /// VmRSS/VmHWM holding the peers.
    pub mem: Mem,
}

/// Leases written while the agent runs.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// First write until every route is in.
    pub total: Duration,
    /// First write until the last one was stored.
    pub writes: Duration,
    /// The agent before any peer.
    pub mem_idle: Mem,
    /// The agent holding the peers.
    pub mem: Mem,
}

/// One round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub stored: Stored,
    pub live: Live,
    /// The batches, first spawn until the last exit.
    pub reference: Duration,
}

/// Every round.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub rounds: Vec<Round>,
    pub peers: usize,
}

/// Runs the rounds on `c` (its node 0 is where the writes come from; every
/// measurement gets a fresh node). Runs on a thread inside node 0.
pub fn measure(c: &Cluster) -> Result<Outcome> {
    let cp = Cp::connect(&c.etcd.endpoints())?;
    cp.create(
        Object::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        )?,
        true,
    )?;
    cp.create(
        Object::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "knode-network", "namespace": "kube-system"},
            "data": {"net-conf.json": NET_CONF},
        }))?,
        false,
    )?;
    let batches = TempDir::new("ovb-scale")?;
    write_batches(batches.path())?;
    let subnets: Vec<Ipv4Addr> = (0..PEERS).map(|i| peer(i).0).collect();
    let mut c = Scaler { c, cp, next: 1 };
    let mut rounds = Vec::new();
    eprintln!(
        "overlay: scale, {ROUNDS} interleaved rounds of {PEERS} peers: stored, live ({WRITERS} writers), ip -batch"
    );
    for r in 0..ROUNDS {
        let mut reference = None;
        if r % 2 == 0 {
            reference = Some(c.reference(batches.path())?);
        }
        let live = c.live().with_context(|| format!("round {r}: live"))?;
        let stored = c.stored().with_context(|| format!("round {r}: stored"))?;
        c.cp.delete_leases(&subnets, WRITERS)?;
        let reference = match reference {
            Some(d) => d,
            None => c.reference(batches.path())?,
        };
        eprintln!(
            "overlay: round {r}: stored {:.0} ms (startup {:.0} ms), live {:.0} ms (writes {:.0} ms), ip -batch {:.0} ms",
            ms(stored.total),
            ms(stored.startup),
            ms(live.total),
            ms(live.writes),
            ms(reference)
        );
        rounds.push(Round {
            stored,
            live,
            reference,
        });
    }
    Ok(Outcome {
        rounds,
        peers: PEERS,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The reference's batch files: every FDB entry, then every neighbour
/// and route (the order the agent's full sync uses).
fn write_batches(dir: &Path) -> Result<()> {
    let mut fdb = String::new();
    let mut ip = String::new();
    for i in 0..PEERS {
        let (s, pub_ip, m) = peer(i);
        fdb.push_str(&format!(
            "fdb replace {m} dev {DEVICE} dst {pub_ip} self permanent\n"
        ));
        ip.push_str(&format!(
            "neigh replace {s} lladdr {m} dev {DEVICE} nud permanent\n"
        ));
    }
    for i in 0..PEERS {
        let s = peer(i).0;
        ip.push_str(&format!(
            "route replace {s}/24 via {s} dev {DEVICE} onlink\n"
        ));
    }
    std::fs::write(dir.join("peers.fdb"), fdb)?;
    std::fs::write(dir.join("peers.ip"), ip)?;
    Ok(())
}

/// The cluster's nodes, handed out fresh, and the control-plane client.
struct Scaler<'a> {
    c: &'a Cluster,
    cp: Cp,
    next: usize,
}

impl Scaler<'_> {
    /// A node not used yet (all are made up front: the cluster is shared).
    fn node(&mut self) -> Result<usize> {
        let i = self.next;
        self.next += 1;
        if !self.c.net.node_indices().contains(&i) {
            bail!("node {i} was not made up front");
        }
        Ok(i)
    }

    /// Stops `agent`, forgets its lease and clears node `i`'s device, so
    /// nothing of it is left for the next measurement.
    fn retire(&self, i: usize, agent: Agent, own: Ipv4Addr) -> Result<()> {
        drop(agent);
        self.cp.delete_lease(own)?;
        self.c.net.node(i).sh(&["ip", "link", "del", DEVICE])?;
        Ok(())
    }

    fn live(&mut self) -> Result<Live> {
        let i = self.node()?;
        let agent = self.c.agent(i, SCALE_NETWORK)?;
        let own = wait_subnet(&agent)?;
        let pid = agent.pid().context("the agent is not running")?;
        std::thread::sleep(SETTLE);
        let mem_idle = procfs::mem(pid)?;
        let mut nl = netlink_in(self.c.net.node(i))?;
        let leases = (0..PEERS)
            .map(|k| {
                let (s, ip, m) = peer(k);
                lease(s, ip, &m)
            })
            .collect::<Result<Vec<_>>>()?;
        let abort = AtomicBool::new(false);
        let (writes, total) = std::thread::scope(|s| -> Result<(Duration, Duration)> {
            let poller = s.spawn(|| poll_peers(&mut nl, None, &abort));
            let t0 = Instant::now();
            let written = self.cp.create_all(leases, WRITERS);
            let writes = t0.elapsed();
            if written.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            written?;
            let (_, done) = poller
                .join()
                .map_err(|_| anyhow::anyhow!("the route poller panicked"))??;
            Ok((writes, done.saturating_duration_since(t0)))
        })
        .with_context(|| format!("agent log:\n{}", tail(&agent.log(), 30)))?;
        std::thread::sleep(SETTLE);
        let mem = procfs::mem(pid)?;
        self.retire(i, agent, own)?;
        Ok(Live {
            total,
            writes,
            mem_idle,
            mem,
        })
    }

    fn stored(&mut self) -> Result<Stored> {
        let i = self.node()?;
        let dir = TempDir::new(&format!("ovb-n{i}"))?;
        let subnet_file = dir.path().join("subnet.env");
        let mut nl = netlink_in(self.c.net.node(i))?;
        let abort = AtomicBool::new(false);
        let (agent, startup, total) = std::thread::scope(|s| -> Result<_> {
            let poller = s.spawn(|| poll_peers(&mut nl, Some(&subnet_file), &abort));
            let t0 = Instant::now();
            let agent = self.c.agent_in(dir, i, SCALE_NETWORK);
            if agent.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            let agent = agent?;
            match poller.join() {
                Ok(Ok((Some(lease), done))) => Ok((agent, lease - t0, done - t0)),
                Ok(Ok((None, _))) => bail!("all routes in before the subnet file"),
                Ok(Err(e)) => Err(e).context(format!("agent log:\n{}", tail(&agent.log(), 30))),
                Err(_) => bail!("the route poller panicked"),
            }
        })?;
        let own = wait_subnet(&agent)?;
        std::thread::sleep(SETTLE);
        let mem = procfs::mem(agent.pid().context("the agent is not running")?)?;
        self.retire(i, agent, own)?;
        Ok(Stored {
            total,
            startup,
            mem,
        })
    }

    fn reference(&mut self, dir: &Path) -> Result<Duration> {
        let i = self.node()?;
        let node = self.c.net.node(i);
        let ip = self.c.net.node_ip(i);
        node.sh(&[
            "ip",
            "link",
            "add",
            DEVICE,
            "address",
            &mac(0xb0_0000),
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "local",
            &ip,
            "dev",
            "eth0",
            "nolearning",
        ])?;
        node.sh(&["ip", "link", "set", DEVICE, "up"])?;
        let (fdb, ips) = (dir.join("peers.fdb"), dir.join("peers.ip"));
        let took = run_batches(node, &[("bridge", &fdb), ("ip", &ips)])?;
        let got = overlay_routes(&mut netlink_in(node)?, FAKE)?;
        if got != PEERS {
            bail!("ip -batch left {got} routes, not {PEERS}");
        }
        node.sh(&["ip", "link", "del", DEVICE])?;
        Ok(took)
    }
}

/// Polls node routes every [`POLL`] until every fake peer's is in:
/// returns when `subnet_file` first existed (if given) and when the last
/// route was seen. Fails after [`TIMEOUT`] or when `abort` is set.
fn poll_peers(
    nl: &mut Netlink,
    subnet_file: Option<&Path>,
    abort: &AtomicBool,
) -> Result<(Option<Instant>, Instant)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut lease = None;
    let mut seen = 0;
    loop {
        let now = Instant::now();
        if lease.is_none() && subnet_file.is_some_and(Path::exists) {
            lease = Some(now);
        }
        seen = overlay_routes(nl, FAKE).unwrap_or(seen);
        if seen >= PEERS {
            return Ok((lease, Instant::now()));
        }
        if abort.load(Ordering::Relaxed) {
            bail!("stopped with {seen} of {PEERS} routes");
        }
        if now > deadline {
            bail!("{seen} of {PEERS} routes after {TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}
