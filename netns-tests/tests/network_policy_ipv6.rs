//! NetworkPolicy over IPv6 on the real kernel: the policy engine of the
//! IPv6 family (table `ip6 knode-policy`) in a node namespace that routes
//! between pod namespaces, each with an IPv4 and an IPv6 address (a
//! dual-stack node's pods). A default-deny on the server with one pod
//! selector and one IPv6 ipBlock allowed: the selected client connects
//! over IPv6, another does not until the ipBlock names it, and a pod the
//! engine has not programmed is cut off by the guard. All traffic stays
//! in the namespaces the test made.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hostnet::nftables::{NfTables, NfTablesSocket};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netns_tests::{require_root, TestNs};
use netpol::{Engine, IpFamily, NodeConfig};
use serde_json::json;

const NODE: &str = "v6-node";

/// A pod namespace `n` behind the node: 10.77.n.2/24 and fd00:77:n::2/64.
fn attach(node: &TestNs, pod: &TestNs, n: u8) -> Result<()> {
    node.plug(&format!("vp{n}"), pod, &format!("10.77.{n}.2/24"))?;
    let side = format!("vp{n}");
    node.sh(&[
        "ip",
        "addr",
        "add",
        &format!("10.77.{n}.1/24"),
        "dev",
        &side,
    ])?;
    node.sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("fd00:77:{n}::1/64"),
        "dev",
        &side,
        "nodad",
    ])?;
    pod.sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("fd00:77:{n}::2/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd00:77:{n}::1"),
    ])?;
    Ok(())
}

fn pod(name: &str, app: &str, n: u8) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": name, "uid": name, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": format!("10.77.{n}.2"),
                   "podIPs": [{"ip": format!("10.77.{n}.2")}, {"ip": format!("fd00:77:{n}::2")}]},
    }))
    .expect("pod JSON")
}

fn policy(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "server"}, "spec": spec}))
        .expect("policy JSON")
}

/// Whether a TCP connection from `ns` to `addr` is made within 300 ms
/// (a dropped SYN gets no answer).
fn connects(ns: &TestNs, addr: SocketAddr) -> Result<bool> {
    ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
}

fn sync(node: &TestNs, e: &mut Engine) -> Result<()> {
    node.run(|| e.sync().map(|_| ()))?
        .map_err(|err| anyhow::anyhow!("sync: {err}"))
}

#[test]
fn ipv6_traffic_follows_the_policies() -> Result<()> {
    if !require_root("ipv6_traffic_follows_the_policies") {
        return Ok(());
    }
    let node = TestNs::new("np6n")?;
    let (client, other, server, late) = (
        TestNs::new("np6c")?,
        TestNs::new("np6o")?,
        TestNs::new("np6s")?,
        TestNs::new("np6l")?,
    );
    node.sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    for (ns, n) in [(&client, 1), (&other, 2), (&server, 3), (&late, 4)] {
        attach(&node, ns, n)?;
    }
    let listener = server.run(|| TcpListener::bind("[fd00:77:3::2]:8080"))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let target: SocketAddr = "[fd00:77:3::2]:8080".parse()?;
    // Before any table every pod reaches the server (neighbour discovery
    // may take the first SYN: wait for it, for each).
    for ns in [&client, &other, &late] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !connects(ns, target)? {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no IPv6 route to the server",
                ns.name()
            );
        }
    }

    let mut e = node.run(|| -> Result<Engine> {
        let nft = NfTablesSocket::open().context("open nf_tables")?;
        Ok(Engine::new(
            Arc::new(nft),
            NodeConfig {
                node_name: NODE.into(),
                family: IpFamily::V6,
                guard_cidr: Some("fd00:77::/32".parse()?),
            },
        ))
    })??;
    e.set_namespace("x", Some(Default::default()));
    for (name, app, n) in [
        ("client", "client", 1),
        ("other", "other", 2),
        ("server", "server", 3),
    ] {
        e.set_pod(("x".into(), name.into()), Some(&pod(name, app, n)));
    }
    let allow = |blocks: serde_json::Value| {
        let mut from = vec![json!({"podSelector": {"matchLabels": {"app": "client"}}})];
        from.extend(blocks.as_array().cloned().unwrap_or_default());
        policy(json!({"podSelector": {"matchLabels": {"app": "server"}},
                      "ingress": [{"from": from, "ports": [{"port": 8080}]}]}))
    };
    e.set_policy(("x".into(), "server".into()), Some(&allow(json!([]))));
    sync(&node, &mut e)?;
    assert!(
        connects(&client, target)?,
        "the selected client gets through"
    );
    assert!(!connects(&other, target)?, "another pod does not");
    assert!(!connects(&late, target)?, "a pod not programmed is guarded");

    // An IPv6 ipBlock naming the other pod's subnet (an IPv4 one beside
    // it allows nothing over IPv6).
    e.set_policy(
        ("x".into(), "server".into()),
        Some(&allow(json!([{"ipBlock": {"cidr": "fd00:77:2::/64"}},
                           {"ipBlock": {"cidr": "10.0.0.0/8"}}]))),
    );
    sync(&node, &mut e)?;
    assert!(
        connects(&other, target)?,
        "the ipBlock lets the other pod in"
    );
    assert!(!connects(&late, target)?, "still guarded");

    // The policy goes: the server is open to every programmed pod.
    e.set_policy(("x".into(), "server".into()), None);
    e.set_pod(("x".into(), "late".into()), Some(&pod("late", "late", 4)));
    sync(&node, &mut e)?;
    assert!(connects(&late, target)?, "programmed and unisolated");
    // Only the IPv6 table: this engine writes nothing of IPv4's.
    let (v6, v4) = node.run(|| -> Result<_> {
        let nft = NfTablesSocket::open()?;
        let has = |f| nft.table(&netpol::ruleset::table(f)).map(|t| t.is_some());
        Ok((has(IpFamily::V6)?, has(IpFamily::V4)?))
    })??;
    assert!(v6 && !v4, "ip6 table {v6}, ip table {v4}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = acceptor.join();
    Ok(())
}
