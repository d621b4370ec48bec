//! First-packet connect latency: fresh TCP connections from a client
//! namespace, through a node namespace the proxy (either mode) programmed
//! with N Services, to a listener in a server namespace, via the ClusterIP
//! and directly to the pod IP, every node and path interleaved; and
//! network programming latency, from a change handed to the proxy to the
//! first connection that succeeds. It measures; the reports format.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netns_tests::TestNs;
use proxy::{Backend, Endpoint, NftSyncer, Proxier, ProxyMode, ServicePort};

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
    /// The proxy mode that programmed it.
    pub mode: ProxyMode,
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
    mode: ProxyMode,
    /// The proxy that programmed the node and what it was given.
    proxier: Option<Box<dyn Proxier>>,
    desired: Vec<ServicePort>,
    /// `desired` as the agent hands it over, with the Services changed.
    fed: super::Fed,
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

/// The backends as endpoints at `port`.
fn backends(port: u16) -> Vec<Endpoint> {
    BACKENDS
        .iter()
        .map(|&ip| Endpoint {
            ip,
            port,
            local: false,
        })
        .collect()
}

/// A proxy of `mode` for the bench's node, built in `ns`.
fn proxier(ns: &TestNs, mode: ProxyMode) -> Result<Box<dyn Proxier>> {
    Ok(match mode {
        ProxyMode::Iptables => Box::new(super::syncer(Arc::new(proxy::ExecIptables::new(
            Backend::Legacy,
        )))),
        ProxyMode::Nftables => ns.run(|| -> Result<Box<dyn Proxier>> {
            let nft = hostnet::nftables::NfTablesSocket::open()?;
            Ok(Box::new(
                NftSyncer::new(Arc::new(nft), super::node())
                    .with_full_sync_period(Duration::from_secs(86_400)),
            ))
        })??,
    })
}

impl Topology {
    /// The three namespaces, wired, the node forwarding. Unless `services`
    /// is 0 the node holds that many Services, programmed by the proxy in
    /// `mode`: the first and the last one balance over the server's
    /// addresses, the others over fake IPs.
    fn new(services: usize, mode: ProxyMode) -> Result<Topology> {
        let (client, node, server) = (
            TestNs::new("bcc")?,
            TestNs::new("bcn")?,
            TestNs::new("bcs")?,
        );
        wire(&node, "toc", NODE_CLIENT_SIDE, &client, &[CLIENT_IP])?;
        wire(&node, "tos", NODE_SERVER_SIDE, &server, &BACKENDS)?;
        sh(&node, "sysctl -qw net.ipv4.ip_forward=1")?;
        let mut vips = Vec::new();
        let mut desired = Vec::new();
        let mut programmed = None;
        if services > 0 {
            desired = super::services(services);
            for (path, i) in [(Path::First, 0), (Path::Last, services - 1)] {
                desired[i].endpoints = backends(PORT);
                vips.push((path, desired[i].cluster_ip));
            }
            let mut p = proxier(&node, mode)?;
            let t = Instant::now();
            node.run(|| p.sync(&desired))?
                .map_err(|e| anyhow!("{} sync: {e}", mode.name()))?;
            eprintln!(
                "proxy: connect: {} node with {services} Services synced in {:?}",
                mode.name(),
                t.elapsed()
            );
            programmed = Some(p);
        }
        let listener = Server::start(&server)?;
        Ok(Topology {
            client,
            node,
            server,
            listener,
            vips,
            services,
            mode,
            proxier: programmed,
            fed: super::Fed::new(&desired),
            desired,
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

/// Builds a node per (mode, size) and one without rules (the floor), then
/// runs `WARMUP + SAMPLES` rounds; each round connects once per node and
/// path, starting at a different one each round. Each sample is a new
/// connection (new source port): its SYN is a new conntrack entry and
/// walks the node's nat rules once.
pub fn measure(nodes: &[(ProxyMode, usize)]) -> Result<Vec<Node>> {
    let mut topologies = Vec::new();
    for &(mode, n) in nodes.iter().chain([&(ProxyMode::Iptables, 0)]) {
        topologies.push(Topology::new(n, mode)?);
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
            mode: t.mode,
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

/// What a programming sample changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new Service whose endpoints answer.
    Service,
    /// A Service's endpoints move from a port that refuses to one that
    /// answers.
    Endpoints,
}

/// Network programming latency of one mode for one kind of change.
#[derive(Debug, Clone)]
pub struct Programming {
    pub mode: ProxyMode,
    pub change: Change,
    pub services: usize,
    pub samples: Vec<Duration>,
}

/// How long a client waits for a connection that never comes.
const PROGRAMMING_DEADLINE: Duration = Duration::from_secs(20);

/// For each mode a node holding `services` Services, then `samples`
/// rounds, each one change of each kind in each mode (modes and kinds
/// interleaved). A sample runs from the change handed to the proxy to the
/// first connection that succeeds; a client retries meanwhile. Before the
/// change the client is refused at once: a new ClusterIP is routed to the
/// server namespace (which owns the Service range and has nothing on port
/// 80), the old endpoints are the server's on a closed port.
pub fn programming(services: usize, samples: usize) -> Result<Vec<Programming>> {
    let modes = [ProxyMode::Nftables, ProxyMode::Iptables];
    let mut topologies = Vec::new();
    for mode in modes {
        let t = Topology::new(services, mode)?;
        sh(
            &t.node,
            &format!("ip route add 10.96.0.0/12 via {}", BACKENDS[0]),
        )?;
        sh(&t.server, "ip route add local 10.96.0.0/12 dev lo")?;
        topologies.push(t);
    }
    let mut out: Vec<Programming> = Vec::new();
    for mode in modes {
        for change in [Change::Service, Change::Endpoints] {
            out.push(Programming {
                mode,
                change,
                services,
                samples: Vec::new(),
            });
        }
    }
    // The Services whose endpoints move: fake ones first set to refuse.
    for t in &mut topologies {
        for i in 0..samples {
            let j = 1 + (i * 97) % (services - 2);
            t.desired[j].endpoints = backends(CLOSED_PORT);
            t.fed.set(&t.desired[j]);
        }
        let (node, fed) = (&t.node, &mut t.fed);
        let p = t.proxier.as_mut().context("a programmed node")?;
        node.run(|| fed.sync(p.as_mut()))?
            .map_err(|e| anyhow!("sync: {e}"))?;
    }
    for i in 0..samples {
        for k in 0..topologies.len() * 2 {
            let k = (k + i) % (topologies.len() * 2);
            let (t, change) = (
                &mut topologies[k / 2],
                [Change::Service, Change::Endpoints][k % 2],
            );
            let vip = match change {
                Change::Service => {
                    let vip = Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250) as u8 + 1);
                    let mut sp = t.desired[0].clone();
                    sp.name.name = format!("new-{i}");
                    sp.cluster_ip = vip;
                    t.fed.set(&sp);
                    t.desired.push(sp);
                    vip
                }
                Change::Endpoints => {
                    let j = 1 + (i * 97) % (services - 2);
                    t.desired[j].endpoints = backends(PORT);
                    t.fed.set(&t.desired[j]);
                    t.desired[j].cluster_ip
                }
            };
            let took = t.program(SocketAddr::from((vip, 80)))?;
            let mode = t.mode;
            if let Some(p) = out
                .iter_mut()
                .find(|p| p.mode == mode && p.change == change)
            {
                p.samples.push(took);
            }
        }
    }
    Ok(out)
}

/// A port nothing listens on in the server namespace.
const CLOSED_PORT: u16 = 9;

impl Topology {
    /// Syncs the node to `self.fed` while a client retries `to`: the time
    /// from the sync's start to the first connection that succeeds.
    fn program(&mut self, to: SocketAddr) -> Result<Duration> {
        let start = Instant::now();
        let deadline = start + PROGRAMMING_DEADLINE;
        let client = &self.client;
        let (node, fed) = (&self.node, &mut self.fed);
        let p = self.proxier.as_mut().context("a programmed node")?;
        std::thread::scope(|scope| {
            let retry = scope.spawn(move || {
                client.run(|| loop {
                    if TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok() {
                        return Ok(Instant::now());
                    }
                    if Instant::now() > deadline {
                        bail!("{to} never answered");
                    }
                })?
            });
            node.run(|| fed.sync(p.as_mut()))?
                .map_err(|e| anyhow!("sync: {e}"))?;
            let ok = retry.join().map_err(|_| anyhow!("the client panicked"))??;
            Ok(ok.saturating_duration_since(start))
        })
    }
}
