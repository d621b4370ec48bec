//! The multi-node harness itself, against the real kernel: nodes reach each
//! other over the underlay and the outside address through the `internet`
//! namespace (and nothing beyond it), etcd in the underlay answers nodes,
//! pods made with our CNI plugins talk, and nothing is left after drop.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use netns_tests::cluster::{tcp_echo, wait_until, ClusterNet, Pod, OUTSIDE_IP, UNDERLAY_IP};
use netns_tests::etcd::{require_etcd, EtcdCluster, ETCDCTL};
use netns_tests::{require_root, TempDir};
use serde_json::json;

/// The namespaces `ip netns list` shows.
fn netns_list() -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The links of the root namespace (`ip -o link`).
fn root_links() -> Result<String> {
    let out = Command::new("ip").args(["-o", "link"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn nodes_underlay_internet_etcd_and_cleanup() -> Result<()> {
    let test = "nodes_underlay_internet_etcd_and_cleanup";
    if !require_root(test) || !require_etcd(test) {
        return Ok(());
    }
    let (names, links) = {
        let mut net = ClusterNet::new(3)?;
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    assert!(
                        net.node(i).ping(&net.node_ip(j)),
                        "node {i} cannot ping node {j} at {}",
                        net.node_ip(j)
                    );
                }
            }
        }
        assert!(
            net.node(0).ping(UNDERLAY_IP),
            "node 0 -> the underlay bridge"
        );
        // Egress goes to the test's internet namespace and stops there.
        assert!(net.node(1).ping(OUTSIDE_IP), "node 1 -> {OUTSIDE_IP}");
        let route = net.node(1).sh(&["ip", "route", "get", OUTSIDE_IP])?;
        assert!(route.contains("via 198.18.0.254 dev eth0"), "{route}");
        assert!(
            !net.node(1).ping("198.51.100.1"),
            "nothing beyond the internet ns"
        );
        assert_eq!(
            net.node(2)
                .sh(&["sysctl", "-n", "net.ipv4.ip_forward"])?
                .trim(),
            "1"
        );

        let etcd = EtcdCluster::start_in(net.underlay().path(), net.underlay_ip(), 3)?;
        let ep = etcd.endpoints()[0].clone();
        assert!(ep.starts_with("http://198.18.0.1:"), "{ep}");
        let health = net
            .node(2)
            .cmd(&[ETCDCTL, "--endpoints", &ep, "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()?;
        assert!(
            health.status.success(),
            "etcdctl from node 2: {}",
            String::from_utf8_lossy(&health.stderr)
        );
        // etcdctl 3.4 reports health on stderr.
        let said =
            String::from_utf8_lossy(&health.stderr) + String::from_utf8_lossy(&health.stdout);
        assert!(said.contains(&format!("{ep} is healthy")), "{said}");
        // Three members inside the underlay: ports picked there, etcdctl run there.
        assert!(etcd.leader()? < 3);
        // Nothing was programmed in the root namespace (and no packet is
        // sent there to check: 198.18.0.1 would leave by its default route).
        let root_addrs =
            String::from_utf8_lossy(&Command::new("ip").args(["-o", "addr"]).output()?.stdout)
                .into_owned();
        assert!(!root_addrs.contains("198.18.0."), "{root_addrs}");

        tcp_echo(net.node(0), &net.node_ip(0), net.node(2), 7777)?;

        // A node joins, then goes away at once.
        let joined = net.add_node()?;
        let joined_ip = net.node_ip(joined);
        assert_eq!(joined_ip, "198.18.0.14");
        assert!(net.node(0).ping(&joined_ip), "node 0 -> the joined node");
        net.remove_node(joined)?;
        assert!(
            !net.node(0).ping(&joined_ip),
            "the removed node still answers"
        );
        assert_eq!(net.node_indices(), vec![0, 1, 2]);

        let mut names: Vec<String> = net
            .node_indices()
            .into_iter()
            .map(|i| net.node(i).name().to_string())
            .collect();
        names.push(net.underlay().name().to_string());
        names.push(net.internet().name().to_string());
        drop(etcd);
        (names, net.underlay_net().links())
    };
    let left = netns_list()?;
    for n in &names {
        assert!(
            !left.contains(n.as_str()),
            "namespace {n} left behind:\n{left}"
        );
    }
    let root = root_links()?;
    for l in &links {
        assert!(
            !root.contains(l.as_str()),
            "link {l} in the root namespace:\n{root}"
        );
    }
    Ok(())
}

#[test]
fn pods_get_addresses_talk_and_are_deleted() -> Result<()> {
    if !require_root("pods_get_addresses_talk_and_are_deleted") {
        return Ok(());
    }
    let net = ClusterNet::new(1)?;
    let dir = TempDir::new("pods")?;
    let (conf, ipam) = (dir.path().join("conf"), dir.path().join("ipam"));
    std::fs::create_dir_all(&conf)?;
    // One plugin, the IPAM store in the temp dir (the agent's default
    // conflist keeps it in /var/lib/cni).
    let ipam_conf = json!({"type": "knode-host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam});
    let bridge =
        json!({"type": "knode-bridge", "bridge": "cni0", "isGateway": true, "ipam": ipam_conf});
    let list = json!({"cniVersion": "1.0.0", "name": "knode", "plugins": [bridge]});
    std::fs::write(conf.join("10-knode.conflist"), list.to_string())?;
    let bins = netns_tests::bin_dir();
    let a = Pod::add(net.node(0), &conf, &bins, "a")?;
    let b = Pod::add(net.node(0), &conf, &bins, "b")?;
    assert_ne!(a.ip(), b.ip());
    // A new bridge port and the first ARP exchange may take a moment on a
    // loaded machine: wait for the answer, do not bet on one ping.
    let answers = |from: &Pod, to: &str| wait_until(Duration::from_secs(10), || from.ns().ping(to));
    assert!(answers(&a, b.ip()), "pod a -> pod b");
    assert!(answers(&a, "127.0.0.1"), "loopback is up in the pod");
    assert!(answers(&b, &net.node_ip(0)), "pod b -> its node");
    tcp_echo(a.ns(), a.ip(), b.ns(), 8080)?;
    let reserved = ipam.join("knode").join(a.ip());
    assert!(reserved.is_file(), "{}", reserved.display());
    let pod_ns = a.ns().name().to_string();
    drop(a);
    assert!(
        !reserved.exists(),
        "CNI DEL released {}",
        reserved.display()
    );
    let left = netns_list()?;
    assert!(!left.contains(&pod_ns), "{pod_ns} left behind");
    let veths = || {
        net.node(0)
            .sh(&["ip", "-o", "link", "show", "type", "veth"])
            .map(|s| s.lines().count())
            .unwrap_or(usize::MAX)
    };
    // b's veth stays; a's goes (the plugin may reap it in the background).
    assert!(
        wait_until(Duration::from_secs(3), || veths() == 2),
        "node veths: {}",
        net.node(0)
            .sh(&["ip", "-o", "link", "show", "type", "veth"])?
    );
    drop(b);
    Ok(())
}
