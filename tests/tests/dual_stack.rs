//! Dual-stack pods end to end: two nodes with `--cluster-cidr
//! 10.244.0.0/16,fd00:10:244::/56`, pods run by containerd get an IPv4 and
//! an IPv6 address; `status.podIPs` lists both (IPv4, the node IP's
//! family, first, as kubelet orders them), the downward API and
//! /etc/hosts give both, the Node has both podCIDRs, and a pod reaches a
//! pod on the other node over IPv6. A dual-stack Service
//! (`--service-cidr 10.96.0.0/16,fd00:10:96::/112`, `ipFamilyPolicy:
//! RequireDualStack`) gets a ClusterIP of each family and an EndpointSlice
//! per family, and a pod on another node reaches it by its IPv6 ClusterIP,
//! by its NodePort on the other node's IPv6 address, and by its IPv4
//! ClusterIP; the cluster DNS answers AAAA with the IPv6 ClusterIP.

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

/// `cmd` in pod `pod` (through node 0's CLI) until its output, trimmed,
/// is `want`; what it gave last otherwise.
fn exec_until(c: &Cluster, pod: &str, cmd: &str, want: impl Fn(&str) -> bool) -> Result<String> {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match c.nodes[0].knode(&["exec", pod, "--", "sh", "-c", cmd]) {
            Ok(out) if want(out.trim()) => return Ok(out),
            Ok(out) => last = out,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    bail!("{pod}: {cmd}: {last}\n{}", c.logs())
}

#[test]
fn dual_stack_services_answer_on_both_families_and_by_nodeport_over_ipv6() -> Result<()> {
    let test = "dual_stack_services_answer_on_both_families_and_by_nodeport_over_ipv6";
    if !knode_tests::require_root(test)
        || !knode_tests::containerd::require_containerd(test)
        || !knode_tests::etcd::require_etcd(test)
    {
        return Ok(());
    }
    let c = Cluster::start_cidrs(2, DUAL, Some("10.96.0.0/16,fd00:10:96::/112"), &[])?;
    let mut server = pod("server", "node-1", "exec nc -ll -p 9000 -e echo pong");
    server["metadata"]["labels"] = json!({"app": "web"});
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ipFamilyPolicy": "RequireDualStack",
                 "selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": 9000}]}});
    let objs = [server, svc, pod("client", "node-0", "exec sleep 3600")];
    let docs: Vec<String> = objs.iter().map(Value::to_string).collect();
    c.apply(&docs.join("\n---\n"))?;
    c.wait_running("server")?;
    c.wait_running("client")?;

    let svc = c.get("service", "web")?.context("service web")?;
    let spec = &svc["spec"];
    let ips: Vec<&str> = spec["clusterIPs"]
        .as_array()
        .context("clusterIPs")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(spec["ipFamilies"], json!(["IPv4", "IPv6"]), "{spec}");
    assert_eq!(ips.len(), 2, "{spec}");
    assert_eq!(spec["clusterIP"].as_str(), Some(ips[0]));
    let (v4, v6) = (ips[0], ips[1]);
    assert!(
        v4.starts_with("10.96.") && v6.starts_with("fd00:10:96::"),
        "{ips:?}"
    );
    let node_port = spec["ports"][0]["nodePort"].as_u64().context("nodePort")?;

    // An EndpointSlice per family.
    let mut families = Vec::new();
    for _ in 0..120 {
        let out = c.nodes[0].knode(&["get", "endpointslices", "-o", "json"])?;
        let list: Value = serde_json::from_str(&out)?;
        families = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
            .filter(|s| !s["endpoints"].as_array().is_none_or(Vec::is_empty))
            .filter_map(|s| s["addressType"].as_str().map(str::to_string))
            .collect();
        families.sort();
        if families == ["IPv4", "IPv6"] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(families, ["IPv4", "IPv6"]);

    // By the IPv6 ClusterIP, the IPv4 one, and the NodePort on node-1's
    // IPv6 address (its cni0 gateway, reached over the overlay).
    let node1 = c.get("node", "node-1")?.context("node-1")?;
    let cidr6 = node1["spec"]["podCIDRs"][1]
        .as_str()
        .context("podCIDRs[1]")?;
    let node1_v6 = format!("{}1", cidr6.trim_end_matches("/64"));
    for (addr, port) in [
        (v6.to_string(), 80),
        (v4.to_string(), 80),
        (node1_v6.clone(), node_port),
    ] {
        let cmd = format!("echo ping | nc -w 3 {addr} {port}");
        exec_until(&c, "client", &cmd, |out| out == "pong")
            .with_context(|| format!("client -> {addr} port {port}"))?;
    }
    // The cluster DNS answers AAAA with the IPv6 ClusterIP.
    let cmd = "nslookup -type=AAAA web.default.svc.cluster.local";
    exec_until(&c, "client", cmd, |out| out.contains(v6))?;
    Ok(())
}
