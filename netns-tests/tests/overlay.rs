//! The overlay on the real kernel: several nodes as namespaces on an
//! underlay bridge, etcd in the underlay namespace, one `knode agent`
//! (pods disabled) per node, and pods made with our CNI plugins from the
//! conflist each agent writes. Everything lives in namespaces these tests
//! create.

mod overlay_harness;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_tests::agent::Agent;
use netns_tests::cluster::{tcp_echo, wait_until, ClusterNet, Pod, OUTSIDE_IP, UNDERLAY_IP};
use netns_tests::etcd::EtcdCluster;
use netns_tests::TestNs;
use overlay_harness::{all_ping, peer_seen, prereqs, run_cli_in, subnet_of, Overlay, NETWORK};

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

/// Two nodes with a pod on node 0; a third node joins and node 0's pod
/// reaches a pod on it without a restart. (cluster, p0, the joiner's
/// index, its subnet, its pod)
fn a_third_node_joins(backend: &'static str) -> Result<(Overlay, Pod, usize, String, Pod)> {
    let mut o = Overlay::start(2, backend)?;
    let p0 = o.pod(0, "p0")?;
    let i = o.net.add_node()?;
    let a = o.spawn_agent(i)?;
    o.agents.push(Some(a));
    let s2 = o.wait_subnet(i)?;
    let p2 = o.pod(i, "p2")?;
    all_ping(&[&p0, &p2])?;
    Ok((o, p0, i, s2, p2))
}

#[test]
fn nodes_join_and_leave_without_restarts() -> Result<()> {
    if !prereqs("nodes_join_and_leave_without_restarts") {
        return Ok(());
    }
    let (mut o, _p0, i, s2, p2) = a_third_node_joins("vxlan")?;
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

/// The longest time between two answers in `ping -D` output.
fn longest_gap(ping_output: &str) -> Duration {
    let times: Vec<f64> = ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Duration::from_secs_f64(gap)
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
    let o = Overlay::empty(net, etcd, "vxlan");
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
    let out = o.failing_agent(0, &["--iface", "eth9"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("iface \"eth9\": no interface has this name or address (interfaces: lo, eth0"),
        "{err}"
    );
    Ok(())
}

/// Sends one datagram from `client` to `ip:port`, where a `socat` in
/// `server` echoes it; true when it comes back.
fn udp_echo_once(server_ip: &str, client: &TestNs, port: u16) -> bool {
    let line = format!("udp-{port}\n");
    let target = format!("UDP4:{server_ip}:{port}");
    let mut child = match client
        .cmd(&["socat", "-T", "1", "-", &target])
        .stdin(std::process::Stdio::piped())
        .output_async()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(line.as_bytes());
    }
    child
        .wait_with_output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == line)
}

/// UDP from `client` to a UDP echo server on `server` (`server_ip:port`):
/// the datagram comes back within 5 s of retries.
fn udp_echo(server: &TestNs, server_ip: &str, client: &TestNs, port: u16) -> Result<()> {
    let listen = format!("UDP4-RECVFROM:{port},fork");
    let mut child = server
        .cmd(&["socat", &listen, "EXEC:cat"])
        .spawn()
        .context("start the UDP echo server")?;
    let ok = wait_until(Duration::from_secs(5), || {
        udp_echo_once(server_ip, client, port)
    });
    let _ = child.kill();
    let _ = child.wait();
    if !ok {
        bail!("no UDP echo from {server_ip}:{port} to {}", client.name());
    }
    Ok(())
}

/// One ping of `size` bytes of payload with DF set from `from` to `ip`.
fn df_ping(from: &TestNs, ip: &str, size: u32) -> Result<std::process::Output> {
    let size = size.to_string();
    from.cmd(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &size, ip])
        .output()
        .context("run ping")
}

#[test]
fn udp_pods_reach_each_other_over_the_tun() -> Result<()> {
    if !prereqs("udp_pods_reach_each_other_over_the_tun") {
        return Ok(());
    }
    let o = Overlay::start(3, "udp")?;
    let subnets: Vec<String> = (0..3).map(|i| o.wait_subnet(i)).collect::<Result<_>>()?;
    eprintln!("subnets {subnets:?}");

    // The device as flannel makes flannel0: a TUN, the node's address
    // with the network's length, so the whole network routes to it.
    let dev = o.node(0).sh(&["ip", "-d", "link", "show", "knode0"])?;
    for want in ["mtu 1472", "tun type tun", "multi_queue"] {
        assert!(dev.contains(want), "{want:?} not in {dev}");
    }
    let addr = format!("{}/16", subnets[0].split('/').next().unwrap());
    assert!(o
        .node(0)
        .sh(&["ip", "addr", "show", "knode0"])?
        .contains(&addr));
    let route = o.node(0).sh(&["ip", "route", "show", NETWORK])?;
    assert!(route.contains("dev knode0"), "{route}");
    let env = std::fs::read_to_string(o.subnet_file(0))?;
    assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
    assert!(
        o.node(0).sh(&["ip", "link", "show", "knode.1"]).is_err(),
        "no vxlan device for udp"
    );

    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    all_ping(&pods.iter().collect::<Vec<_>>())?;
    tcp_echo(pods[0].ns(), pods[0].ip(), pods[1].ns(), 7031)?;
    tcp_echo(pods[1].ns(), pods[1].ip(), pods[0].ns(), 7032)?;
    udp_echo(pods[0].ns(), pods[0].ip(), pods[2].ns(), 7033)?;
    udp_echo(pods[2].ns(), pods[2].ip(), pods[0].ns(), 7034)?;
    assert_eq!(
        peer_seen(pods[1].ns(), pods[1].ip(), pods[2].ns(), 7035)?,
        pods[2].ip()
    );
    // The MTU is right: 1,400 bytes with DF pass both ways, and so does
    // the largest that fits the pod MTU (1472 - 28 of IP and ICMP); one
    // byte more is refused at the pod, not lost on the way.
    for (a, b) in [(0, 1), (1, 0)] {
        for size in [1400, 1444] {
            let out = df_ping(pods[a].ns(), pods[b].ip(), size)?;
            assert!(
                out.status.success(),
                "{size} bytes DF {} -> {}: {}",
                pods[a].ip(),
                pods[b].ip(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let too_big = df_ping(pods[0].ns(), pods[1].ip(), 1445)?;
    assert!(!too_big.status.success());
    // Egress still goes out the underlay, masqueraded.
    assert_eq!(
        peer_seen(o.net.internet(), OUTSIDE_IP, pods[2].ns(), 7036)?,
        o.net.node_ip(2)
    );
    Ok(())
}

#[test]
fn udp_a_node_leaving_is_forgotten() -> Result<()> {
    if !prereqs("udp_a_node_leaving_is_forgotten") {
        return Ok(());
    }
    let (mut o, p0, i, s2, p2) = a_third_node_joins("udp")?;
    let p2_ip = p2.ip().to_string();

    // It leaves: its agent stops, its lease expires, node 0 drops the peer.
    drop(p2);
    o.agents[i] = None;
    let removed = format!("peer removed peer={s2}");
    let gone = wait_until(Duration::from_secs(12), || {
        o.agent(0).log().contains(&removed)
    });
    assert!(gone, "node 0 kept peer {s2}:\n{}", o.agent(0).log());
    // Packets for it are now dropped at node 0 and counted, not sent.
    let pinged = p0
        .ns()
        .cmd(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &p2_ip])
        .output()?;
    assert!(!pinged.status.success());
    let counted = wait_until(Duration::from_secs(5), || {
        let log = o.agent(0).log();
        log.lines().any(|l| {
            l.contains("udp data path dropped packets") && !l.contains("drop_unknown_subnet=0")
        })
    });
    assert!(
        counted,
        "no drop counted:\n{}\n{}",
        o.node(0).sh(&["ip", "-s", "link", "show", "knode0"])?,
        o.agent(0).log()
    );
    Ok(())
}

#[test]
fn udp_agent_restart_loses_at_most_a_second() -> Result<()> {
    if !prereqs("udp_agent_restart_loses_at_most_a_second") {
        return Ok(());
    }
    let mut o = Overlay::start(2, "udp")?;
    let before = o.wait_subnet(0)?;
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;
    // The kernel does not carry udp traffic without the agent.
    o.agents[0].as_mut().unwrap().kill9()?;
    assert!(!p1.ns().ping(p0.ip()), "pods talk with node 0's agent dead");
    o.agents[0].as_mut().unwrap().restart()?;
    all_ping(&[&p0, &p1])?;
    // Pings every 50 ms straddle a kill and an immediate start: the path
    // is down from the kill until the new agent has its TUN queues open.
    let ping = p1
        .ns()
        .cmd(&["ping", "-D", "-c", "100", "-i", "0.05", "-W", "1", p0.ip()])
        .output_async()?;
    std::thread::sleep(Duration::from_millis(500));
    o.agents[0].as_mut().unwrap().kill9()?;
    o.agents[0].as_mut().unwrap().restart()?;
    let out = ping.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let gap = longest_gap(&text);
    eprintln!(
        "longest gap between answered pings across the restart: {gap:?}; {}/100 answered",
        received(&text)
    );
    assert!(
        gap <= Duration::from_secs(1),
        "more than a second lost:\n{text}"
    );
    assert_eq!(o.wait_subnet(0)?, before);
    all_ping(&[&p0, &p1])?;
    Ok(())
}

#[test]
fn udp_a_port_in_use_stops_the_agent_with_the_field() -> Result<()> {
    if !prereqs("udp_a_port_in_use_stops_the_agent_with_the_field") {
        return Ok(());
    }
    let mut o = Overlay::start(1, "udp")?;
    let i = o.net.add_node()?;
    // Something else holds UDP 8285 on the new node.
    let mut holder = o
        .node(i)
        .cmd(&["socat", "UDP4-RECVFROM:8285", "-"])
        .spawn()
        .context("start socat")?;
    let held = wait_until(Duration::from_secs(5), || {
        o.node(i)
            .sh(&["ss", "-Hlun", "sport = :8285"])
            .is_ok_and(|s| !s.trim().is_empty())
    });
    assert!(held, "socat did not bind UDP 8285");
    let out = o.failing_agent(i, &["--iface", "eth0", "--backend", "udp"])?;
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Backend.Port: UDP 198.18.0.12:8285 is already in use"),
        "{err}"
    );
    Ok(())
}

#[test]
fn udp_a_deleted_tun_comes_back() -> Result<()> {
    if !prereqs("udp_a_deleted_tun_comes_back") {
        return Ok(());
    }
    let o = Overlay::start(2, "udp")?;
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping(&[&p0, &p1])?;
    let t = Instant::now();
    o.node(0).sh(&["ip", "link", "del", "knode0"])?;
    // The monitor sees it go; the data path starts again and recreates it.
    let back = wait_until(Duration::from_secs(5), || {
        o.node(0)
            .sh(&["ip", "route", "show", NETWORK])
            .is_ok_and(|r| r.contains("dev knode0"))
    });
    assert!(back, "knode0 did not come back:\n{}", o.agent(0).log());
    eprintln!("knode0 and its route back in {:?}", t.elapsed());
    all_ping(&[&p0, &p1])?;
    tcp_echo(p0.ns(), p0.ip(), p1.ns(), 7041)?;
    Ok(())
}
