//! The nftables mode's IPv6 table (`ip6 kube-proxy`) against the real
//! kernel, in namespaces the test creates: a node namespace with a pod
//! bridge (fd00:10:244:1::1/64), pods on it, and an outside namespace on
//! the node's address fd00:192::1. The engine programs the node namespace
//! only; clients and servers are real sockets.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netns_tests::{require_root, TestNs};
use proxy::conntrack::netlink::NetlinkConntrack;
use proxy::rules::names::{Protocol, ServicePortName};
use proxy::{Endpoint, NftSyncer, NodeConfig, Proxier, ServicePort};

const NODE_IP: &str = "fd00:192::1";
const OUTSIDE_IP: &str = "fd00:192::2";

fn pod_ip(i: usize) -> String {
    format!("fd00:10:244:1::{}", i + 2)
}

struct Lab {
    node: TestNs,
    outside: TestNs,
    pods: Vec<TestNs>,
    servers: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// No duplicate address detection in `ns`: addresses usable at once.
fn no_dad(ns: &TestNs) -> Result<()> {
    for key in ["all", "default"] {
        ns.sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.accept_dad=0"),
        ])?;
    }
    Ok(())
}

impl Lab {
    fn new(pods: usize) -> Result<Lab> {
        let node = TestNs::new("p6n")?;
        let outside = TestNs::new("p6o")?;
        no_dad(&node)?;
        no_dad(&outside)?;
        node.sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        node.sh(&["ip", "link", "add", "br0", "type", "bridge"])?;
        node.sh(&[
            "ip",
            "addr",
            "add",
            "fd00:10:244:1::1/64",
            "dev",
            "br0",
            "nodad",
        ])?;
        node.sh(&["ip", "link", "set", "br0", "up"])?;
        node.plug("ext0", &outside, &format!("{OUTSIDE_IP}/64"))?;
        node.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE_IP}/64"),
            "dev",
            "ext0",
            "nodad",
        ])?;
        // As a real node's default route would, the service range leads
        // somewhere (the outside, which forwards nothing).
        node.sh(&[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:96::/112",
            "via",
            OUTSIDE_IP,
        ])?;
        let mut lab = Lab {
            node,
            outside,
            pods: Vec::new(),
            servers: Vec::new(),
        };
        for i in 0..pods {
            let pod = TestNs::new("p6p")?;
            no_dad(&pod)?;
            let host = format!("vp{i}");
            lab.node.plug(&host, &pod, &format!("{}/64", pod_ip(i)))?;
            lab.node
                .sh(&["ip", "link", "set", &host, "master", "br0"])?;
            pod.sh(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:10:244:1::1",
            ])?;
            lab.pods.push(pod);
        }
        Ok(lab)
    }

    /// The IPv6 engine programming the node namespace (built inside it),
    /// with UDP conntrack cleanup when `conntrack`.
    fn syncer(&self, conntrack: bool) -> Result<NftSyncer<Ipv6Addr>> {
        let node = NodeConfig {
            node_name: "n1".into(),
            node_ips: Vec::new(),
            cluster_cidr: Some("10.244.0.0/16".parse()?),
            cluster_cidr_v6: Some("fd00:10:244::/56".parse()?),
            masquerade_all: false,
            localhost_nodeports: false,
        };
        self.node.run(|| -> Result<NftSyncer<Ipv6Addr>> {
            let nft = hostnet::nftables::NfTablesSocket::open()?;
            let s = NftSyncer::<Ipv6Addr>::new(Arc::new(nft), node);
            Ok(if conntrack {
                s.with_conntrack(Arc::new(NetlinkConntrack::open_ipv6()?))
            } else {
                s
            })
        })?
    }

    /// A server in pod `i` answering every TCP connection on `port` with `name`.
    fn serve(&mut self, i: usize, port: u16, name: &str) -> Result<()> {
        self.serve_on(i, &format!("TCP6-LISTEN:{port},fork,reuseaddr"), name)
    }

    /// A server in pod `i` on socat address `listen`, answering `name`.
    fn serve_on(&mut self, i: usize, listen: &str, name: &str) -> Result<()> {
        let child = self.pods[i]
            .cmd(&["socat", listen, &format!("SYSTEM:echo {name}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start socat")?;
        self.servers.push(child);
        Ok(())
    }
}

/// One TCP connection from `ns` to `[ip]:port`: what the server said.
fn fetch(ns: &TestNs, ip: &str, port: u16) -> Result<String> {
    let addr = SocketAddr::new(ip.parse()?, port);
    ns.run(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })?
    .map_err(|e| anyhow!("[{ip}]:{port}: {e}"))
}

/// `fetch` until it answers (servers start in the background).
fn fetch_eventually(ns: &TestNs, ip: &str, port: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fetch(ns, ip, port) {
            Ok(out) if !out.is_empty() => return Ok(out),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(out) => bail!("[{ip}]:{port} answered {out:?}"),
            Err(e) => return Err(e),
        }
    }
}

fn port(name: &str, vip: &str, eps: &[String]) -> ServicePort<Ipv6Addr> {
    let name = ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port: String::new(),
    };
    let mut sp = ServicePort::new(name, Protocol::Tcp, vip.parse().expect("vip"), 80);
    sp.endpoints = eps
        .iter()
        .map(|ip| Endpoint {
            ip: ip.parse().expect("ip"),
            port: 8080,
            local: true,
        })
        .collect();
    sp
}

#[test]
fn ipv6_cluster_ips_node_ports_and_rejects_in_table_ip6() -> Result<()> {
    if !require_root("ipv6_cluster_ips_node_ports_and_rejects_in_table_ip6") {
        return Ok(());
    }
    let mut lab = Lab::new(3)?;
    lab.serve(0, 8080, "a")?;
    lab.serve(1, 8080, "b")?;
    let mut syncer = lab.syncer(false)?;
    let mut web = port("web", "fd00:96::10", &[pod_ip(0), pod_ip(1)]);
    web.node_port = Some(30080);
    let mut pinned = port("pinned", "fd00:96::12", &[pod_ip(0), pod_ip(1)]);
    pinned.affinity_seconds = Some(60);
    let empty = port("empty", "fd00:96::11", &[]);
    let desired = vec![web, pinned, empty];
    let o = lab
        .node
        .run(|| syncer.sync(&desired))?
        .map_err(|e| anyhow!("sync: {e}"))?;
    assert!(o.full);
    let tables = lab.node.sh(&["nft", "list", "tables"])?;
    assert!(tables.contains("table ip6 kube-proxy"), "{tables}");

    // A pod reaches the ClusterIP; both endpoints answer over time.
    let client = &lab.pods[2];
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(fetch_eventually(client, "fd00:96::10", 80)?);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    // Session affinity pins the client to one endpoint.
    let first = fetch_eventually(client, "fd00:96::12", 80)?;
    for _ in 0..8 {
        assert_eq!(fetch(client, "fd00:96::12", 80)?, first);
    }
    // The NodePort from outside the node, on its IPv6 address.
    let out = fetch_eventually(&lab.outside, NODE_IP, 30080)?;
    assert!(out == "a" || out == "b", "{out}");
    // A pod reaching itself through its Service (hairpin), with the
    // bridge port in hairpin mode as knode-bridge's hairpinMode sets it.
    lab.node.sh(&[
        "ip",
        "link",
        "set",
        "vp0",
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])?;
    let own = port("own", "fd00:96::13", &[pod_ip(0)]);
    let desired = [desired, vec![own]].concat();
    lab.node
        .run(|| syncer.sync(&desired))?
        .map_err(|e| anyhow!("sync: {e}"))?;
    assert_eq!(fetch_eventually(&lab.pods[0], "fd00:96::13", 80)?, "a");
    // No endpoints: refused at once (TCP: a reset; see Addr::TCP_RESET).
    let start = Instant::now();
    let e = fetch(client, "fd00:96::11", 80).expect_err("no endpoints");
    assert!(
        e.to_string().contains("refused") && start.elapsed() < Duration::from_millis(500),
        "{e} after {:?}",
        start.elapsed()
    );
    Ok(())
}

/// One datagram from `ns`, from source port `sport`, to `[ip]:port`: the
/// answer, or `None` within a second.
fn udp_ask(ns: &TestNs, sport: u16, ip: &str, port: u16) -> Result<Option<String>> {
    let to = SocketAddr::new(ip.parse()?, port);
    ns.run(|| -> std::io::Result<Option<String>> {
        let s = UdpSocket::bind(SocketAddr::new("::".parse().expect("any"), sport))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send_to(b"ask\n", to)?;
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })?
    .map_err(|e| anyhow!("udp [{ip}]:{port}: {e}"))
}

#[test]
fn a_replaced_ipv6_udp_endpoint_loses_its_stale_conntrack_entry() -> Result<()> {
    if !require_root("a_replaced_ipv6_udp_endpoint_loses_its_stale_conntrack_entry") {
        return Ok(());
    }
    let mut lab = Lab::new(3)?;
    lab.serve_on(0, "UDP6-RECVFROM:5353,fork", "a")?;
    lab.serve_on(1, "UDP6-RECVFROM:5353,fork", "b")?;
    let mut syncer = lab.syncer(true)?;
    let dns = |ep: usize| {
        let mut sp = port("dns", "fd00:96::53", &[pod_ip(ep)]);
        sp.protocol = Protocol::Udp;
        sp.port = 53;
        for e in &mut sp.endpoints {
            e.port = 5353;
        }
        sp
    };
    let sync = |s: &mut NftSyncer<Ipv6Addr>, sp: ServicePort<Ipv6Addr>| {
        lab.node
            .run(|| s.sync(&[sp]))?
            .map_err(|e| anyhow!("sync: {e}"))
    };
    sync(&mut syncer, dns(0))?;
    let client = &lab.pods[2];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = None;
    while first.is_none() && Instant::now() < deadline {
        first = udp_ask(client, 40000, "fd00:96::53", 53)?;
    }
    assert_eq!(first.as_deref(), Some("a"));
    // a keeps running: only a stale entry could still lead there.
    let o = sync(&mut syncer, dns(1))?;
    assert_eq!(o.conntrack_deleted, 1, "the flow to a is deleted");
    let mut next = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.is_none() && Instant::now() < deadline {
        next = udp_ask(client, 40000, "fd00:96::53", 53)?;
    }
    assert_eq!(
        next.as_deref(),
        Some("b"),
        "the same 5-tuple reaches the new endpoint"
    );
    Ok(())
}
