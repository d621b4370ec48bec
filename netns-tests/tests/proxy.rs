//! The service proxy against the real kernel, in namespaces the tests
//! create: a "node" namespace with a pod bridge (br_netfilter is on in new
//! namespaces), "pods" as namespaces on veth ports of that bridge, and an
//! outside namespace on the node's address. The proxy programs iptables or
//! nftables in the node namespace only (tests made by `in_both_modes!` run
//! once per mode); clients and servers are real sockets (std and socat).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use controlplane::api::{ControlPlane, ObjectRef};
use controlplane::registry::{Allocators, Registry};
use controlplane::storage::embedded::Embedded;
use controlplane::{Kind, Object};
use netns_tests::cluster::wait_until;
use netns_tests::{require_root, TempDir, TestNs};
use proxy::conntrack::netlink::NetlinkConntrack;
use proxy::conntrack::Conntrack;
use proxy::rules::names::{Protocol, ServicePortName};
use proxy::{
    Backend, Endpoint, ExecIptables, Iptables, Metrics, NftSyncer, NodeConfig, Proxier,
    ProxyConfig, ProxyMode, ServicePort, Syncer, Table,
};
use serde_json::json;

const NODE_IP: &str = "192.0.2.1";
const OUTSIDE_IP: &str = "192.0.2.2";

/// A node namespace, an outside namespace, and pods on the node's bridge.
struct Lab {
    node: TestNs,
    outside: TestNs,
    pods: Vec<TestNs>,
    servers: Vec<Child>,
}

impl Lab {
    /// The node (br0 10.244.1.1/24, ext0 192.0.2.1/24, forwarding on), the
    /// outside namespace, and `pods` pods at 10.244.1.2, .3, ...
    fn new(pods: usize) -> Result<Lab> {
        let node = TestNs::new("pxn")?;
        let outside = TestNs::new("pxo")?;
        node.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        node.sh(&["ip", "link", "add", "br0", "type", "bridge"])?;
        node.sh(&["ip", "addr", "add", "10.244.1.1/24", "dev", "br0"])?;
        node.sh(&["ip", "link", "set", "br0", "up"])?;
        plug(&node, "ext0", &outside, &format!("{OUTSIDE_IP}/24"))?;
        node.sh(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "ext0"])?;
        // As a real node's default route would, the service range leads
        // somewhere (the outside namespace, which forwards nothing), so a
        // VIP without rules is a routing success and only REJECT refuses.
        node.sh(&["ip", "route", "add", "10.96.0.0/12", "via", OUTSIDE_IP])?;
        let mut lab = Lab {
            node,
            outside,
            pods: Vec::new(),
            servers: Vec::new(),
        };
        for i in 0..pods {
            let pod = TestNs::new("pxp")?;
            let host = format!("vp{i}");
            plug(&lab.node, &host, &pod, &format!("{}/24", pod_ip(i)))?;
            lab.node
                .sh(&["ip", "link", "set", &host, "master", "br0"])?;
            pod.sh(&["ip", "route", "add", "default", "via", "10.244.1.1"])?;
            lab.pods.push(pod);
        }
        Ok(lab)
    }

    /// A server in pod `i` answering every TCP connection (or UDP datagram)
    /// on `port` with `name`.
    fn serve(&mut self, i: usize, proto: Protocol, port: u16, name: &str) -> Result<()> {
        let listen = match proto {
            Protocol::Udp => format!("UDP4-RECVFROM:{port},fork"),
            _ => format!("TCP4-LISTEN:{port},fork,reuseaddr"),
        };
        let child = self.pods[i]
            .cmd(&["socat", &listen, &format!("SYSTEM:echo {name}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start socat")?;
        self.servers.push(child);
        Ok(())
    }

    /// A Syncer that programs the node namespace (built inside it).
    fn syncer(&self) -> Result<Syncer> {
        self.node.run(|| {
            let ipt = Arc::new(ExecIptables::new(Backend::detect()));
            let ct = NetlinkConntrack::open().expect("open ctnetlink in the node namespace");
            Syncer::new(ipt, node_config()).with_conntrack(Arc::new(ct))
        })
    }

    /// The engine of `mode`, programming the node namespace.
    fn proxier(&self, mode: ProxyMode) -> Result<Box<dyn Proxier>> {
        self.proxier_for(mode, node_config())
    }

    /// The engine of `mode` for a node configured as `node`.
    fn proxier_for(&self, mode: ProxyMode, node: NodeConfig) -> Result<Box<dyn Proxier>> {
        self.node.run(|| {
            let ct = Arc::new(NetlinkConntrack::open()?);
            Ok(match mode {
                ProxyMode::Iptables => {
                    let ipt = Arc::new(ExecIptables::new(Backend::detect()));
                    Box::new(Syncer::new(ipt, node).with_conntrack(ct)) as Box<dyn Proxier>
                }
                ProxyMode::Nftables => {
                    let nft = hostnet::nftables::NfTablesSocket::open()?;
                    Box::new(NftSyncer::new(Arc::new(nft), node).with_conntrack(ct))
                }
            })
        })?
    }

    /// Runs one sync in the node namespace.
    fn sync<P: Proxier + ?Sized>(
        &self,
        s: &mut P,
        desired: &[ServicePort],
    ) -> Result<proxy::SyncOutcome> {
        self.node
            .run(|| s.sync(desired))?
            .map_err(|e| anyhow!("sync: {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A veth from `node` (named `host`, up) to `peer` (eth0 with `cidr`, up).
fn plug(node: &TestNs, host: &str, peer: &TestNs, cidr: &str) -> Result<()> {
    node.plug(host, peer, cidr)
}

/// The lab of `test` with `pods` pods and a Syncer for its node; `None`
/// (a skip) without root.
fn start(test: &str, pods: usize) -> Result<Option<(Lab, Syncer)>> {
    if !require_root(test) {
        return Ok(None);
    }
    let lab = Lab::new(pods)?;
    let syncer = lab.syncer()?;
    Ok(Some((lab, syncer)))
}

/// The lab of `test` in `mode`; `None` (a skip) without root.
fn start_in(test: &str, pods: usize, mode: ProxyMode) -> Result<Option<(Lab, Box<dyn Proxier>)>> {
    if !require_root(&format!("{test} ({})", mode.name())) {
        return Ok(None);
    }
    let lab = Lab::new(pods)?;
    let proxier = lab.proxier(mode)?;
    Ok(Some((lab, proxier)))
}

/// `#[test]`s `name::iptables` and `name::nftables` calling `name(mode)`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn iptables() -> anyhow::Result<()> {
                super::$name(proxy::ProxyMode::Iptables)
            }
            #[test]
            fn nftables() -> anyhow::Result<()> {
                super::$name(proxy::ProxyMode::Nftables)
            }
        }
    )*};
}

in_both_modes!(
    cluster_ip_spreads_over_two_backends_and_affinity_pins,
    a_service_without_endpoints_refuses_at_once,
    a_node_port_answers_from_outside_the_node,
    rules_flushed_by_someone_else_come_back_after_the_canary_fires,
    a_replaced_udp_endpoint_loses_its_stale_conntrack_entry,
    run_follows_the_control_plane_and_repairs_a_flush,
    a_pod_reaches_itself_through_its_service,
    affinity_follows_a_removed_endpoint_and_times_out,
    external_and_load_balancer_ips_follow_the_external_policy,
    localhost_node_ports_answer_and_martians_are_dropped,
);

fn pod_ip(i: usize) -> String {
    format!("10.244.1.{}", i + 2)
}

fn node_config() -> NodeConfig {
    NodeConfig {
        node_name: "n1".into(),
        node_ips: vec![NODE_IP.parse().expect("ip")],
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        cluster_cidr_v6: None,
        masquerade_all: false,
        localhost_nodeports: false,
    }
}

/// A Service port `default/name:p` on `vip:port` over pods `eps` (by index) at `target`.
fn service(
    name: &str,
    proto: Protocol,
    vip: &str,
    port: u16,
    eps: &[usize],
    target: u16,
) -> ServicePort {
    let name = ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port: "p".into(),
    };
    let mut sp = ServicePort::new(name, proto, vip.parse().expect("vip"), port);
    sp.endpoints = eps
        .iter()
        .map(|i| Endpoint {
            ip: pod_ip(*i).parse().expect("ip"),
            port: target,
            local: true,
        })
        .collect();
    sp
}

/// What someone else does to the proxy's rules: `iptables -t nat -F`, or
/// `nft flush ruleset` (which deletes every table).
fn flush(lab: &Lab, mode: ProxyMode) -> Result<()> {
    match mode {
        ProxyMode::Iptables => lab.node.sh(&["iptables", "-t", "nat", "-F"])?,
        ProxyMode::Nftables => lab.node.sh(&["nft", "flush", "ruleset"])?,
    };
    Ok(())
}

/// One TCP request from `client` to `addr`: what the server said.
fn ask(client: &TestNs, addr: &str) -> Result<std::io::Result<String>> {
    let addr: SocketAddr = addr.parse()?;
    client.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })
}

/// Asks until a non-empty answer comes (servers start asynchronously).
fn ask_until_answered(client: &TestNs, addr: &str) -> Result<String> {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(30), || match ask(client, addr) {
        Ok(Ok(s)) if !s.is_empty() => {
            last = s;
            true
        }
        other => {
            last = format!("{other:?}");
            false
        }
    });
    if ok {
        Ok(last)
    } else {
        Err(anyhow!(
            "{addr} never answered from {}: {last}",
            client.name()
        ))
    }
}

/// One UDP datagram from `client`'s port `sport` to `addr`; the reply, if any within 1 s.
fn udp_ask(client: &TestNs, sport: u16, addr: &str) -> Result<Option<String>> {
    let addr: SocketAddr = addr.parse()?;
    client.run(|| {
        let s = UdpSocket::bind(("0.0.0.0", sport)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.send_to(b"hello\n", addr).ok()?;
        let mut buf = [0u8; 256];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

fn cluster_ip_spreads_over_two_backends_and_affinity_pins(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in(
        "cluster_ip_spreads_over_two_backends_and_affinity_pins",
        3,
        mode,
    )?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    lab.serve(2, Protocol::Tcp, 8080, "b2")?;
    let mut web = service("web", Protocol::Tcp, "10.96.0.10", 80, &[1, 2], 8080);
    let o = lab.sync(&mut *s, std::slice::from_ref(&web))?;
    assert!(o.full && o.restored);
    let client = &lab.pods[0];
    ask_until_answered(client, "10.244.1.3:8080")?;
    ask_until_answered(client, "10.244.1.4:8080")?;

    let (mut b1, mut b2) = (0, 0);
    for _ in 0..100 {
        match ask(client, "10.96.0.10:80")?
            .context("ask the ClusterIP")?
            .as_str()
        {
            "b1" => b1 += 1,
            "b2" => b2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Binomial(100, 0.5): fewer than 25 on one side has probability < 1e-6.
    assert!(b1 >= 25 && b2 >= 25, "spread b1={b1} b2={b2}");

    web.affinity_seconds = Some(10_800);
    let o = lab.sync(&mut *s, std::slice::from_ref(&web))?;
    assert!(!o.full, "an affinity change is a partial sync");
    let first = ask(client, "10.96.0.10:80")?.context("ask")?;
    for _ in 0..20 {
        assert_eq!(
            ask(client, "10.96.0.10:80")?.context("ask")?,
            first,
            "affinity pins one backend"
        );
    }
    Ok(())
}

/// Asks `addr` `n` times from `client`; every answer must be the same.
fn pinned(client: &TestNs, addr: &str, n: usize) -> Result<String> {
    let first = ask(client, addr)?.context("ask")?;
    for _ in 1..n {
        let next = ask(client, addr)?.context("ask")?;
        assert_eq!(next, first, "affinity pins one backend ({addr})");
    }
    Ok(first)
}

/// ClientIP affinity on a ClusterIP and a NodePort: the pinned endpoint
/// leaves, the client moves to the other and stays there; once the
/// timeout passes without a connection, the pin is gone.
fn affinity_follows_a_removed_endpoint_and_times_out(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) =
        start_in("affinity_follows_a_removed_endpoint_and_times_out", 3, mode)?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    lab.serve(2, Protocol::Tcp, 8080, "b2")?;
    // Long enough that no gap between two asks of a busy machine reaches it.
    let seconds = 4;
    let web = ServicePort {
        node_port: Some(30080),
        affinity_seconds: Some(seconds),
        ..service("web", Protocol::Tcp, "10.96.0.12", 80, &[1, 2], 8080)
    };
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    ask_until_answered(&lab.pods[0], "10.244.1.3:8080")?;
    ask_until_answered(&lab.pods[0], "10.244.1.4:8080")?;
    let (client, vip) = (&lab.pods[0], "10.96.0.12:80");
    let node_port = format!("{NODE_IP}:30080");
    let first = pinned(client, vip, 20)?;
    pinned(&lab.outside, &node_port, 20)?;
    if mode == ProxyMode::Nftables {
        // nft prints the table (every nft-based tool reads it), with the
        // client entries the two connections left.
        let listed = lab.node.sh(&["nft", "list", "table", "ip", "kube-proxy"])?;
        assert!(listed.contains("update @affinity-clients"), "{listed}");
        let clients =
            lab.node
                .sh(&["nft", "list", "map", "ip", "kube-proxy", "affinity-clients"])?;
        for client in [
            "10.244.1.2 . 10.96.0.12 . tcp . 80",
            "192.0.2.2 . 192.0.2.1 . tcp . 30080",
        ] {
            assert!(clients.contains(client), "{client} in {clients}");
        }
    }
    // A restarted proxy's first sync is full: the pins survive it.
    s = lab.proxier(mode)?;
    assert!(lab.sync(&mut *s, std::slice::from_ref(&web))?.full);
    if mode == ProxyMode::Nftables {
        let clients =
            lab.node
                .sh(&["nft", "list", "map", "ip", "kube-proxy", "affinity-clients"])?;
        assert!(
            clients.contains("10.244.1.2 . 10.96.0.12 . tcp . 80"),
            "carried into the new table: {clients}"
        );
    }
    assert_eq!(pinned(client, vip, 5)?, first, "pinned across a full sync");

    // The pinned endpoint leaves: the client goes to the other one and
    // is pinned there.
    let kept = if first == "b1" { 2 } else { 1 };
    let fewer = ServicePort {
        endpoints: service("web", Protocol::Tcp, "10.96.0.12", 80, &[kept], 8080).endpoints,
        ..web.clone()
    };
    lab.sync(&mut *s, std::slice::from_ref(&fewer))?;
    let other = format!("b{kept}");
    assert_eq!(pinned(client, vip, 5)?, other);
    assert_eq!(pinned(&lab.outside, &node_port, 5)?, other);
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    assert_eq!(
        pinned(client, vip, 20)?,
        other,
        "still pinned after the endpoint is back"
    );

    // The timeout: each round lets it pass without a connection, then
    // asks once (which pins again, to a random endpoint). Twenty rounds
    // all landing on the same endpoint has probability 2^-20.
    let mut answers = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(u64::from(seconds) * 1000 + 500));
        answers.push(ask(client, vip)?.context("ask after the timeout")?);
        if answers.iter().any(|a| *a != other) {
            return Ok(());
        }
    }
    Err(anyhow!("the pin never expired: {answers:?}"))
}

const EXTERNAL_IP: &str = "198.51.100.10";
const LB_IP: &str = "198.51.100.20";

/// Both policies on an external IP and a load-balancer IP, asked from
/// outside (routed to the node). The servers answer with the client
/// address they see.
fn external_and_load_balancer_ips_follow_the_external_policy(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in(
        "external_and_load_balancer_ips_follow_the_external_policy",
        3,
        mode,
    )?
    else {
        return Ok(());
    };
    for ip in [EXTERNAL_IP, LB_IP] {
        lab.outside
            .sh(&["ip", "route", "add", &format!("{ip}/32"), "via", NODE_IP])?;
    }
    // As a node's default route would, the addresses lead somewhere from
    // the node (back outside, which forwards nothing): only REJECT refuses.
    // Back out of the interface they came in on, they would make the node
    // send a redirect, which spends the ICMP rate limit of the client.
    lab.node
        .sh(&["ip", "route", "add", "198.51.100.0/24", "via", OUTSIDE_IP])?;
    for conf in ["all", "ext0"] {
        let key = format!("net.ipv4.conf.{conf}.send_redirects=0");
        lab.node.sh(&["sysctl", "-qw", &key])?;
    }
    lab.serve(1, Protocol::Tcp, 8080, "b1 $SOCAT_PEERADDR")?;
    lab.serve(2, Protocol::Tcp, 8080, "b2 $SOCAT_PEERADDR")?;
    // Pod 1 runs on this node; pod 2 counts as another node's.
    let mut web = service("web", Protocol::Tcp, "10.96.0.50", 80, &[1, 2], 8080);
    web.endpoints[1].local = false;
    web.external_ips = vec![EXTERNAL_IP.parse()?];
    web.load_balancer_ips = vec![LB_IP.parse()?];
    web.node_port = Some(30080);
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    let addrs = [
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
        format!("{NODE_IP}:30080"),
    ];
    // Pod 0 and the node itself are clients inside the cluster.
    let (pod, node_side) = (pod_ip(0), "10.244.1.1");

    // Cluster: every endpoint, the client masqueraded to the node.
    for addr in &addrs {
        let mut seen = std::collections::BTreeSet::new();
        let ok = wait_until(Duration::from_secs(10), || {
            if let Ok(Ok(a)) = ask(&lab.outside, addr) {
                assert!(!a.ends_with(OUTSIDE_IP), "policy Cluster masquerades: {a}");
                seen.insert(a);
            }
            seen.len() == 2
        });
        assert!(ok, "{addr}: both endpoints answer, saw {seen:?}");
    }

    // Local: this node's endpoint only, the client's address kept.
    web.external_local = true;
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    for addr in &addrs {
        for _ in 0..10 {
            let a = ask(&lab.outside, addr)?.context("ask")?;
            assert_eq!(a, format!("b1 {OUTSIDE_IP}"), "{addr}");
        }
    }
    // ... but pods and the node itself reach every endpoint (kube-proxy's
    // short-circuit): a pod keeps its address, the node is masqueraded.
    for (client, seen_as) in [(&lab.pods[0], pod.as_str()), (&lab.node, node_side)] {
        for addr in &addrs {
            let mut seen = std::collections::BTreeSet::new();
            let ok = wait_until(Duration::from_secs(10), || {
                if let Ok(Ok(a)) = ask(client, addr) {
                    seen.insert(a);
                }
                seen.len() >= 2
            });
            let want: std::collections::BTreeSet<String> = ["b1", "b2"]
                .iter()
                .map(|b| format!("{b} {seen_as}"))
                .collect();
            assert!(
                ok && seen == want,
                "{addr} from {}: {seen:?}",
                client.name()
            );
        }
    }

    // Local, and the only endpoint runs elsewhere: dropped, as kube-proxy
    // does (the client may try another node), not refused.
    web.endpoints.remove(0);
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    for addr in &addrs {
        let err = ask(&lab.outside, addr)?.expect_err("no local endpoint: must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{addr}: {err}");
        // Pods and the node still reach the other node's endpoint.
        assert_eq!(
            ask(&lab.pods[0], addr)?.context("from a pod")?,
            format!("b2 {pod}")
        );
        assert_eq!(
            ask(&lab.node, addr)?.context("from the node")?,
            format!("b2 {node_side}")
        );
    }

    // No endpoints: refused at once.
    web.endpoints.clear();
    lab.sync(&mut *s, std::slice::from_ref(&web))?;
    for addr in &addrs {
        let t = Instant::now();
        let err = ask(&lab.outside, addr)?.expect_err("no endpoints: must fail");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: {err}"
        );
        assert!(t.elapsed() < Duration::from_millis(500), "{addr}");
    }
    Ok(())
}

/// With `localhost-nodeports`: the node reaches a NodePort on
/// 127.0.0.1, and a packet for 127.0.0.1 arriving from the outside (which
/// `route_localnet` would otherwise deliver) is dropped.
fn localhost_node_ports_answer_and_martians_are_dropped(mode: ProxyMode) -> Result<()> {
    let test = "localhost_node_ports_answer_and_martians_are_dropped";
    if !require_root(&format!("{test} ({})", mode.name())) {
        return Ok(());
    }
    let mut lab = Lab::new(2)?;
    let node = NodeConfig {
        localhost_nodeports: true,
        ..node_config()
    };
    let mut s = lab.proxier_for(mode, node)?;
    lab.node
        .sh(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])?;
    // The outside sends to 198.51.100.99 through the node and rewrites the
    // destination to 127.0.0.1 once routed: a martian for the node.
    let martian = "198.51.100.99";
    lab.outside.sh(&[
        "ip",
        "route",
        "add",
        &format!("{martian}/32"),
        "via",
        NODE_IP,
    ])?;
    let rewrite = format!(
        "add table ip m; add chain ip m post {{ type filter hook postrouting priority 0; }}; \
         add rule ip m post ip daddr {martian} udp dport 9999 ip daddr set 127.0.0.1"
    );
    lab.outside.sh(&["nft", &rewrite])?;
    let listener = lab.node.run(|| UdpSocket::bind("127.0.0.1:9999"))??;
    listener.set_read_timeout(Some(Duration::from_millis(200)))?;
    let send = |lab: &Lab| -> Result<()> {
        lab.outside.run(|| -> std::io::Result<()> {
            UdpSocket::bind("0.0.0.0:0")?.send_to(b"martian", (martian, 9999))?;
            Ok(())
        })??;
        Ok(())
    };
    let mut buf = [0u8; 64];
    // Without the proxy's rules the martian gets through (the path works).
    let through = wait_until(Duration::from_secs(30), || {
        send(&lab).is_ok() && listener.recv_from(&mut buf).is_ok()
    });
    assert!(
        through,
        "the martian never reached 127.0.0.1 before the guard"
    );

    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    let web = ServicePort {
        node_port: Some(30080),
        ..service("web", Protocol::Tcp, "10.96.0.60", 80, &[1], 8080)
    };
    lab.sync(&mut *s, &[web])?;
    assert_eq!(ask_until_answered(&lab.node, "127.0.0.1:30080")?, "b1");
    while listener.recv_from(&mut buf).is_ok() {}
    // Now dropped: nothing arrives during ten sends over two seconds.
    for _ in 0..10 {
        send(&lab)?;
        assert!(
            listener.recv_from(&mut buf).is_err(),
            "a martian reached 127.0.0.1 through the guard"
        );
    }
    Ok(())
}

fn a_service_without_endpoints_refuses_at_once(mode: ProxyMode) -> Result<()> {
    let Some((lab, mut s)) = start_in("a_service_without_endpoints_refuses_at_once", 1, mode)?
    else {
        return Ok(());
    };
    lab.sync(
        &mut *s,
        &[service("empty", Protocol::Tcp, "10.96.0.20", 80, &[], 8080)],
    )?;
    let t = Instant::now();
    let err = ask(&lab.pods[0], "10.96.0.20:80")?.expect_err("no endpoints: must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused after {:?}",
        t.elapsed()
    );
    Ok(())
}

fn a_node_port_answers_from_outside_the_node(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in("a_node_port_answers_from_outside_the_node", 2, mode)?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    let web = ServicePort {
        node_port: Some(30080),
        ..service("web", Protocol::Tcp, "10.96.0.30", 80, &[1], 8080)
    };
    lab.sync(&mut *s, &[web])?;
    assert_eq!(
        ask_until_answered(&lab.outside, &format!("{NODE_IP}:30080"))?,
        "b1"
    );
    // An unknown port on the node address is not captured.
    assert!(ask(&lab.outside, &format!("{NODE_IP}:30081"))?.is_err());
    Ok(())
}

/// iptables: `iptables -t nat -F`; nftables: `nft flush ruleset`.
fn rules_flushed_by_someone_else_come_back_after_the_canary_fires(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in(
        "rules_flushed_by_someone_else_come_back_after_the_canary_fires",
        2,
        mode,
    )?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    let desired = [service("web", Protocol::Tcp, "10.96.0.40", 80, &[1], 8080)];
    lab.sync(&mut *s, &desired)?;
    assert_eq!(ask_until_answered(&lab.pods[0], "10.96.0.40:80")?, "b1");
    assert!(lab.node.run(|| s.check_canary())?);

    flush(&lab, mode)?;
    assert!(
        ask(&lab.pods[0], "10.96.0.40:80")?.is_err(),
        "flushed: the VIP leads nowhere"
    );
    // A partial sync alone would see nothing to do; the canary notices.
    assert!(!lab.node.run(|| s.check_canary())?);
    let o = lab.sync(&mut *s, &desired)?;
    assert!(o.full);
    assert_eq!(
        ask(&lab.pods[0], "10.96.0.40:80")?.context("ask after resync")?,
        "b1"
    );
    if mode == ProxyMode::Nftables {
        let tables = lab.node.sh(&["nft", "list", "tables"])?;
        assert_eq!(tables.trim(), "table ip kube-proxy");
        return Ok(());
    }
    let prerouting = lab
        .node
        .sh(&["iptables", "-t", "nat", "-S", "PREROUTING"])?;
    assert_eq!(
        prerouting.matches("-j KUBE-SERVICES").count(),
        1,
        "{prerouting}"
    );
    Ok(())
}

/// Hairpin: the only endpoint asks its own Service; without masquerade
/// its reply would bypass the node's un-DNAT and never match.
fn a_pod_reaches_itself_through_its_service(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in("a_pod_reaches_itself_through_its_service", 2, mode)?
    else {
        return Ok(());
    };
    // As knode-bridge's hairpinMode does: br_netfilter DNATs the frame
    // back towards the port it came from.
    lab.node.sh(&[
        "ip",
        "link",
        "set",
        "vp1",
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])?;
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    let web = service("web", Protocol::Tcp, "10.96.0.60", 80, &[1], 8080);
    lab.sync(&mut *s, &[web])?;
    assert_eq!(ask_until_answered(&lab.pods[1], "10.96.0.60:80")?, "b1");
    Ok(())
}

fn a_replaced_udp_endpoint_loses_its_stale_conntrack_entry(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, mut s)) = start_in(
        "a_replaced_udp_endpoint_loses_its_stale_conntrack_entry",
        3,
        mode,
    )?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Udp, 5353, "b1")?;
    lab.serve(2, Protocol::Udp, 5353, "b2")?;
    let dns = service("dns", Protocol::Udp, "10.96.0.53", 53, &[1], 5353);
    lab.sync(&mut *s, &[dns])?;
    let client = &lab.pods[0];
    let vip = "10.96.0.53:53";
    let mut first = None;
    assert!(wait_until(Duration::from_secs(30), || {
        first = udp_ask(client, 40000, vip).ok().flatten();
        first.is_some()
    }));
    assert_eq!(first.as_deref(), Some("b1"));
    let to_b1 = |ct: &NetlinkConntrack| {
        ct.flows(17).map(|f| {
            f.iter()
                .filter(|f| {
                    f.orig_sport == 40000
                        && f.reply_src == "10.244.1.3".parse::<Ipv4Addr>().expect("ip")
                })
                .count()
        })
    };
    let before = lab
        .node
        .run(|| NetlinkConntrack::open().and_then(|ct| to_b1(&ct)))?;
    assert_eq!(
        before.map_err(|e| anyhow!("{e}"))?,
        1,
        "the flow to b1 is tracked"
    );

    // The replacement pod answers before it becomes the endpoint (asked
    // directly, from another port): the first answer of a fresh server
    // (socat forking a shell per datagram) can take seconds on a loaded
    // machine; a condition, so a long limit costs nothing when it is fast.
    assert!(
        wait_until(Duration::from_secs(30), || {
            udp_ask(client, 40001, "10.244.1.4:5353")
                .ok()
                .flatten()
                .as_deref()
                == Some("b2")
        }),
        "b2 answers directly"
    );

    // b1 still runs: only a stale entry could still lead there.
    let o = lab.sync(
        &mut *s,
        &[service("dns", Protocol::Udp, "10.96.0.53", 53, &[2], 5353)],
    )?;
    assert_eq!(o.conntrack_deleted, 1);
    let after = lab
        .node
        .run(|| NetlinkConntrack::open().and_then(|ct| to_b1(&ct)))?;
    assert_eq!(after.map_err(|e| anyhow!("{e}"))?, 0);
    // Same 5-tuple, new endpoint. One datagram can go unanswered on a
    // loaded machine, so ask until an answer comes; none may be b1's.
    let mut answers = Vec::new();
    let answered = wait_until(Duration::from_secs(30), || {
        let a = udp_ask(client, 40000, vip).ok().flatten();
        answers.extend(a.clone());
        a.is_some()
    });
    assert!(answered, "no answer on the same 5-tuple");
    assert_eq!(answers, ["b2"], "same 5-tuple, new endpoint");
    Ok(())
}

#[test]
fn a_hostile_service_name_stays_a_comment_in_the_kernel() -> Result<()> {
    let Some((lab, mut s)) = start("a_hostile_service_name_stays_a_comment_in_the_kernel", 2)?
    else {
        return Ok(());
    };
    let mut evil = service("web", Protocol::Tcp, "10.96.0.60", 80, &[1], 8080);
    evil.name.namespace = "evil\" -j ACCEPT\n-A INPUT -j ACCEPT #".into();
    evil.name.port = "p\\\" -j DROP".into();
    let o = lab.sync(&mut s, std::slice::from_ref(&evil))?;
    let want = proxy::ruleset(&[evil], &node_config());
    assert_eq!(o.nat_rules, want.count(Table::Nat));
    let nat = lab.node.sh(&["iptables-save", "-t", "nat"])?;
    let filter = lab.node.sh(&["iptables-save", "-t", "filter"])?;
    let jumps = proxy::rules::builtin_jumps(&node_config());
    let count = |saved: &str, t: Table| {
        saved.lines().filter(|l| l.starts_with("-A ")).count()
            - jumps.iter().filter(|j| j.table == t).count()
    };
    assert_eq!(count(&nat, Table::Nat), want.count(Table::Nat), "{nat}");
    assert_eq!(
        count(&filter, Table::Filter),
        want.count(Table::Filter),
        "{filter}"
    );
    assert!(
        !filter.lines().any(|l| l == "-A INPUT -j ACCEPT"),
        "{filter}"
    );
    assert!(nat.contains("evil"), "{nat}");
    Ok(())
}

/// Creates `v` (a JSON object) in the control plane, and its status when it has one.
async fn create(cp: &dyn ControlPlane, v: serde_json::Value) -> Result<Object> {
    let status = v.get("status").is_some();
    let obj = Object::from_value(v)?;
    let mut made = cp.create(obj.clone(), None).await?;
    if status {
        if let (Object::Pod(m), Object::Pod(o)) = (&mut made, obj) {
            m.status = o.status;
        }
        made = cp.update_status(made).await?;
    }
    Ok(made)
}

fn pod_json(name: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// Also: the node ran the other mode before; starting removes its rules.
fn run_follows_the_control_plane_and_repairs_a_flush(mode: ProxyMode) -> Result<()> {
    let Some((mut lab, _)) =
        start_in("run_follows_the_control_plane_and_repairs_a_flush", 3, mode)?
    else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    lab.serve(2, Protocol::Tcp, 8080, "b2")?;
    let (other, other_mark) = match mode {
        ProxyMode::Nftables => (ProxyMode::Iptables, "KUBE-SERVICES"),
        ProxyMode::Iptables => (ProxyMode::Nftables, "kube-proxy"),
    };
    let mut before = lab.proxier(other)?;
    let old = service("old", Protocol::Tcp, "10.96.0.70", 80, &[1], 8080);
    lab.sync(&mut *before, &[old])?;
    drop(before);
    let other_rules = |lab: &Lab| match mode {
        ProxyMode::Nftables => lab.node.sh(&["iptables", "-t", "nat", "-S"]),
        ProxyMode::Iptables => lab.node.sh(&["nft", "list", "tables"]),
    };
    assert!(other_rules(&lab)?.contains(other_mark));
    let dir = TempDir::new("pxcp")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The embedded store starts a background task: open it inside the runtime.
    let store = rt.block_on(async { Embedded::open(dir.path()) })?;
    let cp: Arc<dyn ControlPlane> = Arc::new(Registry::new(Arc::new(store), Allocators::default()));
    let svc = rt.block_on(async {
        let _ = create(&*cp, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})).await;
        create(&*cp, pod_json("web-1", "10.244.1.3")).await?;
        create(&*cp, pod_json("web-2", "10.244.1.4")).await?;
        create(&*cp, json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}))
        .await
    })?;
    let Object::Service(svc) = svc else {
        return Err(anyhow!("created a Service, got {}", svc.describe()));
    };
    let vip = format!(
        "{}:80",
        svc.spec
            .and_then(|s| s.cluster_ip)
            .context("ClusterIP assigned")?
    );

    let mut cfg = ProxyConfig::new(node_config());
    cfg.min_sync_period = Duration::ZERO;
    cfg.canary_period = Duration::from_millis(200);
    cfg.netns = Some(lab.node.path().to_path_buf());
    cfg.mode = mode;
    let metrics = Arc::new(Metrics::new(cfg.sync_period));
    let task = rt.spawn(proxy::run(Arc::clone(&cp), cfg, Arc::clone(&metrics)));
    // The EndpointSlice controller turns the pods into the proxy's input.
    let manager = rt.spawn(controllers::run(Arc::clone(&cp), "n1".into()));

    let client = &lab.pods[0];
    ask_until_answered(client, &vip)?;
    let left = other_rules(&lab)?;
    assert!(!left.contains(other_mark), "{}: {left}", other.name());
    // A removed endpoint stops getting new connections within 1 s.
    rt.block_on(cp.delete(&ObjectRef::new(Kind::Pod, "default", "web-1"), None))?;
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || (0..10)
            .all(|_| matches!(ask(client, &vip), Ok(Ok(s)) if s == "b2"))),
        "web-1 still answered 1 s after its deletion"
    );
    let moved = t.elapsed();

    // Someone flushes the rules: the canary brings them back.
    flush(&lab, mode)?;
    assert!(
        wait_until(
            Duration::from_secs(3),
            || matches!(ask(client, &vip), Ok(Ok(s)) if s == "b2")
        ),
        "rules not restored after a flush"
    );
    let text = metrics.render();
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0"),
        "{text}"
    );
    let full_syncs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_sync_full_proxy_rules_duration_seconds_count "))
        .and_then(|n| n.parse().ok())
        .context("full sync count")?;
    assert!(
        full_syncs >= 2,
        "the flush forced a second full sync: {text}"
    );
    assert_eq!(metrics.health(Instant::now()), proxy::Health::Healthy);
    eprintln!("endpoint removal took effect within {moved:?}");
    task.abort();
    manager.abort();
    Ok(())
}

#[test]
fn the_ruleset_works_on_the_legacy_backend_too() -> Result<()> {
    let Some((mut lab, _)) = start("the_ruleset_works_on_the_legacy_backend_too", 2)? else {
        return Ok(());
    };
    lab.serve(1, Protocol::Tcp, 8080, "b1")?;
    let mut s = lab
        .node
        .run(|| Syncer::new(Arc::new(ExecIptables::new(Backend::Legacy)), node_config()))?;
    let mut web = service("web", Protocol::Tcp, "10.96.0.70", 80, &[1], 8080);
    web.affinity_seconds = Some(60);
    lab.sync(&mut s, &[web])?;
    assert_eq!(ask_until_answered(&lab.pods[0], "10.96.0.70:80")?, "b1");
    assert!(lab
        .node
        .sh(&["iptables-legacy-save", "-t", "nat"])?
        .contains(":KUBE-SERVICES"));
    assert!(!lab
        .node
        .sh(&["iptables-nft-save", "-t", "nat"])?
        .contains("KUBE-SERVICES"));
    // Now the namespace's rules live in legacy: detection follows them.
    let detected = lab.node.run(Backend::detect)?;
    assert_eq!(detected, Backend::Legacy);

    // The table's stamp stands still until someone changes the table, so
    // the canary check reads the table only then, and still sees a flush.
    let ipt = ExecIptables::new(Backend::Legacy);
    let stamp = || lab.node.run(|| ipt.table_stamp(Table::Nat));
    let before = stamp()?.context("a stamp for the legacy nat table")?;
    assert!(lab.node.run(|| s.check_canary())?);
    assert!(lab.node.run(|| s.check_canary())?);
    assert_eq!(stamp()?, Some(before), "reading changes nothing");
    lab.node.sh(&["iptables-legacy", "-t", "nat", "-F"])?;
    assert_ne!(stamp()?, Some(before), "a flush changes the stamp");
    assert!(!lab.node.run(|| s.check_canary())?);
    Ok(())
}

#[test]
fn a_full_sync_surveys_the_kernel_cheaply_and_agrees_with_iptables_save() -> Result<()> {
    if !require_root("a_full_sync_surveys_the_kernel_cheaply_and_agrees_with_iptables_save") {
        return Ok(());
    }
    let builtins = ["OUTPUT", "POSTROUTING", "PREROUTING"];
    for (backend, tool) in [
        (Backend::Nft, "iptables-nft"),
        (Backend::Legacy, "iptables-legacy"),
    ] {
        let ns = TestNs::new("pxsv")?;
        // A Service chain left by an earlier run, and someone else's chain.
        ns.sh(&[tool, "-t", "nat", "-N", "KUBE-SVC-LEFTOVER0000000"])?;
        ns.sh(&[tool, "-t", "nat", "-N", "OTHER-TOOL"])?;
        let ipt = ExecIptables::new(backend);
        let mut s = ns.run(|| Syncer::new(Arc::new(ipt.clone()), node_config()))?;
        let desired = [service("web", Protocol::Tcp, "10.96.0.80", 80, &[1], 8080)];
        let o = ns
            .run(|| s.sync(&desired))?
            .map_err(|e| anyhow!("sync: {e}"))?;
        assert!(o.full && o.chains_deleted == 1, "{backend:?}: {o:?}");

        let survey = ns
            .run(|| ipt.survey(Table::Nat, &builtins))?
            .map_err(|e| anyhow!("survey: {e}"))?;
        let saved = ns.sh(&[&format!("{tool}-save"), "-t", "nat"])?;
        let from_save = proxy::iptables::Survey::from_save(&saved, &builtins);
        // iptables-nft-save also prints built-in chains nf_tables does
        // not have yet (nothing used them); only user chains can be stale.
        let sorted = |mut v: Vec<String>| {
            v.retain(|c| {
                !["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].contains(&c.as_str())
            });
            v.sort();
            v
        };
        assert_eq!(
            sorted(survey.chains.clone()),
            sorted(from_save.chains),
            "{backend:?}"
        );
        assert_eq!(survey.rules, from_save.rules, "{backend:?}");
        assert!(survey.chains.iter().any(|c| c == "OTHER-TOOL"));
        assert!(!survey
            .chains
            .iter()
            .any(|c| c == "KUBE-SVC-LEFTOVER0000000"));

        // A jump someone removed from a built-in chain comes back with the
        // next full sync, once.
        ns.sh(&[tool, "-t", "nat", "-F", "PREROUTING"])?;
        s.request_full();
        ns.run(|| s.sync(&desired))?
            .map_err(|e| anyhow!("sync: {e}"))?;
        let prerouting = ns.sh(&[tool, "-t", "nat", "-S", "PREROUTING"])?;
        assert_eq!(
            prerouting.matches("-j KUBE-SERVICES").count(),
            1,
            "{backend:?}: {prerouting}"
        );
    }
    Ok(())
}
