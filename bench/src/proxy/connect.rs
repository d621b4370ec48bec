//! First-packet connect latency: fresh TCP connections from a client
//! namespace, through a node namespace a [`proxy::Syncer`] programmed with
//! N Services, to a listener in a server namespace, via the ClusterIP and
//! directly to the pod IP, every node and path interleaved. It measures;
//! the report formats.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netns_tests::TestNs;
use proxy::{Backend, Endpoint};

/// Service counts the connect latency is measured at.
pub const SIZES: [usize; 2] = [100, 10_000];
/// Timed connections per path and size.
pub const SAMPLES: usize = 200;
/// Untimed rounds first (neighbour entries, caches).
pub const WARMUP: usize = 20;
const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 250, 2);
const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 244, 250, 1);
const NODE_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 244, 251, 254);
/// The server namespace's addresses: the measured Services' 5 endpoints.
const BACKENDS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 244, 251, 1),
    Ipv4Addr::new(10, 244, 251, 2),
    Ipv4Addr::new(10, 244, 251, 3),
    Ipv4Addr::new(10, 244, 251, 4),
    Ipv4Addr::new(10, 244, 251, 5),
];

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The ClusterIP of the Service whose rule is first in KUBE-SERVICES.
    First,
    /// The ClusterIP of the Service whose rule is last in KUBE-SERVICES.
    Last,
    /// A backend's pod IP and port, no DNAT (each sample the next backend).
    Direct,
}

/// The samples of one node: `services` 0 is the node without rules.
#[derive(Debug, Clone)]
pub struct Node {
    pub services: usize,
    pub samples: Vec<(Path, Vec<Duration>)>,
}

impl Node {
    /// The samples of `path`.
    pub fn of(&self, path: Path) -> &[Duration] {
        self.samples
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(&[], |(_, s)| s.as_slice())
    }
}

/// A listener in the server namespace and the thread accepting on it.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &TestNs) -> Result<Server> {
        let listener = ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))?
            .with_context(|| format!("listen on :{PORT} in {}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the accept loop: sets the flag, then wakes it with one connection.
    fn stop(&mut self, ns: &TestNs) {
        self.stop.store(true, Ordering::Relaxed);
        let to = SocketAddr::from((BACKENDS[0], PORT));
        let _ = ns.run(|| TcpStream::connect_timeout(&to, TIMEOUT));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// client <-> node <-> server, each its own namespace, and what the node's
/// nat table was given.
struct Topology {
    client: TestNs,
    node: TestNs,
    server: TestNs,
    listener: Server,
    /// (path, ClusterIP) for the Service paths; empty without rules.
    vips: Vec<(Path, Ipv4Addr)>,
    services: usize,
}

/// Runs `line` (its words split on spaces) in `ns`.
fn sh(ns: &TestNs, line: &str) -> Result<()> {
    ns.sh(&line.split(' ').collect::<Vec<_>>()).map(drop)
}

/// A veth pair from `node` (its end `dev` at `node_ip/24`) to `peer` (its
/// `eth0` at `peer_ips`, each /24, default route via `node_ip`).
fn wire(
    node: &TestNs,
    dev: &str,
    node_ip: Ipv4Addr,
    peer: &TestNs,
    peer_ips: &[Ipv4Addr],
) -> Result<()> {
    let peer_ns = peer.name();
    sh(
        node,
        &format!("ip link add {dev} type veth peer name eth0 netns {peer_ns}"),
    )?;
    sh(node, &format!("ip addr add {node_ip}/24 dev {dev}"))?;
    sh(node, &format!("ip link set {dev} up"))?;
    for ip in peer_ips {
        sh(peer, &format!("ip addr add {ip}/24 dev eth0"))?;
    }
    sh(peer, "ip link set eth0 up")?;
    sh(peer, &format!("ip route add default via {node_ip}"))
}

impl Topology {
    /// The three namespaces, wired, the node forwarding. Unless `services`
    /// is 0 the node holds that many Services: the first and the last one
    /// balance over the server's addresses, the others over fake IPs.
    fn new(services: usize) -> Result<Topology> {
        let (client, node, server) = (
            TestNs::new("bcc")?,
            TestNs::new("bcn")?,
            TestNs::new("bcs")?,
        );
        wire(&node, "toc", NODE_CLIENT_SIDE, &client, &[CLIENT_IP])?;
        wire(&node, "tos", NODE_SERVER_SIDE, &server, &BACKENDS)?;
        sh(&node, "sysctl -qw net.ipv4.ip_forward=1")?;
        let mut vips = Vec::new();
        if services > 0 {
            let mut desired = super::services(services);
            let real: Vec<Endpoint> = BACKENDS
                .iter()
                .map(|&ip| Endpoint {
                    ip,
                    port: PORT,
                    local: false,
                })
                .collect();
            for (path, i) in [(Path::First, 0), (Path::Last, services - 1)] {
                desired[i].endpoints = real.clone();
                vips.push((path, desired[i].cluster_ip));
            }
            let mut syncer = super::syncer(Arc::new(proxy::ExecIptables::new(Backend::Legacy)));
            let took = super::sync(&node, &mut syncer, &desired)?;
            eprintln!("proxy: connect: node with {services} Services synced in {took:?}");
        }
        let listener = Server::start(&server)?;
        Ok(Topology {
            client,
            node,
            server,
            listener,
            vips,
            services,
        })
    }

    fn paths(&self) -> Vec<Path> {
        let mut p: Vec<Path> = self.vips.iter().map(|(p, _)| *p).collect();
        p.push(Path::Direct);
        p
    }

    /// Where sample `round` of `path` connects to.
    fn target(&self, path: Path, round: usize) -> SocketAddr {
        match self.vips.iter().find(|(p, _)| *p == path) {
            Some((_, vip)) => SocketAddr::from((*vip, 80)),
            None => SocketAddr::from((BACKENDS[round % BACKENDS.len()], PORT)),
        }
    }

    /// One fresh connection from the client namespace, timed from
    /// `connect()` to established; closed at once.
    fn connect(&self, to: SocketAddr) -> Result<Duration> {
        self.client
            .run(|| {
                let t = Instant::now();
                TcpStream::connect_timeout(&to, TIMEOUT).map(|_| t.elapsed())
            })?
            .with_context(|| {
                format!(
                    "connect to {to} from {} via {}",
                    self.client.name(),
                    self.node.name()
                )
            })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.listener.stop(&self.server);
    }
}

/// Builds a node per size and one without rules (the floor), then runs
/// `WARMUP + SAMPLES` rounds; each round connects once per node and path,
/// starting at a different one each round. Each sample is a new connection
/// (new source port): its SYN is a new conntrack entry and walks the
/// node's nat chains, KUBE-SERVICES included, once.
pub fn measure() -> Result<Vec<Node>> {
    let mut topologies = Vec::new();
    for n in SIZES.into_iter().chain([0]) {
        topologies.push(Topology::new(n)?);
    }
    let jobs: Vec<(usize, Path)> = topologies
        .iter()
        .enumerate()
        .flat_map(|(t, topo)| topo.paths().into_iter().map(move |p| (t, p)))
        .collect();
    let mut nodes: Vec<Node> = topologies
        .iter()
        .map(|t| Node {
            services: t.services,
            samples: t.paths().into_iter().map(|p| (p, Vec::new())).collect(),
        })
        .collect();
    eprintln!(
        "proxy: connect: {WARMUP} warm-up + {SAMPLES} rounds of {} connections, interleaved",
        jobs.len()
    );
    for round in 0..WARMUP + SAMPLES {
        for k in 0..jobs.len() {
            let (t, path) = jobs[(k + round) % jobs.len()];
            let took = topologies[t].connect(topologies[t].target(path, round))?;
            if round >= WARMUP {
                if let Some((_, s)) = nodes[t].samples.iter_mut().find(|(p, _)| *p == path) {
                    s.push(took);
                }
            }
        }
    }
    Ok(nodes)
}
