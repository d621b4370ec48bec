//! Cluster DNS end to end: a real `knode agent` (DNS on, as by default)
//! and busybox pods that look names up with `nslookup`, the way an
//! application would: Services by short name, `<svc>.<ns>` and FQDN, a
//! headless Service's ready pods, NXDOMAIN for a missing name, no conntrack
//! entry for the traffic, the placement put back after a flush, and (with
//! dnsmasq in the node's namespace) other names forwarded and cached.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::node::{Node, TEST_UPSTREAM};
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;
const CLUSTER_DNS: &str = "10.96.0.10";

/// `nslookup name` inside pod `pod`: its output (errors included), and
/// whether it found an address.
fn lookup(n: &Node, pod: &str, name: &str) -> Result<String> {
    n.knode(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        &format!("nslookup {name} 2>&1; true"),
    ])
}

/// Polls `lookup` until its output holds every one of `want` (and none of
/// `unwanted`); fails with the last output after `timeout`.
fn until_answers(
    n: &Node,
    pod: &str,
    name: &str,
    want: &[&str],
    unwanted: &[&str],
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = lookup(n, pod, name)?;
        let ok =
            want.iter().all(|w| answered(&out, w)) && !unwanted.iter().any(|u| answered(&out, u));
        if ok {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("nslookup {name} in {pod}: want {want:?}, not {unwanted:?}; got:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True when nslookup's output lists `ip` as an answer (after the line
/// naming the server, which busybox prints first).
fn answered(out: &str, ip: &str) -> bool {
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .any(|l| l.split_whitespace().any(|w| w == ip))
}

fn pod_ip(p: &Value) -> String {
    p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn cluster_ip(n: &Node, ns: &str, svc: &str) -> Result<String> {
    let out = n.knode(&["get", "service", svc, "-n", ns, "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    v["spec"]["clusterIP"]
        .as_str()
        .map(str::to_string)
        .context("a ClusterIP")
}

fn sleeper(name: &str, ns: &str, labels: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "600"]
{extra}"#
    )
}

/// Services by every name form, a headless Service's ready pods only,
/// NXDOMAIN at once for a missing name, kube-dns kept by the control
/// plane, and no conntrack entry for any of that traffic.
#[test]
fn pods_resolve_services_by_name_with_no_conntrack_on_the_path() -> Result<()> {
    let Some(n) = Node::for_test("pods_resolve_services_by_name_with_no_conntrack_on_the_path")
    else {
        return Ok(());
    };
    // kube-dns is kept with the cluster DNS address.
    assert_eq!(cluster_ip(&n, "kube-system", "kube-dns")?, CLUSTER_DNS);

    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n".to_string(),
        sleeper("client", "default", "app: client", ""),
        sleeper("redis", "default", "app: redis", ""),
        sleeper("db-0", "default", "app: db", ""),
        sleeper("db-1", "default", "app: db", ""),
        // Runs, but its readiness probe never passes: not in DNS.
        sleeper(
            "db-unready",
            "default",
            "app: db",
            "    readinessProbe:\n      exec: {command: [\"false\"]}\n      periodSeconds: 1\n",
        ),
    ];
    docs.push(
        r#"
apiVersion: v1
kind: Service
metadata: {name: redis-master}
spec:
  selector: {app: redis}
  ports: [{name: redis, port: 6379}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec:
  ports: [{port: 80}]
"#
        .to_string(),
    );
    n.apply(&docs.join("\n---\n"))?;
    for p in ["client", "redis", "db-0", "db-1", "db-unready"] {
        n.wait_running(p)?;
    }
    let client = n.wait_running("client")?;
    let db0 = pod_ip(&n.wait_running("db-0")?);
    let db1 = pod_ip(&n.wait_running("db-1")?);
    let unready = pod_ip(&n.wait_running("db-unready")?);
    assert!(!pod_ip(&client).is_empty());

    // The pod's resolv.conf, as kubelet writes it for ClusterFirst.
    let conf = n.knode(&["exec", "client", "--", "cat", "/etc/resolv.conf"])?;
    assert!(
        conf.contains(&format!("nameserver {CLUSTER_DNS}\n"))
            && conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && conf.contains("options ndots:5"),
        "{conf}"
    );

    let redis = cluster_ip(&n, "default", "redis-master")?;
    // busybox's nslookup applies the search list itself to dotless names only.
    until_answers(
        &n,
        "client",
        "redis-master",
        &[&redis],
        &[],
        Duration::from_secs(10),
    )?;
    until_answers(
        &n,
        "client",
        "redis-master.default.svc.cluster.local",
        &[&redis],
        &[],
        Duration::from_secs(10),
    )?;
    // Dotted names as glibc resolves them with ndots:5: each search
    // domain of the pod's file in turn, the first answer wins.
    let search: Vec<&str> = conf
        .lines()
        .find_map(|l| l.strip_prefix("search "))
        .context("a search line")?
        .split_whitespace()
        .collect();
    let api = cluster_ip(&n, "other", "api")?;
    for (name, want) in [("redis-master.default", &redis), ("api.other", &api)] {
        let mut found = None;
        for d in &search {
            let out = lookup(&n, "client", &format!("{name}.{d}"))?;
            if answered(&out, want) {
                found = Some(d.to_string());
                break;
            }
        }
        assert_eq!(
            found.as_deref(),
            Some("svc.cluster.local"),
            "{name} through search {search:?}"
        );
    }
    // The headless Service: its two ready pods, not the unready one.
    until_answers(
        &n,
        "client",
        "db.default.svc.cluster.local",
        &[&db0, &db1],
        &[&unready],
        Duration::from_secs(20),
    )?;

    // A missing name: NXDOMAIN, at once (not a timeout).
    let started = Instant::now();
    let out = lookup(&n, "client", "nosuch.default.svc.cluster.local")?;
    let took = started.elapsed();
    assert!(out.contains("NXDOMAIN"), "{out}");
    assert!(took < Duration::from_secs(3), "NXDOMAIN took {took:?}");

    // No conntrack entry for pod -> cluster DNS, in either protocol. A
    // control: a TCP connection on that same path to another port (a
    // listener in the node's namespace) is tracked.
    let mut listener = n
        .host
        .cmd(&["busybox", "nc", "-l", "-p", "5454"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("start a listener")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut table = String::new();
    let mut control = String::new();
    let is_control =
        |l: &str| l.contains(&format!("dst={CLUSTER_DNS} ")) && l.contains("dport=5454 ");
    while !table.lines().any(is_control) && Instant::now() < deadline {
        control = n.knode(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("echo hi | nc -w 1 {CLUSTER_DNS} 5454 2>&1; true"),
        ])?;
        table = n.host_sh(&["conntrack", "-L"])?;
    }
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        table.lines().any(is_control),
        "conntrack does not see the control connection ({control}):\n{table}"
    );
    let dns_entries: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(&format!("dst={CLUSTER_DNS} ")) && l.contains("dport=53 "))
        .collect();
    assert!(
        dns_entries.is_empty(),
        "conntrack holds DNS entries:\n{table}"
    );
    Ok(())
}

/// A Service created is answered within a second (measured from the
/// node, where a lookup costs no exec); the addresses and the NOTRACK
/// table come back after someone removes them.
#[test]
fn new_services_answer_within_a_second_and_placement_is_restored() -> Result<()> {
    let Some(n) = Node::for_test("new_services_answer_within_a_second_and_placement_is_restored")
    else {
        return Ok(());
    };
    let node_lookup = |name: &str| -> Result<String> {
        let out = n
            .host
            .cmd(&["nslookup", name, CLUSTER_DNS])
            .output()
            .context("nslookup from the node")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The server answers before the test starts measuring.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node_lookup("kube-dns.kube-system.svc.cluster.local")?.contains(CLUSTER_DNS) {
        assert!(Instant::now() < deadline, "cluster DNS never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut latencies = Vec::new();
    for i in 0..5 {
        n.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: late{i}}}\nspec:\n  ports: [{{port: 80}}]\n"
        ))?;
        let created = Instant::now();
        let ip = cluster_ip(&n, "default", &format!("late{i}"))?;
        let name = format!("late{i}.default.svc.cluster.local");
        loop {
            if answered(&node_lookup(&name)?, &ip) {
                break;
            }
            assert!(
                created.elapsed() < Duration::from_secs(10),
                "{name} never answered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.push(created.elapsed());
    }
    latencies.sort();
    eprintln!("service created -> resolvable (incl. one `knode get`): {latencies:?}");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_secs(1),
        "median {:?}",
        latencies
    );

    // Flushed by someone else: put back by the periodic check.
    n.host_sh(&["nft", "delete", "table", "ip", "knode-dns"])?;
    n.host_sh(&[
        "ip",
        "addr",
        "del",
        &format!("{CLUSTER_DNS}/32"),
        "dev",
        "lo",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = n
            .host
            .cmd(&["nft", "list", "table", "ip", "knode-dns"])
            .output()?;
        let addrs = n.host_sh(&["ip", "-4", "addr", "show", "dev", "lo"])?;
        if table.status.success()
            && String::from_utf8_lossy(&table.stdout).contains("notrack")
            && addrs.contains(&format!("{CLUSTER_DNS}/32"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "placement not restored:\n{addrs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node_lookup("late0.default.svc.cluster.local")?.contains("Address"));
    Ok(())
}

/// `dnsPolicy: None` takes the pod's resolv.conf from `dnsConfig` alone; a
/// hostNetwork pod gets cluster DNS with ClusterFirstWithHostNet, but the
/// node's file with plain ClusterFirst, as kubelet does. (The files only:
/// here a hostNetwork container shares the test containerd's network
/// namespace, not the node's, so it must send nothing.)
#[test]
fn dns_policy_none_and_host_network_pods_get_kubelets_resolv_conf() -> Result<()> {
    let Some(n) = Node::for_test("dns_policy_none_and_host_network_pods_get_kubelets_resolv_conf")
    else {
        return Ok(());
    };
    let custom = "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.53]\n    \
                  searches: [corp.example]\n    options: [{name: ndots, value: \"2\"}, {name: edns0}]\n";
    let docs = [
        sleeper("custom", "default", "app: custom", custom),
        sleeper(
            "hostnet-cluster",
            "default",
            "app: h1",
            "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n",
        ),
        sleeper(
            "hostnet-default",
            "default",
            "app: h2",
            "  hostNetwork: true\n",
        ),
    ];
    n.apply(&docs.join("---\n"))?;
    for p in ["custom", "hostnet-cluster", "hostnet-default"] {
        n.wait_running(p)?;
    }
    let conf = |pod: &str| n.knode(&["exec", pod, "--", "cat", "/etc/resolv.conf"]);
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };

    let c = conf("custom")?;
    assert_eq!(
        lines(&c),
        [
            "search corp.example",
            "nameserver 192.0.2.53",
            "options ndots:2 edns0"
        ],
        "dnsPolicy None:\n{c}"
    );

    let c = conf("hostnet-cluster")?;
    assert!(
        c.contains(&format!("nameserver {CLUSTER_DNS}"))
            && c.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && c.contains("options ndots:5"),
        "ClusterFirstWithHostNet:\n{c}"
    );

    let c = conf("hostnet-default")?;
    assert!(
        c.contains(&format!("nameserver {TEST_UPSTREAM}")) && !c.contains(CLUSTER_DNS),
        "hostNetwork with ClusterFirst keeps the node's file:\n{c}"
    );
    Ok(())
}

/// Other names go to the node's upstream (dnsmasq on the node
/// namespace's 127.0.0.2, standing in for the internet's resolvers); a
/// second query is a cache hit: dnsmasq sees the name once.
#[test]
fn other_names_are_forwarded_to_the_upstream_and_cached() -> Result<()> {
    let test = "other_names_are_forwarded_to_the_upstream_and_cached";
    if !std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs dnsmasq (scripts/bootstrap.sh installs it)"
        );
        eprintln!("skipping {test}: needs dnsmasq (scripts/bootstrap.sh installs it)");
        return Ok(());
    }
    let Some(n) = Node::for_test(test) else {
        return Ok(());
    };
    let log = n.path("dnsmasq.log");
    let mut dnsmasq = n
        .host
        .cmd(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={TEST_UPSTREAM}"),
            "--address=/outside.example/192.0.2.99",
            "--log-queries",
            // Its own answers are TTL 0 by default: never cacheable.
            "--local-ttl=300",
            &format!("--log-facility={}", log.display()),
            "--pid-file=",
            "--user=root",
        ])
        .spawn()
        .context("start dnsmasq")?;
    let result = (|| -> Result<()> {
        let sleeper = sleeper("client", "default", "app: client", "");
        n.apply(&sleeper)?;
        n.wait_running("client")?;
        until_answers(
            &n,
            "client",
            "www.outside.example.",
            &["192.0.2.99"],
            &[],
            Duration::from_secs(20),
        )?;
        let out = lookup(&n, "client", "www.outside.example.")?;
        assert!(answered(&out, "192.0.2.99"), "{out}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let asked = text
            .lines()
            .filter(|l| l.contains("query[A] www.outside.example"))
            .count();
        assert_eq!(asked, 1, "dnsmasq saw:\n{text}");
        Ok(())
    })();
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    result
}

/// Three nodes on etcd: a Service created through node 0 is answered by
/// every node's own DNS (measured: created -> resolvable on each other
/// node), and a pod on node 1 gets a headless Service's pods on nodes 0
/// and 2.
#[test]
fn every_node_answers_new_services_and_headless_pods_across_nodes() -> Result<()> {
    use knode_tests::cluster::Cluster;
    let Some(c) = Cluster::for_test(
        "every_node_answers_new_services_and_headless_pods_across_nodes",
        3,
    ) else {
        return Ok(());
    };
    let lookup_on = |i: usize, name: &str| -> Result<String> {
        let out = c
            .ns(i)
            .cmd(&["nslookup", name, CLUSTER_DNS])
            .output()
            .context("nslookup on a node")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut latencies = Vec::new();
    for k in 0..3 {
        c.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: fresh{k}}}\nspec:\n  ports: [{{port: 80}}]\n"
        ))?;
        let created = Instant::now();
        let svc = c.get("service", &format!("fresh{k}"))?.context("created")?;
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .context("a ClusterIP")?
            .to_string();
        let name = format!("fresh{k}.default.svc.cluster.local");
        for i in 1..3 {
            while !answered(&lookup_on(i, &name)?, &ip) {
                assert!(
                    created.elapsed() < Duration::from_secs(10),
                    "node {i} never answered {name}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies.push(created.elapsed());
        }
    }
    latencies.sort();
    eprintln!("service created on node 0 -> resolvable on nodes 1, 2 (incl. one `knode get`): {latencies:?}");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_secs(1),
        "{latencies:?}"
    );

    let pod = |name: &str, node: &str, app: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '600']}}\n"
        )
    };
    c.apply(
        &[
            pod("peer-a", "node-0", "peer"),
            pod("peer-b", "node-2", "peer"),
            pod("asker", "node-1", "asker"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: peers}\nspec:\n  clusterIP: None\n  selector: {app: peer}\n  ports: [{port: 80}]\n".to_string(),
        ]
        .join("---\n"),
    )?;
    let a = pod_ip(&c.wait_running("peer-a")?);
    let b = pod_ip(&c.wait_running("peer-b")?);
    c.wait_running("asker")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.nodes[1].knode(&[
            "exec",
            "asker",
            "--",
            "sh",
            "-c",
            "nslookup peers 2>&1; true",
        ])?;
        if answered(&out, &a) && answered(&out, &b) {
            break;
        }
        assert!(Instant::now() < deadline, "peers from node 1:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
