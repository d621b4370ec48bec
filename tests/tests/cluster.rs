//! Three nodes, each a namespace with its own `knode agent` on etcd (pods,
//! overlay and proxy all on), one shared containerd: busybox httpd pods on
//! every node behind a Service, reached through the ClusterIP from a pod
//! and through the NodePort from outside the cluster, across an agent
//! kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::cluster::{http_get, Cluster};
use netns_tests::cluster::INTERNET_GW;
use serde_json::{json, Value};

const NODES: usize = 3;

/// A web pod pinned to `node`: `/` answers its name, `/cgi-bin/ip` its
/// name and the client address it saw.
fn web_pod(name: &str, node: &str, app: &str) -> Value {
    let script = "mkdir -p /www/cgi-bin && hostname > /www/index.html && \
        printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/ip && \
        chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www";
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "web",
            "image": knode_tests::image::BUSYBOX,
            "command": ["sh", "-c", script]}]}})
}

fn service(name: &str, app: &str, external_local: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": app},
            "externalTrafficPolicy": if external_local { "Local" } else { "Cluster" },
            "ports": [{"port": 80, "targetPort": 8080}]}})
}

fn apply(c: &Cluster, objs: &[Value]) -> Result<()> {
    let docs: Vec<String> = objs.iter().map(Value::to_string).collect();
    c.apply(&docs.join("\n---\n"))
}

/// (ClusterIP, NodePort) of service `name`.
fn addresses(c: &Cluster, name: &str) -> Result<(String, u64)> {
    let s = c.get("service", name)?.context("the service exists")?;
    let ip = s["spec"]["clusterIP"]
        .as_str()
        .context("a ClusterIP")?
        .to_string();
    let port = s["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("a nodePort")?;
    Ok((ip, port))
}

/// `GET /` from inside pod `pod` on node 0 to `addr` (`ip:port`), with
/// busybox nc (its static wget crashes inside a container without NSS
/// files): the response body, or an error with nc's message.
fn from_pod(c: &Cluster, pod: &str, addr: &str) -> Result<String> {
    let (ip, port) = addr.rsplit_once(':').context("ip:port")?;
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    let reply = c.nodes[0].knode(&["exec", pod, "--", "sh", "-c", &cmd])?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => bail!("GET http://{addr}/ from {pod}: {reply:?}"),
    }
}

/// Asks `ask` until every name in `want` answered; fails after 40 tries
/// with what did answer.
fn until_all_answer(
    want: &BTreeSet<String>,
    mut ask: impl FnMut() -> Result<String>,
) -> Result<()> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut errors = Vec::new();
    for _ in 0..40 {
        match ask() {
            Ok(body) => *seen.entry(body.trim().to_string()).or_default() += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
        if want.iter().all(|w| seen.contains_key(w)) {
            return Ok(());
        }
    }
    bail!("wanted answers from {want:?}; got {seen:?}; errors: {errors:?}")
}

#[test]
fn a_service_over_three_nodes_answers_by_cluster_ip_and_node_port_across_an_agent_kill(
) -> Result<()> {
    let Some(mut c) = Cluster::for_test(
        "a_service_over_three_nodes_answers_by_cluster_ip_and_node_port_across_an_agent_kill",
        NODES,
    ) else {
        return Ok(());
    };
    let names: Vec<String> = (0..NODES).map(|i| format!("web-{i}")).collect();
    let mut objs: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| web_pod(n, &format!("node-{i}"), "web"))
        .collect();
    objs.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {"nodeName": "node-0", "containers": [{"name": "c",
            "image": knode_tests::image::BUSYBOX, "command": ["sleep", "3600"]}]}}));
    objs.push(service("web", "web", false));
    // A persistent TCP echo server on node 1, for a connection that must
    // outlive that node's agent.
    objs.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo", "labels": {"app": "echo"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c",
            "image": knode_tests::image::BUSYBOX,
            "command": ["nc", "-ll", "-p", "9000", "-e", "cat"]}]}}));
    objs.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"},
            "ports": [{"port": 9000, "targetPort": 9000}]}}));
    apply(&c, &objs)?;
    let mut ips = BTreeMap::new();
    for n in names
        .iter()
        .chain([&"client".to_string(), &"echo".to_string()])
    {
        let p = c.wait_running(n)?;
        ips.insert(
            n.clone(),
            p["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let (vip, node_port) = addresses(&c, "web")?;
    let want: BTreeSet<String> = names.iter().cloned().collect();

    // ClusterIP from a pod on node 0: all three backends, two of them
    // across the overlay.
    if let Err(e) = until_all_answer(&want, || from_pod(&c, "client", &format!("{vip}:80"))) {
        let mut d = vec![];
        for (n, ip) in &ips {
            d.push(format!(
                "{n}: {:?}",
                from_pod(&c, "client", &format!("{ip}:8080"))
            ));
        }
        d.push(c.ns(0).sh(&["iptables-save"]).unwrap_or_default());
        d.push(
            c.ns(0)
                .sh(&[
                    "sysctl",
                    "net.bridge.bridge-nf-call-iptables",
                    "net.ipv4.ip_forward",
                ])
                .unwrap_or_default(),
        );
        return Err(e.context(format!(
            "ClusterIP {vip} from the client pod; pods {ips:?}\n{}\n{}",
            d.join("\n"),
            c.logs()
        )));
    }

    // NodePort from outside the cluster, on every node's address.
    let outside = c.net.internet().path().to_path_buf();
    let mut by_node = Vec::new();
    for i in 0..NODES {
        let url = format!("http://{}:{node_port}/", c.node_ip(i));
        until_all_answer(&want, || http_get(&outside, &url))
            .with_context(|| format!("NodePort {url} from outside\n{}", c.logs()))?;
        by_node.push(url);
    }

    // 300 new connections to the ClusterIP from node 0 spread over the
    // three backends: Binomial(300, 1/3) has mean 100 and sd 8.2; fewer
    // than 60 for one backend (4.9 sd) has probability below 1e-6.
    let url = format!("http://{vip}/");
    let mut argv = vec!["curl", "-sS", "--max-time", "3", "-H", "Connection: close"];
    argv.extend(std::iter::repeat_n(url.as_str(), 300));
    let bodies = c.ns(0).sh(&argv)?;
    let mut spread = BTreeMap::<&str, usize>::new();
    for line in bodies.lines() {
        *spread.entry(line.trim()).or_default() += 1;
    }
    assert_eq!(spread.values().sum::<usize>(), 300, "{spread:?}");
    assert!(
        want.iter()
            .all(|w| spread.get(w.as_str()).is_some_and(|n| *n >= 60)),
        "300 requests spread {spread:?}"
    );
    eprintln!("300 requests through the ClusterIP: {spread:?}");

    // Hairpin: a backend reaches itself through its own Service.
    let hairpin = BTreeSet::from(["web-0".to_string()]);
    until_all_answer(&hairpin, || from_pod(&c, "web-0", &format!("{vip}:80")))
        .context("web-0 through its own service")?;

    // kill -9 the agent of node 1 and start it again: its pod keeps
    // running (same task PIDs, no restart), and the service keeps
    // answering through node 1's NodePort the whole time.
    let pids = c.containerd.task_pids(c.nodes[1].namespace())?;
    let (_, echo_port) = addresses(&c, "echo")?;
    let echo_addr: std::net::SocketAddr = format!("{}:{echo_port}", c.node_ip(1)).parse()?;
    let mut conn = c
        .net
        .internet()
        .run(|| std::net::TcpStream::connect_timeout(&echo_addr, Duration::from_secs(3)))??;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut echo = |word: &str| -> Result<String> {
        use std::io::{BufRead, Write};
        conn.write_all(format!("{word}\n").as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(&conn).read_line(&mut line)?;
        Ok(line.trim().to_string())
    };
    assert_eq!(echo("before")?, "before");
    c.nodes[1].agent.kill9()?;
    let down = Instant::now();
    let mut failures = Vec::new();
    let url = &by_node[1];
    while down.elapsed() < Duration::from_secs(2) {
        if let Err(e) = http_get(&outside, url) {
            failures.push(format!("{e:#}"));
        }
    }
    c.nodes[1].agent.restart()?;
    let up = Instant::now();
    while up.elapsed() < Duration::from_secs(5) {
        if let Err(e) = http_get(&outside, url) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "NodePort on node 1 failed across the agent restart: {failures:?}"
    );
    assert_eq!(
        echo("after")?,
        "after",
        "a connection established before the agent's kill"
    );
    let p = c.wait_running("web-1")?;
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p}"
    );
    assert_eq!(
        c.containerd.task_pids(c.nodes[1].namespace())?,
        pids,
        "same containers, same PIDs after the restart"
    );
    until_all_answer(&want, || from_pod(&c, "client", &format!("{vip}:80")))
        .context("ClusterIP after the agent restart")?;
    Ok(())
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip_and_uses_only_local_endpoints() -> Result<()> {
    let Some(c) = Cluster::for_test(
        "external_traffic_policy_local_keeps_the_client_ip_and_uses_only_local_endpoints",
        2,
    ) else {
        return Ok(());
    };
    apply(
        &c,
        &[
            web_pod("local-0", "node-0", "local"),
            web_pod("local-1", "node-1", "local"),
            service("local", "local", true),
        ],
    )?;
    c.wait_running("local-0")?;
    c.wait_running("local-1")?;
    let (_, node_port) = addresses(&c, "local")?;
    let outside = c.net.internet().path().to_path_buf();
    for i in 0..2 {
        let url = format!("http://{}:{node_port}/cgi-bin/ip", c.node_ip(i));
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            match http_get(&outside, &url) {
                Ok(a) => break a,
                Err(e) if Instant::now() > deadline => {
                    let nat = c
                        .ns(i)
                        .sh(&["iptables-save", "-t", "nat"])
                        .unwrap_or_default();
                    return Err(e.context(format!("NodePort {url}\n{nat}\n{}", c.logs())));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        // Every answer comes from the node's own pod, which sees the
        // outside client's own address (the internet namespace's
        // underlay address), not the node's.
        for _ in 0..10 {
            let a = http_get(&outside, &url)?;
            let words: Vec<&str> = a.split_whitespace().collect();
            assert_eq!(
                words.first(),
                Some(&format!("local-{i}").as_str()),
                "{url}: {a}"
            );
            // busybox httpd listens on IPv6 and shows v4 clients mapped.
            let client = words
                .get(1)
                .map(|w| w.trim_start_matches("[::ffff:").trim_end_matches(']'));
            assert_eq!(client, Some(INTERNET_GW), "{url}: the backend saw {a}");
        }
        eprintln!("{url}: {}", answer.trim());
    }
    Ok(())
}

#[test]
fn a_lost_node_leaves_the_service_within_its_lease() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(4);
    let Some(mut c) = Cluster::for_test_with(
        "a_lost_node_leaves_the_service_within_its_lease",
        2,
        // The controller manager (whose EndpointSlice controller marks a
        // lost node's endpoints) may run on the node that is lost: its
        // Lease is as short, so the other agent takes over in time.
        &[
            "--node-lease-duration",
            "4s",
            "--leader-elect-lease-duration",
            "4s",
        ],
    ) else {
        return Ok(());
    };
    apply(
        &c,
        &[
            web_pod("lost-0", "node-0", "lost"),
            web_pod("lost-1", "node-1", "lost"),
            service("lost", "lost", false),
        ],
    )?;
    c.wait_running("lost-0")?;
    c.wait_running("lost-1")?;
    let (_, node_port) = addresses(&c, "lost")?;
    let outside = c.net.internet().path().to_path_buf();
    let url = format!("http://{}:{node_port}/", c.node_ip(0));
    let both = BTreeSet::from(["lost-0".to_string(), "lost-1".to_string()]);
    until_all_answer(&both, || http_get(&outside, &url))
        .with_context(|| format!("NodePort {url} before the loss\n{}", c.logs()))?;

    // Node 1 goes away: its agent dies and it drops off the underlay.
    c.nodes[1].agent.kill9()?;
    c.net.remove_node(1)?;
    let lost = Instant::now();
    // Within the lease (plus a takeover and a sync), node 0 answers from
    // its own pod only.
    let deadline = lost + LEASE + Duration::from_secs(8);
    let mut streak = 0;
    while streak < 20 {
        assert!(
            Instant::now() < deadline,
            "node-1's endpoint still used {:?} after the loss\n{}",
            lost.elapsed(),
            c.logs()
        );
        match http_get(&outside, &url) {
            Ok(body) if body.trim() == "lost-0" => streak += 1,
            _ => streak = 0,
        }
    }
    eprintln!(
        "node-1's endpoint left the service within {:?}",
        lost.elapsed()
    );
    Ok(())
}

#[test]
fn agent_cleanup_removes_what_knode_made_on_the_node() -> Result<()> {
    let Some(mut c) = Cluster::for_test("agent_cleanup_removes_what_knode_made_on_the_node", 1)
    else {
        return Ok(());
    };
    let mut pod = web_pod("clean-0", "node-0", "clean");
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080, "hostPort": 18080}]);
    apply(&c, &[pod, service("clean", "clean", false)])?;
    c.wait_running("clean-0")?;
    let ns = c.net.node(0);
    let saved = || ns.sh(&["iptables-save"]).unwrap_or_default();
    // nftables mode (the default): the ClusterIP is an element of the
    // proxy's table.
    let vip = c
        .get("service", "clean")?
        .and_then(|s| s["spec"]["clusterIP"].as_str().map(str::to_string))
        .context("the service has a ClusterIP")?;
    let proxy_table = || {
        ns.sh(&["nft", "list", "table", "ip", "kube-proxy"])
            .unwrap_or_default()
    };
    assert!(
        wait_for(|| proxy_table().contains(&vip)),
        "the proxy programmed the service: {}",
        proxy_table()
    );
    assert!(ns.sh(&["ip", "link", "show", "knode.1"]).is_ok());
    assert!(ns.sh(&["nft", "list", "table", "ip", "knode-dns"]).is_ok());
    assert!(ns
        .sh(&["nft", "list", "table", "ip", "knode-hostport"])
        .is_ok());

    for round in 0..2 {
        let out = c.nodes[0].agent.cleanup()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "cleanup round {round}: {text}");
        eprintln!("cleanup round {round}:\n{text}");
    }
    // Cluster DNS: its table and its addresses on lo are gone.
    let tables = ns.sh(&["nft", "list", "tables"])?;
    assert!(!tables.contains("knode-dns"), "{tables}");
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(!tables.contains("knode-hostport"), "{tables}");
    let lo = ns.sh(&["ip", "-4", "addr", "show", "dev", "lo"])?;
    assert!(
        !lo.contains("10.96.0.10/32") && !lo.contains("169.254.20.10/32"),
        "{lo}"
    );
    let links = ns.sh(&["ip", "-o", "link", "show"])?;
    assert!(
        !links.contains("knode.1") && !links.contains("cni0") && !links.contains("veth"),
        "{links}"
    );
    let rules = saved();
    assert!(
        !rules.contains("KUBE-") && !rules.contains("KNODE-"),
        "{rules}"
    );
    assert_eq!(
        c.containerd
            .ids(c.nodes[0].namespace(), &["containers", "ls", "-q"])?,
        Vec::<String>::new()
    );
    let left = |rel: &str| -> Vec<String> {
        std::fs::read_dir(c.path(0, rel))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok() || n.starts_with("knode-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(left("netns"), Vec::<String>::new(), "pinned netns left");
    assert_eq!(
        left("ipam/knode"),
        Vec::<String>::new(),
        "IPs still reserved"
    );
    assert!(!c.nodes[0].agent.dir().join("subnet.env").exists());
    // The harness's conflist carries a dataDir: an operator's, kept.
    assert!(c.path(0, "cni-conf/10-knode.conflist").exists());
    Ok(())
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    netns_tests::cluster::wait_until(Duration::from_secs(20), &mut f)
}

/// The pods labelled `app=<app>` that run and are not being deleted, by
/// node.
fn running_by_node(c: &Cluster, app: &str) -> Result<BTreeMap<String, usize>> {
    let out = c.nodes[0].agent.knode(&["get", "pods", "-o", "json"])?;
    if !out.status.success() {
        bail!("get pods: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut by_node = BTreeMap::new();
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(by_node);
    }
    let list: Value = serde_json::from_slice(&out.stdout)?;
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        let running = p["metadata"]["labels"]["app"] == app
            && p["status"]["phase"] == "Running"
            && p["metadata"]["deletionTimestamp"].is_null()
            && p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true));
        if running {
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            *by_node.entry(node.to_string()).or_default() += 1;
        }
    }
    Ok(by_node)
}

#[test]
fn a_lost_nodes_pods_are_recreated_elsewhere_after_their_toleration() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(4);
    const TOLERATION: u64 = 2;
    let Some(mut c) = Cluster::for_test_with(
        "a_lost_nodes_pods_are_recreated_elsewhere_after_their_toleration",
        NODES,
        &[
            "--node-lease-duration",
            "4s",
            "--leader-elect-lease-duration",
            "4s",
        ],
    ) else {
        return Ok(());
    };
    let mut pod = web_pod("unused", "", "fo");
    let spec = pod["spec"].as_object_mut().context("spec")?;
    spec.remove("nodeName");
    spec.insert(
        "tolerations".into(),
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": TOLERATION}]),
    );
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "fo"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "fo"}},
                 "template": {"metadata": {"labels": {"app": "fo"}}, "spec": pod["spec"]}}});
    apply(&c, &[deployment, service("fo", "fo", false)])?;
    // The scheduler spreads the three over the three nodes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let placed = running_by_node(&c, "fo")?;
        if placed.len() == NODES && placed.values().all(|n| *n == 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not spread 1/1/1: {placed:?}\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // Node 2 goes away; within its lease, the controllers' takeover (when
    // it led them), the toleration and a pod start, its pod runs again on
    // node 0 or 1, and the Service answers from the three.
    c.nodes[2].agent.kill9()?;
    c.net.remove_node(2)?;
    let lost = Instant::now();
    let deadline = lost + 2 * LEASE + Duration::from_secs(TOLERATION + 60);
    loop {
        let placed = running_by_node(&c, "fo")?;
        if !placed.contains_key("node-2") && placed.values().sum::<usize>() == 3 {
            eprintln!("recreated after {:?}: {placed:?}", lost.elapsed());
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not recreated after {:?}: {placed:?}\n{}",
                lost.elapsed(),
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let node = c
        .get("node", "node-2")?
        .context("node-2 stays registered")?;
    let taints = node["spec"]["taints"].to_string();
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    let (_, node_port) = addresses(&c, "fo")?;
    let outside = c.net.internet().path().to_path_buf();
    let url = format!("http://{}:{node_port}/", c.node_ip(0));
    let body = http_get(&outside, &url)?;
    assert!(body.trim().starts_with("fo-"), "{body}");
    Ok(())
}

#[test]
fn another_agent_takes_the_controllers_over_and_carries_out_a_scale() -> Result<()> {
    let Some(mut c) = Cluster::for_test_with(
        "another_agent_takes_the_controllers_over_and_carries_out_a_scale",
        NODES,
        &[
            "--node-lease-duration",
            "4s",
            "--leader-elect-lease-duration",
            "4s",
        ],
    ) else {
        return Ok(());
    };
    // Who leads the controllers.
    let holder = |c: &Cluster, via: usize| -> Result<String> {
        let lease: Value = serde_json::from_str(&c.nodes[via].knode(&[
            "get",
            "lease",
            "knode-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "json",
        ])?)?;
        Ok(lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        match holder(&c, 0) {
            Ok(h) if !h.is_empty() => break h,
            _ if Instant::now() > deadline => bail!("no controller leader\n{}", c.logs()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let dead: usize = leader.trim_start_matches("node-").parse()?;
    let via = (dead + 1) % NODES;
    let mut pod = web_pod("unused", "", "to");
    let spec = pod["spec"].as_object_mut().context("spec")?;
    spec.remove("nodeName");
    // Should the first pod run on the leader's node, it leaves it soon.
    spec.insert(
        "tolerations".into(),
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 2}]),
    );
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "to"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "to"}},
                 "template": {"metadata": {"labels": {"app": "to"}}, "spec": pod["spec"]}}});
    c.nodes[via].knode_stdin(&["apply", "-f", "-"], Some(&deployment.to_string()))?;

    // The leader dies; right after, the Deployment is scaled to 3 through
    // another agent. Within the lease another agent leads, and the three
    // pods run on the two live nodes.
    c.nodes[dead].agent.kill9()?;
    c.net.remove_node(dead)?;
    let killed = Instant::now();
    c.nodes[via].knode(&["scale", "deployment/to", "--replicas=3"])?;
    let deadline = killed + Duration::from_secs(120);
    let placed = loop {
        let out = c.nodes[via].agent.knode(&["get", "pods", "-o", "json"])?;
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut on: BTreeMap<String, usize> = BTreeMap::new();
        for p in list["items"].as_array().cloned().unwrap_or_default() {
            let running = p["metadata"]["labels"]["app"] == "to"
                && p["status"]["phase"] == "Running"
                && p["metadata"]["deletionTimestamp"].is_null();
            if running {
                let node = p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                *on.entry(node).or_default() += 1;
            }
        }
        if !on.contains_key(&leader) && on.values().sum::<usize>() >= 3 {
            break on;
        }
        if Instant::now() > deadline {
            bail!(
                "scale not carried out after {:?}: {on:?}\n{}",
                killed.elapsed(),
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let now_leads = holder(&c, via)?;
    assert_ne!(now_leads, leader, "the Lease moved");
    eprintln!(
        "{leader} killed; {now_leads} leads; scaled to 3 in {:?}: {placed:?}",
        killed.elapsed()
    );
    Ok(())
}

/// Waits (120 s) until `app`'s running pods are placed as `want`.
fn wait_placed(c: &Cluster, app: &str, want: &BTreeMap<String, usize>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let placed = running_by_node(c, app)?;
        if &placed == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{app}: {placed:?}, want {want:?}\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn per_node(nodes: usize, each: usize) -> BTreeMap<String, usize> {
    (0..nodes).map(|i| (format!("node-{i}"), each)).collect()
}

#[test]
fn a_deployment_lands_two_per_node_and_a_daemon_set_follows_a_node_that_joins() -> Result<()> {
    let Some(mut c) = Cluster::for_test(
        "a_deployment_lands_two_per_node_and_a_daemon_set_follows_a_node_that_joins",
        NODES,
    ) else {
        return Ok(());
    };
    let template = |app: &str| {
        let mut pod = web_pod("unused", "", app);
        pod["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("nodeName");
        json!({"metadata": {"labels": {"app": app}}, "spec": pod["spec"]})
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "six"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "six"}},
                 "template": template("six")}});
    let daemon_set = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "every"},
        "spec": {"selector": {"matchLabels": {"app": "every"}},
                 "template": template("every")}});
    apply(&c, &[deployment, daemon_set])?;
    // The scheduler spreads one owner's pods: 2/2/2 on three equal nodes.
    wait_placed(&c, "six", &per_node(NODES, 2))?;
    wait_placed(&c, "every", &per_node(NODES, 1))?;

    // A fourth node joins: it gets the DaemonSet's pod, and the
    // Deployment's pods stay where they run.
    let added = c.add_node()?;
    assert_eq!(added, NODES);
    wait_placed(&c, "every", &per_node(NODES + 1, 1))?;
    assert_eq!(running_by_node(&c, "six")?, per_node(NODES, 2));
    let desired = |c: &Cluster| {
        c.get("daemonset", "every")
            .ok()
            .flatten()
            .map(|d| d["status"]["desiredNumberScheduled"].clone())
    };
    assert!(
        wait_for(|| desired(&c) == Some(json!(4))),
        "desiredNumberScheduled {:?}",
        desired(&c)
    );
    Ok(())
}

/// The rolling Deployment of the zero-downtime check: httpd answering its
/// pod's name, ready when it answers, a preStop pause so every node's
/// proxy drops a terminating pod before it stops serving (as kube users
/// do), one surge and no unavailable pod.
fn rolling_deployment(version: &str) -> Value {
    let mut pod = web_pod("unused", "", "roll");
    let spec = pod["spec"].as_object_mut().expect("spec");
    spec.remove("nodeName");
    spec.insert("terminationGracePeriodSeconds".into(), json!(15));
    let c = &mut pod["spec"]["containers"][0];
    c["env"] = json!([{"name": "VERSION", "value": version}]);
    c["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1});
    c["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "3"]}}});
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "roll"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "roll"}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": {"app": "roll"}}, "spec": pod["spec"]}}})
}

#[test]
fn a_rolling_update_behind_a_service_fails_no_request() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(c) = Cluster::for_test("a_rolling_update_behind_a_service_fails_no_request", NODES)
    else {
        return Ok(());
    };
    apply(
        &c,
        &[rolling_deployment("v1"), service("roll", "roll", false)],
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running_by_node(&c, "roll")?.values().sum::<usize>() < 3 {
        if Instant::now() > deadline {
            bail!(
                "3 ready pods: {:?}\n{}",
                running_by_node(&c, "roll")?,
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let old: BTreeSet<String> = pod_names(&c, "roll")?;
    let (_, node_port) = addresses(&c, "roll")?;
    let url = format!("http://{}:{node_port}/", c.node_ip(0));
    let outside = c.net.internet().path().to_path_buf();
    // Every answer must come: the client asks in a loop from outside the
    // cluster, through node 0's NodePort, all through the rollout.
    until_all_answer(&old, || http_get(&outside, &url))?;
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, url, outside) = (stop.clone(), url.clone(), outside.clone());
        std::thread::spawn(move || {
            let (mut answers, mut failures) = (BTreeMap::<String, usize>::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match http_get(&outside, &url) {
                    Ok(body) => *answers.entry(body.trim().to_string()).or_default() += 1,
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            (answers, failures)
        })
    };
    let rolled = Instant::now();
    apply(&c, &[rolling_deployment("v2")])?;
    let status = c.nodes[0].knode(&["rollout", "status", "deployment/roll", "--timeout=300s"]);
    // The old pods are gone from the Service once their deletion is seen;
    // a few more requests reach only new pods.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pod_names(&c, "roll")?.is_disjoint(&old) {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = client.join().expect("the client thread");
    let status = status?;
    assert!(status.contains("successfully rolled out"), "{status}");
    let new = pod_names(&c, "roll")?;
    assert!(new.is_disjoint(&old), "old {old:?}, now {new:?}");
    let total: usize = answers.values().sum();
    eprintln!(
        "rolled in {:?}: {total} answers, {} failures: {answers:?}",
        rolled.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        total + failures.len()
    );
    assert!(
        new.iter().any(|n| answers.contains_key(n)) && old.iter().any(|n| answers.contains_key(n)),
        "answers from the old and the new pods: {answers:?} (old {old:?}, new {new:?})"
    );
    Ok(())
}

/// The names of `app`'s pods (any phase, being deleted or not).
fn pod_names(c: &Cluster, app: &str) -> Result<BTreeSet<String>> {
    let out = c.nodes[0].agent.knode(&["get", "pods", "-o", "json"])?;
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeSet::new());
    }
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}
