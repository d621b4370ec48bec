//! Dual-stack pods end to end: two nodes with `--cluster-cidr
//! 10.244.0.0/16,fd00:10:244::/56`, pods run by containerd get an IPv4 and
//! an IPv6 address; `status.podIPs` lists both (IPv4, the node IP's
//! family, first, as kubelet orders them), the downward API and
//! /etc/hosts give both, the Node has both podCIDRs, and a pod reaches a
//! pod on the other node over IPv6.

use anyhow::{bail, Context, Result};
use knode_tests::cluster::Cluster;
use serde_json::{json, Value};

const DUAL: &str = "10.244.0.0/16,fd00:10:244::/56";

fn pod(name: &str, node: &str, command: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c",
            "image": knode_tests::image::BUSYBOX,
            "command": ["sh", "-c", command],
            "env": [{"name": "POD_IPS",
                     "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}]}]}})
}

/// The pod's `status.podIPs`.
fn pod_ips(p: &Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn dual_stack_pods_get_both_addresses_and_talk_over_ipv6() -> Result<()> {
    let test = "dual_stack_pods_get_both_addresses_and_talk_over_ipv6";
    if !knode_tests::require_root(test)
        || !knode_tests::containerd::require_containerd(test)
        || !knode_tests::etcd::require_etcd(test)
    {
        return Ok(());
    }
    let c = Cluster::start_cidr(2, DUAL, &[])?;
    let objs = [
        pod("server", "node-1", "exec nc -ll -p 9000 -e echo pong"),
        pod("client", "node-0", "exec sleep 3600"),
    ];
    let docs: Vec<String> = objs.iter().map(Value::to_string).collect();
    c.apply(&docs.join("\n---\n"))?;
    let server = c.wait_running("server")?;
    let client = c.wait_running("client")?;
    for p in [&server, &client] {
        let ips = pod_ips(p);
        assert_eq!(ips.len(), 2, "{}", p["status"]);
        assert!(ips[0].starts_with("10.244."), "{ips:?}");
        assert!(ips[1].starts_with("fd00:10:244:"), "{ips:?}");
        assert_eq!(p["status"]["podIP"].as_str(), Some(ips[0].as_str()));
    }
    let node = c.get("node", "node-1")?.context("node-1")?;
    let cidrs = node["spec"]["podCIDRs"].as_array().context("podCIDRs")?;
    assert_eq!(cidrs.len(), 2, "{}", node["spec"]);
    let server6 = pod_ips(&server)[1].clone();
    assert!(
        server6.starts_with(cidrs[1].as_str().unwrap().trim_end_matches("::/64")),
        "{server6} not in {cidrs:?}"
    );

    // The downward API gives both, comma-separated.
    let env = c.nodes[0].knode(&["exec", "client", "--", "sh", "-c", "echo $POD_IPS"])?;
    assert_eq!(env.trim(), pod_ips(&client).join(","));
    // /etc/hosts names the pod at both, as kubelet writes it.
    let hosts = c.nodes[0].knode(&["exec", "client", "--", "cat", "/etc/hosts"])?;
    for ip in pod_ips(&client) {
        assert!(hosts.contains(&format!("{ip}\tclient\n")), "{hosts}");
    }

    // Across the overlay over IPv6.
    let cmd = format!("echo ping | nc -w 3 {server6} 9000");
    let mut last = String::new();
    for _ in 0..20 {
        match c.nodes[0].knode(&["exec", "client", "--", "sh", "-c", &cmd]) {
            Ok(out) if out.trim() == "pong" => return Ok(()),
            Ok(out) => last = out,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    bail!("client -> [{server6}]:9000 over IPv6: {last}")
}
