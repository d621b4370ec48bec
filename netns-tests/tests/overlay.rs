//! The overlay on the real kernel: several nodes as namespaces on an
//! underlay bridge, etcd in the underlay namespace, one `knode agent`
//! (pods disabled) per node, and pods made with our CNI plugins from the
//! conflist each agent writes. Everything lives in namespaces these tests
//! create.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_tests::agent::Agent;
use netns_tests::cluster::{tcp_echo, wait_until, ClusterNet, Pod, OUTSIDE_IP, UNDERLAY_IP};
use netns_tests::etcd::{require_etcd, EtcdCluster};
use netns_tests::{bin_dir, require_root, TempDir, TestNs};

const NETWORK: &str = "10.244.0.0/16";
/// Short enough that a node that left is forgotten within a test.
const TTL: &str = "4s";
const RENEW_MARGIN: &str = "2s";
const RESYNC: &str = "1s";

/// A cluster: the network, etcd, and one agent per node.
struct Overlay {
    agents: Vec<Option<Agent>>,
    // Dropped after the agents: etcd, then the namespaces.
    etcd: EtcdCluster,
    net: ClusterNet,
    backend: &'static str,
}

impl Overlay {
    fn start(nodes: usize, backend: &'static str) -> Result<Overlay> {
        Overlay::start_with(nodes, backend, None)
    }

    /// As [`Overlay::start`], with `net_conf` (net-conf.json) stored in the
    /// control plane before any agent starts.
    fn start_with(nodes: usize, backend: &'static str, net_conf: Option<&str>) -> Result<Overlay> {
        let net = ClusterNet::new(nodes)?;
        let etcd = EtcdCluster::start_in(net.underlay().path(), UNDERLAY_IP, 1)?;
        let mut o = Overlay {
            agents: Vec::new(),
            etcd,
            net,
            backend,
        };
        if let Some(c) = net_conf {
            o.store_net_conf(c)?;
        }
        for i in 0..nodes {
            let a = o.spawn_agent(i)?;
            o.agents.push(Some(a));
        }
        for i in 0..nodes {
            o.wait_subnet(i)?;
        }
        Ok(o)
    }

    /// Stores the cluster's network config (ConfigMap kube-system/knode-network).
    fn store_net_conf(&self, json: &str) -> Result<()> {
        let manifest = serde_json::json!([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "knode-network", "namespace": "kube-system"},
             "data": {"net-conf.json": json}},
        ]);
        let docs: Vec<String> = manifest
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        run_cli_in(
            self.net.node(0),
            &self.control_plane(),
            &["apply", "-f", "-"],
            Some(&docs.join("\n---\n")),
        )?;
        Ok(())
    }

    fn control_plane(&self) -> String {
        self.etcd.control_plane()
    }

    fn spawn_agent(&self, i: usize) -> Result<Agent> {
        let dir = TempDir::new(&format!("overlay-n{i}"))?;
        let root = dir.path().to_path_buf();
        let p = |n: &str| root.join(n).display().to_string();
        let global = vec![
            "--control-plane".to_string(),
            self.control_plane(),
            "--cni-conf-dir".to_string(),
            p("cni-conf"),
        ];
        let agent = [
            "--node-name",
            &format!("node-{i}"),
            "--disable",
            "pods",
            "--iface",
            "eth0",
            "--backend",
            self.backend,
            "--cluster-cidr",
            NETWORK,
            "--subnet-file",
            &p("subnet.env"),
            "--subnet-lease-ttl",
            TTL,
            "--subnet-lease-renew-margin",
            RENEW_MARGIN,
            "--overlay-resync-period",
            RESYNC,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Agent::start_node(dir, self.net.node(i).path(), global, agent)
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("agent running")
    }

    fn subnet_file(&self, i: usize) -> PathBuf {
        self.agent(i).dir().join("subnet.env")
    }

    /// Waits for node `i`'s subnet file; returns its subnet (`10.244.x.0/24`).
    fn wait_subnet(&self, i: usize) -> Result<String> {
        let path = self.subnet_file(i);
        if !wait_until(Duration::from_secs(15), || path.exists()) {
            bail!(
                "node {i}: no subnet file after 15 s; agent log:\n{}",
                self.agent(i).log()
            );
        }
        subnet_of(&std::fs::read_to_string(&path)?)
    }

    /// A pod on node `i` from the conflist its agent wrote, with the IPAM
    /// store moved into the agent's temp dir (the default store is shared
    /// by everything on the machine).
    fn pod(&self, i: usize, name: &str) -> Result<Pod> {
        let path = self.agent(i).dir().join("cni-conf/10-knode.conflist");
        // Written right after the lease (and the subnet file).
        wait_until(Duration::from_secs(10), || path.exists());
        let mut list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        list["plugins"][0]["ipam"]["dataDir"] = serde_json::json!(self.agent(i).dir().join("ipam"));
        Pod::add_list(self.net.node(i), &list, &bin_dir(), name)
    }

    fn node(&self, i: usize) -> &TestNs {
        self.net.node(i)
    }
}

/// The subnet a subnet.env names (`FLANNEL_SUBNET=10.244.3.1/24` -> `10.244.3.0/24`).
fn subnet_of(env: &str) -> Result<String> {
    let v = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .context("no FLANNEL_SUBNET")?;
    let (ip, len) = v
        .split_once('/')
        .context("FLANNEL_SUBNET without a length")?;
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "0";
    Ok(format!("{}/{len}", octets.join(".")))
}

fn prereqs(test: &str) -> bool {
    require_root(test) && require_etcd(test)
}

/// The MAC of a node's vxlan device (sysfs shows the root namespace's
/// links, so ask netlink).
fn vtep_mac(node: &TestNs) -> Result<String> {
    let out = node.sh(&["ip", "-o", "link", "show", "knode.1"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no MAC in {out}"))
}

/// Every pod pings every other pod.
fn all_ping(pods: &[&Pod]) -> Result<()> {
    for a in pods {
        for b in pods {
            if a.ip() != b.ip() && !wait_until(Duration::from_secs(5), || a.ns().ping(b.ip())) {
                bail!("pod {} cannot ping pod {}", a.ip(), b.ip());
            }
        }
    }
    Ok(())
}

/// What node `i` has for `subnet`: its route, neighbour and FDB lines.
fn entries_for(o: &Overlay, i: usize, subnet: &str) -> Result<String> {
    let vtep = subnet.split('/').next().unwrap_or_default();
    let route = o.node(i).sh(&["ip", "route", "show", subnet])?;
    let neigh = o.node(i).sh(&["ip", "neigh", "show", vtep])?;
    let fdb = o.node(i).sh(&["bridge", "fdb", "show", "dev", "knode.1"])?;
    Ok(format!("{route}{neigh}{fdb}"))
}

#[test]
fn vxlan_pods_reach_each_other_and_the_outside_world() -> Result<()> {
    if !prereqs("vxlan_pods_reach_each_other_and_the_outside_world") {
        return Ok(());
    }
    let o = Overlay::start(3, "vxlan")?;
    let subnets: Vec<String> = (0..3).map(|i| o.wait_subnet(i)).collect::<Result<_>>()?;
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "subnets {subnets:?}");
    eprintln!("subnets {subnets:?}");

    // The device as flannel makes it.
    let dev = o.node(0).sh(&["ip", "-d", "link", "show", "knode.1"])?;
    for want in [
        "mtu 1450",
        "vxlan id 1 ",
        "dstport 8472",
        "nolearning",
        "local 198.18.0.11",
    ] {
        assert!(dev.contains(want), "{want:?} not in {dev}");
    }
    let vtep = format!("{}/32", subnets[0].split('/').next().unwrap());
    assert!(o
        .node(0)
        .sh(&["ip", "addr", "show", "knode.1"])?
        .contains(&vtep));
    let env = std::fs::read_to_string(o.subnet_file(0))?;
    assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
    assert!(
        env.contains("FLANNEL_MTU=1450\n") && env.contains("FLANNEL_IPMASQ=true\n"),
        "{env}"
    );
    // One permanent neighbour and FDB entry and an onlink route per peer.
    let e = entries_for(&o, 0, &subnets[1])?;
    assert!(e.contains("dev knode.1 onlink"), "{e}");
    assert!(e.contains("PERMANENT"), "{e}");
    assert!(e.contains("dst 198.18.0.12"), "{e}");

    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    for (p, s) in pods.iter().zip(&subnets) {
        let prefix = s.rsplit_once('.').unwrap().0;
        assert!(p.ip().starts_with(prefix), "pod {} not in {s}", p.ip());
    }
    all_ping(&pods.iter().collect::<Vec<_>>())?;
    // TCP both ways across the overlay.
    tcp_echo(pods[0].ns(), pods[0].ip(), pods[1].ns(), 7001)?;
    tcp_echo(pods[1].ns(), pods[1].ip(), pods[0].ns(), 7002)?;
    // Inside the cluster the source is kept: the server sees the pod's IP.
    assert_eq!(
        peer_seen(pods[1].ns(), pods[1].ip(), pods[0].ns(), 7003)?,
        pods[0].ip()
    );

    // Egress: the outside world sees the node's address, not the pod's.
    assert_eq!(
        peer_seen(o.net.internet(), OUTSIDE_IP, pods[2].ns(), 7004)?,
        o.net.node_ip(2)
    );
    Ok(())
}

/// Starts a server in `server` that answers each connection with the
/// client address it saw; connects from `client` and returns the answer.
fn peer_seen(server: &TestNs, server_ip: &str, client: &TestNs, port: u16) -> Result<String> {
    let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
    let mut child = server
        .cmd(&["socat", &listen, "SYSTEM:echo $SOCAT_PEERADDR"])
        .spawn()
        .context("start the peer-address server")?;
    let target = format!("TCP:{server_ip}:{port},connect-timeout=2");
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        let out = client.cmd(&["socat", "-T", "3", "-", &target]).output();
        got = out
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        !got.is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    if !ok {
        bail!("no answer from {server_ip}:{port} in {}", server.name());
    }
    Ok(got)
}

#[test]
fn nodes_join_and_leave_without_restarts() -> Result<()> {
    if !prereqs("nodes_join_and_leave_without_restarts") {
        return Ok(());
    }
    let mut o = Overlay::start(2, "vxlan")?;
    let p0 = o.pod(0, "p0")?;
    // A third node joins: node 0 reaches its pods without a restart.
    let i = o.net.add_node()?;
    let a = o.spawn_agent(i)?;
    o.agents.push(Some(a));
    let s2 = o.wait_subnet(i)?;
    let p2 = o.pod(i, "p2")?;
    all_ping(&[&p0, &p2])?;
    assert!(entries_for(&o, 0, &s2)?.contains("knode.1"));

    // It leaves: its agent stops, its lease expires, and every other node
    // forgets its route, neighbour and FDB entries.
    let mac = vtep_mac(o.node(i))?;
    drop(p2);
    o.agents[i] = None;
    let gone = wait_until(Duration::from_secs(12), || {
        (0..2).all(|n| {
            entries_for(&o, n, &s2)
                .map(|e| !e.contains(s2.split('/').next().unwrap()) && !e.contains(mac.trim()))
                .unwrap_or(false)
        })
    });
    assert!(
        gone,
        "node 2's entries remain:\n{}",
        entries_for(&o, 0, &s2)?
    );
    Ok(())
}

#[test]
fn agent_restart_keeps_lease_mac_and_flows() -> Result<()> {
    if !prereqs("agent_restart_keeps_lease_mac_and_flows") {
        return Ok(());
    }
    let mut o = Overlay::start(2, "vxlan")?;
    let before = o.wait_subnet(0)?;
    let mac = vtep_mac(o.node(0))?;
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;
    // 40 pings over 4 s straddle the restart.
    let ping = p1
        .ns()
        .cmd(&["ping", "-c", "40", "-i", "0.1", "-W", "1", p0.ip()])
        .output_async()?;
    std::thread::sleep(Duration::from_millis(500));
    o.agents[0].as_mut().unwrap().kill9()?;
    std::thread::sleep(Duration::from_millis(500));
    o.agents[0].as_mut().unwrap().restart()?;
    let out = ping.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = received(&text);
    assert!(
        received >= 30,
        "{received}/40 pings answered across the restart:\n{text}"
    );
    // The data plane did not depend on the agent: at most a second lost.
    assert!(40 - received <= 10, "{text}");
    assert_eq!(o.wait_subnet(0)?, before);
    assert_eq!(vtep_mac(o.node(0))?, mac);
    all_ping(&[&p0, &p1])?;
    Ok(())
}

fn received(ping_output: &str) -> u32 {
    ping_output
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

trait SpawnOutput {
    fn output_async(&mut self) -> Result<std::process::Child>;
}

impl SpawnOutput for std::process::Command {
    fn output_async(&mut self) -> Result<std::process::Child> {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("spawn")
    }
}

#[test]
fn deleted_device_and_routes_are_restored() -> Result<()> {
    if !prereqs("deleted_device_and_routes_are_restored") {
        return Ok(());
    }
    let o = Overlay::start(2, "vxlan")?;
    let s1 = o.wait_subnet(1)?;
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;

    let t = Instant::now();
    o.node(0).sh(&["ip", "link", "del", "knode.1"])?;
    let back = wait_until(Duration::from_secs(5), || {
        entries_for(&o, 0, &s1).is_ok_and(|e| e.contains("onlink") && e.contains("PERMANENT"))
    });
    assert!(
        back,
        "the device and entries did not come back: {}",
        o.agent(0).log()
    );
    eprintln!("device restored in {:?}", t.elapsed());
    all_ping(&[&p0, &p1])?;

    let t = Instant::now();
    o.node(0).sh(&["ip", "route", "del", &s1])?;
    let back = wait_until(Duration::from_secs(5), || {
        o.node(0)
            .sh(&["ip", "route", "show", &s1])
            .is_ok_and(|r| r.contains("knode.1"))
    });
    assert!(back, "the route did not come back");
    eprintln!("route restored in {:?}", t.elapsed());

    // Masquerade rules flushed by someone else come back too.
    o.node(0)
        .sh(&["iptables", "-t", "nat", "-F", "POSTROUTING"])?;
    let back = wait_until(Duration::from_secs(5), || {
        o.node(0)
            .sh(&["iptables", "-t", "nat", "-S", "POSTROUTING"])
            .is_ok_and(|r| r.contains("KNODE-POSTRTG"))
    });
    assert!(back, "the masquerade jump did not come back");
    Ok(())
}

#[test]
fn host_gw_pods_reach_each_other() -> Result<()> {
    if !prereqs("host_gw_pods_reach_each_other") {
        return Ok(());
    }
    let o = Overlay::start(3, "host-gw")?;
    let s1 = o.wait_subnet(1)?;
    // Node 1 holding its lease does not mean node 0 has seen it yet.
    let mut route = String::new();
    let programmed = wait_until(Duration::from_secs(10), || {
        route = o
            .node(0)
            .sh(&["ip", "route", "show", &s1])
            .unwrap_or_default();
        !route.is_empty()
    });
    assert!(
        programmed,
        "no route to {s1} on node 0:\n{}",
        o.agent(0).log()
    );
    assert!(route.contains("via 198.18.0.12 dev eth0"), "{route}");
    assert!(
        o.node(0).sh(&["ip", "link", "show", "knode.1"]).is_err(),
        "no vxlan device for host-gw"
    );
    let env = std::fs::read_to_string(o.subnet_file(0))?;
    assert!(env.contains("FLANNEL_MTU=1500\n"), "{env}");
    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    all_ping(&pods.iter().collect::<Vec<_>>())?;
    tcp_echo(pods[0].ns(), pods[0].ip(), pods[2].ns(), 7011)?;
    tcp_echo(pods[2].ns(), pods[2].ip(), pods[0].ns(), 7012)?;
    Ok(())
}

#[test]
fn host_gw_refuses_a_peer_off_the_segment() -> Result<()> {
    if !prereqs("host_gw_refuses_a_peer_off_the_segment") {
        return Ok(());
    }
    let o = Overlay::start(1, "host-gw")?;
    // A lease held by a node on another segment.
    let lease = r#"{"apiVersion": "knode.io/v1", "kind": "SubnetLease",
        "metadata": {"name": "10.244.200.0-24"},
        "spec": {"subnet": "10.244.200.0/24", "PublicIP": "203.0.113.50", "BackendType": "host-gw"}}"#;
    run_cli_in(
        o.node(0),
        &o.control_plane(),
        &["apply", "-f", "-"],
        Some(lease),
    )?;
    let mut o = o;
    let i = o.net.add_node()?;
    let e = match o.spawn_agent(i) {
        Ok(a) => {
            // It may have bound its socket before failing: wait for the exit.
            let mut a = a;
            let log_has = wait_until(Duration::from_secs(10), || a.log().contains("L2 segment"));
            let log = a.log();
            a.kill9()?;
            assert!(log_has, "{log}");
            log
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains(
            "10.244.200.0/24 at 203.0.113.50 is not on this node's L2 segment 198.18.0.0/24"
        ),
        "{e}"
    );
    Ok(())
}

#[test]
fn concurrent_starts_never_share_a_subnet() -> Result<()> {
    if !prereqs("concurrent_starts_never_share_a_subnet") {
        return Ok(());
    }
    // Three subnets for two nodes: the random picks collide often, so the
    // compare-and-set path is what keeps them apart.
    let net = ClusterNet::new(2)?;
    let etcd = EtcdCluster::start_in(net.underlay().path(), UNDERLAY_IP, 1)?;
    let o = Overlay {
        agents: Vec::new(),
        etcd,
        net,
        backend: "vxlan",
    };
    o.store_net_conf(r#"{"Network": "10.9.0.0/22", "SubnetLen": 24}"#)?;
    let ep = o.control_plane();
    let cli = |args: &[&str], stdin: Option<&str>| run_cli_in(o.net.node(0), &ep, args, stdin);
    for round in 0..20 {
        let agents: Vec<Result<Agent>> = std::thread::scope(|s| {
            let o = &o;
            let hs: Vec<_> = (0..2).map(|i| s.spawn(move || o.spawn_agent(i))).collect();
            hs.into_iter()
                .map(|h| h.join().expect("spawn thread"))
                .collect()
        });
        let agents: Vec<Agent> = agents.into_iter().collect::<Result<_>>()?;
        let mut subnets = Vec::new();
        for a in &agents {
            let path = a.dir().join("subnet.env");
            if !wait_until(Duration::from_secs(15), || path.exists()) {
                bail!("round {round}: no subnet file:\n{}", a.log());
            }
            subnets.push(subnet_of(&std::fs::read_to_string(&path)?)?);
        }
        assert_ne!(
            subnets[0], subnets[1],
            "round {round}: both nodes got {}",
            subnets[0]
        );
        drop(agents);
        // Forget the leases so the next round races again.
        for s in &subnets {
            cli(&["delete", "subnetlease", &s.replace('/', "-")], None)?;
        }
    }
    Ok(())
}

/// Runs the `knode` CLI inside `ns` against `control_plane`; its stdout.
fn run_cli_in(
    ns: &TestNs,
    control_plane: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let knode = netns_tests::our_bin("knode");
    let mut cmd = netns_tests::ns_command(Some(ns.path()), &knode);
    cmd.args(["--config", "/dev/null", "--control-plane", control_plane])
        .args(args);
    let out = netns_tests::agent::run_with_stdin(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "knode {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_revoked_lease_is_taken_again() -> Result<()> {
    if !prereqs("a_revoked_lease_is_taken_again") {
        return Ok(());
    }
    let o = Overlay::start(2, "vxlan")?;
    let s0 = o.wait_subnet(0)?;
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;
    // Someone deletes node 0's lease: it takes the same subnet again, and
    // node 1 keeps (or regains) its route to it.
    let name = s0.replace('/', "-");
    run_cli_in(
        o.node(1),
        &o.control_plane(),
        &["delete", "subnetlease", &name],
        None,
    )?;
    let back = wait_until(Duration::from_secs(10), || {
        run_cli_in(
            o.node(1),
            &o.control_plane(),
            &["get", "subnetlease", &name],
            None,
        )
        .is_ok_and(|out| out.contains("198.18.0.11"))
    });
    assert!(back, "the lease was not taken again:\n{}", o.agent(0).log());
    assert!(
        o.agent(0).log().contains("subnet lease lost"),
        "{}",
        o.agent(0).log()
    );
    assert_eq!(o.wait_subnet(0)?, s0);
    all_ping(&[&p0, &p1])?;
    Ok(())
}

#[test]
fn direct_routing_uses_plain_routes_on_one_segment() -> Result<()> {
    if !prereqs("direct_routing_uses_plain_routes_on_one_segment") {
        return Ok(());
    }
    let conf =
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#;
    let o = Overlay::start_with(2, "vxlan", Some(conf))?;
    let s1 = o.wait_subnet(1)?;
    // Node 1 holding its lease does not mean node 0 has seen it yet.
    let mut route = String::new();
    let programmed = wait_until(Duration::from_secs(10), || {
        route = o
            .node(0)
            .sh(&["ip", "route", "show", &s1])
            .unwrap_or_default();
        !route.is_empty()
    });
    assert!(
        programmed,
        "no route to {s1} on node 0:\n{}",
        o.agent(0).log()
    );
    assert!(route.contains("via 198.18.0.12 dev eth0"), "{route}");
    let fdb = o.node(0).sh(&["bridge", "fdb", "show", "dev", "knode.1"])?;
    assert!(!fdb.contains("dst 198.18.0.12"), "{fdb}");
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;
    tcp_echo(p1.ns(), p1.ip(), p0.ns(), 7021)?;
    Ok(())
}

#[test]
fn a_wrong_interface_stops_the_agent_with_the_reason() -> Result<()> {
    if !prereqs("a_wrong_interface_stops_the_agent_with_the_reason") {
        return Ok(());
    }
    let o = Overlay::start(1, "vxlan")?;
    let dir = TempDir::new("overlay-bad")?;
    let out = netns_tests::ns_command(Some(o.node(0).path()), netns_tests::our_bin("knode"))
        .args([
            "--config",
            "/dev/null",
            "--control-plane",
            &o.control_plane(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args([
            "agent",
            "--node-name",
            "bad",
            "--disable",
            "pods",
            "--iface",
            "eth9",
            // No Kubernetes API: it would write /etc/knode/knode.yaml.
            "--api-port",
            "0",
        ])
        .arg("--subnet-file")
        .arg(dir.path().join("subnet.env"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("iface \"eth9\": no interface has this name or address (interfaces: lo, eth0"),
        "{err}"
    );
    Ok(())
}
