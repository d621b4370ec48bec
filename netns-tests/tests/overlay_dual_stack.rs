//! Dual-stack pod networks on the real kernel: `--cluster-cidr` with an
//! IPv4 and an IPv6 CIDR, three nodes on an underlay bridge, pods with an
//! address of each family, IPv6 across nodes on vxlan (over an IPv4 and
//! over an IPv6 underlay) and host-gw, IPv6 egress masqueraded, and bad
//! input refused with the key. Everything lives in namespaces these tests
//! create.

mod overlay_harness;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_tests::cluster::{tcp_echo, wait_until, Pod, OUTSIDE_IP6};
use overlay_harness::{all_ping, peer_seen, prereqs, run_cli_in, Overlay};

const DUAL: &str = "10.244.0.0/16,fd00:10:244::/56";

/// A dual-stack cluster of `nodes`; with `ipv6_underlay`, the underlay
/// has IPv6 addresses too (so nodes lease their PublicIPv6).
fn dual(nodes: usize, backend: &'static str, ipv6_underlay: bool) -> Result<Overlay> {
    let mut o = Overlay::prepare(nodes, backend)?;
    if ipv6_underlay {
        o.net.add_ipv6()?;
    }
    o.cidr = DUAL.to_string();
    o.run_agents()?;
    Ok(o)
}

/// FLANNEL_IPV6_SUBNET of node `i` as a subnet (`fd00:10:244:3::1/64` -> `fd00:10:244:3::/64`).
fn subnet6(o: &Overlay, i: usize) -> Result<String> {
    let env = std::fs::read_to_string(o.subnet_file(i))?;
    let v = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .with_context(|| format!("node {i}: no FLANNEL_IPV6_SUBNET in\n{env}"))?;
    let (ip, len) = v.split_once('/').context("no length")?;
    let ip = ip
        .strip_suffix("::1")
        .context("not the subnet's first address")?;
    Ok(format!("{ip}::/{len}"))
}

fn ip6(p: &Pod) -> Result<String> {
    p.ip6()
        .with_context(|| format!("pod {} has no IPv6 address: {}", p.ip(), p.result()))
}

/// Every pod pings every other pod's IPv6 address.
fn all_ping6(pods: &[&Pod]) -> Result<()> {
    for a in pods {
        for b in pods {
            let (from, to) = (ip6(a)?, ip6(b)?);
            if from != to && !wait_until(Duration::from_secs(5), || a.ns().ping(&to)) {
                bail!("pod {from} cannot ping pod {to}");
            }
        }
    }
    Ok(())
}

/// TCP over IPv6 both ways between two pods: each sees the other's IPv6
/// address (the source is kept inside the cluster).
fn tcp6_both_ways(a: &Pod, b: &Pod, port: u16) -> Result<()> {
    assert_eq!(peer_seen(b.ns(), &ip6(b)?, a.ns(), port)?, ip6(a)?);
    assert_eq!(peer_seen(a.ns(), &ip6(a)?, b.ns(), port + 1)?, ip6(b)?);
    Ok(())
}

/// Node `i`'s lease as `knode get subnetlease -o yaml` prints it.
fn lease_yaml(o: &Overlay, i: usize) -> Result<String> {
    let name = o.wait_subnet(i)?.replace('/', "-");
    run_cli_in(
        o.node(0),
        &o.control_plane(),
        &["get", "subnetlease", &name, "-o", "yaml"],
        None,
    )
}

/// Node `i`'s IPv6 route to `subnet`, once it is there.
fn route6(o: &Overlay, i: usize, subnet: &str) -> Result<String> {
    let mut route = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        route = o
            .node(i)
            .sh(&["ip", "-6", "route", "show", subnet])
            .unwrap_or_default();
        !route.is_empty()
    });
    if !ok {
        bail!("node {i}: no route to {subnet}:\n{}", o.agent(i).log());
    }
    Ok(route)
}

#[test]
fn dual_stack_vxlan_over_an_ipv4_underlay() -> Result<()> {
    if !prereqs("dual_stack_vxlan_over_an_ipv4_underlay") {
        return Ok(());
    }
    let mut o = dual(3, "vxlan", false)?;
    let env = std::fs::read_to_string(o.subnet_file(0))?;
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"),
        "{env}"
    );
    let s6: Vec<String> = (0..3).map(|i| subnet6(&o, i)).collect::<Result<_>>()?;
    // Each IPv6 subnet is its IPv4 subnet's partner: 10.244.N.0/24 <-> fd00:10:244:N::/64.
    for (i, s) in s6.iter().enumerate() {
        let s4 = o.wait_subnet(i)?;
        let n: u32 = s4.split('.').nth(2).unwrap().parse()?;
        assert_eq!(*s, format!("fd00:10:244:{n:x}::/64"));
    }
    // No IPv6 underlay: IPv6 rides knode.1, which has the IPv6 VTEP address.
    assert!(o.node(0).sh(&["ip", "link", "show", "knode-v6.1"]).is_err());
    let vtep6 = s6[0].replace("::/64", "::/128");
    let addrs = o
        .node(0)
        .sh(&["ip", "-6", "addr", "show", "dev", "knode.1"])?;
    assert!(addrs.contains(&vtep6), "{vtep6} not in {addrs}");
    let r = route6(&o, 0, &s6[1])?;
    assert!(r.contains("dev knode.1") && r.contains("onlink"), "{r}");
    let lease = lease_yaml(&o, 1)?;
    assert!(lease.contains(&format!("IPv6Subnet: {}", s6[1])), "{lease}");
    assert!(!lease.contains("PublicIPv6"), "{lease}");

    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    for (i, p) in pods.iter().enumerate() {
        // The CNI result lists both addresses, IPv4 first.
        let ips = p.result()["ips"].as_array().context("ips")?;
        assert_eq!(ips.len(), 2, "{}", p.result());
        let v6 = ip6(p)?;
        assert!(
            v6.starts_with(s6[i].trim_end_matches("::/64")),
            "{v6} not in {}",
            s6[i]
        );
        // Usable at once (no DAD), with a default route via cni0's IPv6 address.
        let addr = p.ns().sh(&["ip", "-6", "addr", "show", "dev", "eth0"])?;
        assert!(
            addr.lines()
                .any(|l| l.contains(&format!("inet6 {v6}/64")) && !l.contains("tentative")),
            "{addr}"
        );
        let gw = s6[i].replace("::/64", "::1");
        let route = p.ns().sh(&["ip", "-6", "route", "show", "default"])?;
        assert!(route.contains(&format!("via {gw}")), "{route}");
        let cni0 = o.node(i).sh(&["ip", "addr", "show", "dev", "cni0"])?;
        assert!(
            cni0.contains(&format!("{gw}/64")) && cni0.contains("10.244."),
            "{cni0}"
        );
    }
    let refs: Vec<&Pod> = pods.iter().collect();
    all_ping(&refs)?;
    all_ping6(&refs)?;
    tcp6_both_ways(&pods[0], &pods[1], 7101)?;
    tcp6_both_ways(&pods[2], &pods[0], 7103)?;
    tcp_echo(pods[1].ns(), pods[1].ip(), pods[0].ns(), 7105)?;

    // Node 2 leaves: once its lease expires the others drop its IPv6 route
    // and neighbour too.
    let vtep2 = s6[2].trim_end_matches("/64").to_string();
    drop(pods);
    o.agents[2] = None;
    let gone = wait_until(Duration::from_secs(12), || {
        (0..2).all(|n| {
            let route = o.node(n).sh(&["ip", "-6", "route", "show", &s6[2]]);
            let neigh = o.node(n).sh(&["ip", "-6", "neigh", "show", &vtep2]);
            matches!((route, neigh), (Ok(r), Ok(ne)) if r.is_empty() && ne.is_empty())
        })
    });
    assert!(
        gone,
        "node 2's IPv6 entries remain:\n{}",
        o.node(0).sh(&["ip", "-6", "route"])?
    );
    Ok(())
}

#[test]
fn dual_stack_vxlan_over_an_ipv6_underlay_masquerades_ipv6_egress() -> Result<()> {
    if !prereqs("dual_stack_vxlan_over_an_ipv6_underlay_masquerades_ipv6_egress") {
        return Ok(());
    }
    let o = dual(3, "vxlan", true)?;
    // flannel's layout: a second device on the IPv6 underlay.
    let dev = o.node(0).sh(&["ip", "-d", "link", "show", "knode-v6.1"])?;
    let local = format!("local {}", o.net.node_ip6(0));
    for want in [
        "mtu 1430",
        "vxlan id 1 ",
        "dstport 8472",
        "nolearning",
        &local,
    ] {
        assert!(dev.contains(want), "{want:?} not in {dev}");
    }
    let env = std::fs::read_to_string(o.subnet_file(0))?;
    assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
    let s6: Vec<String> = (0..3).map(|i| subnet6(&o, i)).collect::<Result<_>>()?;
    let r = route6(&o, 0, &s6[1])?;
    assert!(r.contains("dev knode-v6.1") && r.contains("onlink"), "{r}");
    let fdb = o
        .node(0)
        .sh(&["bridge", "fdb", "show", "dev", "knode-v6.1"])?;
    assert!(fdb.contains(&format!("dst {}", o.net.node_ip6(1))), "{fdb}");
    let lease = lease_yaml(&o, 1)?;
    assert!(
        lease.contains(&format!("PublicIPv6: {}", o.net.node_ip6(1))),
        "{lease}"
    );
    assert!(lease.contains("BackendV6Data"), "{lease}");

    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    let refs: Vec<&Pod> = pods.iter().collect();
    all_ping6(&refs)?;
    all_ping(&refs)?;
    tcp6_both_ways(&pods[0], &pods[1], 7111)?;
    tcp6_both_ways(&pods[1], &pods[2], 7113)?;
    // A full-size packet passes without fragmentation (the MTU is right).
    let big = pods[0]
        .ns()
        .cmd(&[
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1382",
            &ip6(&pods[1])?,
        ])
        .output()?;
    assert!(
        big.status.success(),
        "{}",
        String::from_utf8_lossy(&big.stdout)
    );

    // Egress: the world outside sees the node's IPv6 address, not the pod's.
    assert_eq!(
        peer_seen(o.net.internet(), OUTSIDE_IP6, pods[2].ns(), 7115)?,
        o.net.node_ip6(2)
    );
    let rules = o.node(2).sh(&["ip6tables-save", "-t", "nat"])?;
    assert!(
        rules.contains("-A KNODE-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8"),
        "{rules}"
    );
    Ok(())
}

#[test]
fn dual_stack_host_gw_routes_ipv6_via_peers_ipv6_addresses() -> Result<()> {
    if !prereqs("dual_stack_host_gw_routes_ipv6_via_peers_ipv6_addresses") {
        return Ok(());
    }
    let o = dual(3, "host-gw", true)?;
    let s6: Vec<String> = (0..3).map(|i| subnet6(&o, i)).collect::<Result<_>>()?;
    let r = route6(&o, 0, &s6[1])?;
    assert!(
        r.contains(&format!("via {} dev eth0", o.net.node_ip6(1))),
        "{r}"
    );
    let pods: Vec<Pod> = (0..3)
        .map(|i| o.pod(i, &format!("p{i}")))
        .collect::<Result<_>>()?;
    let refs: Vec<&Pod> = pods.iter().collect();
    all_ping6(&refs)?;
    tcp6_both_ways(&pods[0], &pods[1], 7121)?;
    tcp6_both_ways(&pods[2], &pods[1], 7123)?;
    Ok(())
}

#[test]
fn bad_dual_stack_input_stops_the_agent_with_the_key() -> Result<()> {
    if !prereqs("bad_dual_stack_input_stops_the_agent_with_the_key") {
        return Ok(());
    }
    // No agent has stored a network config: each flag value is checked.
    let o = Overlay::prepare(1, "vxlan")?;
    for (cidr, want) in [
        (
            "10.244.0.0/16,10.245.0.0/16",
            "cluster-cidr: \"10.244.0.0/16,10.245.0.0/16\" has two IPv4 CIDRs",
        ),
        ("fd00::/56,fd01::/56", "has two IPv6 CIDRs"),
        (
            "10.244.0.0/16,fd00::/56,10.9.0.0/16",
            "has 3 CIDRs; at most two",
        ),
        (
            "10.244.0.0/16,fd00::zz/56",
            "cluster-cidr: \"fd00::zz/56\" is not a CIDR",
        ),
        (
            "10.244.0.0/16,fd00::/60",
            "IPv6SubnetLen: /64 subnets of IPv6Network fd00::/60 are 2^4, too few",
        ),
    ] {
        let out = o.failing_agent(0, &["--cluster-cidr", cidr])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cidr}: the agent started\n{err}");
        assert!(err.contains(want), "{cidr}: {want:?} not in\n{err}");
    }
    // host-gw cannot route IPv6 pods without an IPv6 underlay address.
    let out = o.failing_agent(0, &["--cluster-cidr", DUAL, "--backend", "host-gw"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host-gw routes IPv6 pod subnets via peers' IPv6 underlay addresses, and iface eth0 has no global IPv6 address"),
        "{err}"
    );
    Ok(())
}

#[test]
fn dual_stack_restart_keeps_both_subnets_and_cleanup_removes_the_ipv6_side() -> Result<()> {
    if !prereqs("dual_stack_restart_keeps_both_subnets_and_cleanup_removes_the_ipv6_side") {
        return Ok(());
    }
    let mut o = dual(2, "vxlan", true)?;
    let before = (o.wait_subnet(0)?, subnet6(&o, 0)?);
    let p0 = o.pod(0, "p0")?;
    let p1 = o.pod(1, "p1")?;
    all_ping6(&[&p0, &p1])?;
    // The kernel carries IPv6 pod traffic while the agent is away, and the
    // agent comes back to the same pair of subnets.
    o.agents[0].as_mut().unwrap().kill9()?;
    assert!(p1.ns().ping(&ip6(&p0)?), "IPv6 stopped with the agent");
    o.agents[0].as_mut().unwrap().restart()?;
    // The log is appended to: the second "overlay ready" is the new agent's.
    let ready = wait_until(Duration::from_secs(15), || {
        o.agent(0).log().matches("overlay ready").count() >= 2
    });
    assert!(ready, "{}", o.agent(0).log());
    assert_eq!((o.wait_subnet(0)?, subnet6(&o, 0)?), before);
    tcp6_both_ways(&p0, &p1, 7131)?;

    // --cleanup removes the IPv6 side too: device, routes, ip6tables chains.
    drop((p0, p1));
    let out = o.agents[0].as_mut().unwrap().cleanup()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n0 = o.node(0);
    assert!(n0.sh(&["ip", "link", "show", "knode-v6.1"]).is_err());
    let routes = n0.sh(&["ip", "-6", "route", "show"])?;
    assert!(!routes.contains("fd00:10:244:"), "{routes}");
    let nat = n0.sh(&["ip6tables-save", "-t", "nat"])?;
    assert!(!nat.contains("KNODE-POSTRTG"), "{nat}");
    Ok(())
}
