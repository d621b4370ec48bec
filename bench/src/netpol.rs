//! NetworkPolicy programming time (`bench netpol`): 1,000 policies over
//! 10,000 pods of one node (100 namespaces x 100 pods, 10 apps each), in
//! a fresh namespace: the full sync (engine state from nothing, then the
//! one transaction that builds table `ip knode-policy`), one pod created
//! (compute + element-only transaction), one pod relabelled, and one
//! policy replaced. Medians, p99 to stdout and `netpol.json`. There is no
//! reference tool on the machine to run beside it (kube-router and Calico
//! are not packaged); the goals are the yardstick.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hostnet::nftables::NfTablesSocket;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netns_tests::TestNs;
use netpol::{Engine, NodeConfig};
use serde_json::{json, Value};

use crate::report::{host_facts, with_targets, write_file};
use crate::stats::{round3, Summary};
use crate::Opts;

const NODE: &str = "bench-node";
const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const APPS_PER_NAMESPACE: usize = 10;
const POLICIES_PER_NAMESPACE: usize = 10;
const FULL_REPS: usize = 3;
const CHANGE_REPS: usize = 50;

fn ns_name(n: usize) -> String {
    format!("ns-{n}")
}

/// Pod `i` of namespace `n`: app `i % 10`, a named port `http`.
fn pod(n: usize, i: usize, app: usize) -> Pod {
    // Room for 200 pods per namespace: the created ones come after 100.
    let k = n * 200 + i;
    let ip = format!("10.128.{}.{}", k / 250, k % 250 + 2);
    serde_json::from_value(json!({
        "metadata": {"namespace": ns_name(n), "name": format!("p-{i}"), "uid": format!("u-{k}"),
                     "labels": {"app": format!("app-{app}"), "tier": format!("t-{}", i % 3)}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": ip, "phase": "Running"},
    }))
    .expect("pod JSON")
}

/// Policy `p` of namespace `n`, one of four shapes: by pod label on a
/// port; by namespace and pod label on a port range; ipBlock with except
/// on a named port; egress by pod label on UDP 53 plus ingress.
fn policy(n: usize, p: usize, variant: usize) -> NetworkPolicy {
    let app = |k: usize| format!("app-{}", k % APPS_PER_NAMESPACE);
    let sel = json!({"matchLabels": {"app": app(p)}});
    let spec = match (p + variant) % 4 {
        0 => json!({"podSelector": sel, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": app(p + 1)}}}],
            "ports": [{"protocol": "TCP", "port": 80}]}]}),
        1 => json!({"podSelector": sel, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", n % 10)}},
                      "podSelector": {"matchLabels": {"app": app(p + 2)}}}],
            "ports": [{"protocol": "TCP", "port": 8080, "endPort": 8090}]}]}),
        2 => json!({"podSelector": sel, "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": "http"}]}]}),
        _ => json!({"podSelector": sel, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "t-0"}}}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": app(p + 3)}}}],
                        "ports": [{"protocol": "UDP", "port": 53}]}]}),
    };
    serde_json::from_value(json!({
        "metadata": {"namespace": ns_name(n), "name": format!("np-{p}")},
        "spec": spec,
    }))
    .expect("policy JSON")
}

/// An engine in `ns` holding the whole scenario; returns how long the
/// state took to compute.
fn engine_in(ns: &TestNs) -> Result<(Engine, Duration)> {
    ns.run(|| -> Result<(Engine, Duration)> {
        let nft = NfTablesSocket::open()?;
        let node = NodeConfig {
            node_name: NODE.into(),
            family: netpol::IpFamily::V4,
            guard_cidr: Some("10.128.0.0/16".parse()?),
        };
        let mut e = Engine::new(Arc::new(nft), node);
        let start = Instant::now();
        for n in 0..NAMESPACES {
            let labels = [("team".to_string(), format!("team-{}", n % 10))].into();
            e.set_namespace(&ns_name(n), Some(labels));
            for i in 0..PODS_PER_NAMESPACE {
                let p = pod(n, i, i % APPS_PER_NAMESPACE);
                e.set_pod((ns_name(n), format!("p-{i}")), Some(&p));
            }
        }
        for n in 0..NAMESPACES {
            for p in 0..POLICIES_PER_NAMESPACE {
                e.set_policy((ns_name(n), format!("np-{p}")), Some(&policy(n, p, 0)));
            }
        }
        Ok((e, start.elapsed()))
    })?
}

/// Runs `change` then a sync in `ns`; the whole time and the sync's.
fn timed(
    ns: &TestNs,
    e: &mut Engine,
    change: impl FnOnce(&mut Engine) + Send,
) -> Result<(Duration, netpol::SyncOutcome)> {
    ns.run(|| -> Result<_> {
        let start = Instant::now();
        change(e);
        let o = e.sync().map_err(|err| anyhow!("sync: {err}"))?;
        Ok((start.elapsed(), o))
    })?
}

fn ms(s: &Option<Summary>) -> Value {
    match s {
        Some(s) => json!({"p50": round3(s.p50), "p99": round3(s.p99), "n": s.n}),
        None => Value::Null,
    }
}

/// Runs the benchmark and writes `netpol.json`.
pub fn run(opts: &Opts) -> Result<()> {
    let mut compute = Vec::new();
    let mut full = Vec::new();
    let mut elements = 0;
    for rep in 0..FULL_REPS {
        let ns = TestNs::new("bnp")?;
        let (mut e, c) = engine_in(&ns)?;
        let (t, o) = timed(&ns, &mut e, |_| {})?;
        eprintln!(
            "netpol: full rep {rep}: state {c:?}, sync {t:?} (transaction {:?}), {} elements",
            o.apply, o.elements
        );
        compute.push(c);
        full.push(c + t);
        elements = o.elements;
    }

    // Changes against one programmed table.
    let ns = TestNs::new("bnp")?;
    let (mut e, _) = engine_in(&ns)?;
    timed(&ns, &mut e, |_| {})?;
    let (mut created, mut relabelled, mut replaced) = (Vec::new(), Vec::new(), Vec::new());
    let mut element_only = true;
    for rep in 0..CHANGE_REPS {
        let n = (rep * 37) % NAMESPACES;
        let new = pod(n, PODS_PER_NAMESPACE + rep, rep % APPS_PER_NAMESPACE);
        let key = (ns_name(n), format!("p-{}", PODS_PER_NAMESPACE + rep));
        let (t, o) = timed(&ns, &mut e, |e| e.set_pod(key, Some(&new)))?;
        element_only &= o.policies_added == 0 && !o.full;
        created.push(t);
        let i = (rep * 13) % PODS_PER_NAMESPACE;
        let moved = pod(n, i, (i + 1 + rep) % APPS_PER_NAMESPACE);
        let key = (ns_name(n), format!("p-{i}"));
        let (t, o) = timed(&ns, &mut e, |e| e.set_pod(key, Some(&moved)))?;
        element_only &= o.policies_added == 0 && !o.full;
        relabelled.push(t);
        let p = rep % POLICIES_PER_NAMESPACE;
        let np = policy(n, p, rep + 1);
        let key = (ns_name(n), format!("np-{p}"));
        replaced.push(timed(&ns, &mut e, |e| e.set_policy(key, Some(&np)))?.0);
    }

    let full_s = Summary::of(&full);
    let compute_s = Summary::of(&compute);
    let (created_s, relabelled_s, replaced_s) = (
        Summary::of(&created),
        Summary::of(&relabelled),
        Summary::of(&replaced),
    );
    let mut table = String::from("what                         p50        p99\n");
    for (what, s) in [
        ("full sync (state + apply)", &full_s),
        ("  of which state", &compute_s),
        ("one pod created", &created_s),
        ("one pod relabelled", &relabelled_s),
        ("one policy replaced", &replaced_s),
    ] {
        if let Some(s) = s {
            table.push_str(&format!("{what:<28} {:>8.2}ms {:>8.2}ms\n", s.p50, s.p99));
        }
    }
    table.push_str(&format!(
        "{} policies, {} pods, {elements} set elements; pod changes element-only: {element_only}\n",
        NAMESPACES * POLICIES_PER_NAMESPACE,
        NAMESPACES * PODS_PER_NAMESPACE
    ));
    print!("{table}");
    let target = |what: &str, s: &Option<Summary>, goal: f64| {
        let p50 = s.map(|s| s.p50);
        json!({"what": what, "goal_ms": goal, "p50_ms": p50.map(round3),
               "met": p50.is_some_and(|v| v <= goal)})
    };
    let mut doc = host_facts();
    doc["scenario"] = json!({
        "policies": NAMESPACES * POLICIES_PER_NAMESPACE,
        "pods": NAMESPACES * PODS_PER_NAMESPACE,
        "namespaces": NAMESPACES,
        "set_elements": elements,
        "pod_changes_element_only": element_only,
    });
    doc["results"] = json!({
        "full_ms": ms(&full_s),
        "full_state_ms": ms(&compute_s),
        "pod_created_ms": ms(&created_s),
        "pod_relabelled_ms": ms(&relabelled_s),
        "policy_replaced_ms": ms(&replaced_s),
    });
    let doc = with_targets(
        doc,
        vec![
            target("full sync", &full_s, 1000.0),
            target("one pod created", &created_s, 5.0),
            target("one pod relabelled", &relabelled_s, 5.0),
        ],
    );
    write_file(
        &opts.out,
        "netpol.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}

/// Per-packet cost (`bench netpol-packet`): a client and a server pod on
/// either side of a node namespace (routed, through `forward`), 1,000
/// policies of which the server is selected only by the last of its
/// namespace's; TCP connect latency (first packet: every rule of the
/// path) and iperf3 throughput (established: the first rule), with the
/// table and without it, interleaved. Two layouts: all 1,000 policies in
/// the server's namespace (the worst case: a connection walks them all),
/// and 10 per namespace over 100 namespaces. Writes `netpol-packet.json`.
pub fn run_packet(opts: &Opts) -> Result<()> {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut table = String::from(
        "layout                      connect p50 with / without    iperf3 with / without\n",
    );
    for (layout, per_namespace) in [("1000 in one namespace", 1000), ("10 x 100 namespaces", 10)] {
        let r = packet_layout(per_namespace)?;
        table.push_str(&format!(
            "{layout:<27} {:>7.3} / {:>7.3} ms ({:+.0} %)  {:>6.0} / {:>6.0} Mbit/s ({:+.1} %)\n",
            r.connect_with.map_or(f64::NAN, |s| s.p50),
            r.connect_without.map_or(f64::NAN, |s| s.p50),
            r.connect_overhead(),
            r.bw_with,
            r.bw_without,
            r.bw_overhead()
        ));
        rows.push(json!({
            "layout": layout,
            "connect_ms_with": ms(&r.connect_with), "connect_ms_without": ms(&r.connect_without),
            "iperf_mbit_with": round3(r.bw_with), "iperf_mbit_without": round3(r.bw_without),
            "connect_overhead_pct": round3(r.connect_overhead()),
            "throughput_overhead_pct": round3(r.bw_overhead()),
        }));
        for (what, pct) in [
            ("connect p50", r.connect_overhead()),
            ("throughput", r.bw_overhead()),
        ] {
            targets.push(
                json!({"what": format!("{what} overhead, {layout}"), "goal_pct": 5.0,
                                "pct": round3(pct), "met": pct <= 5.0}),
            );
        }
    }
    print!("{table}");
    let mut doc = host_facts();
    doc["results"] = json!(rows);
    let doc = with_targets(doc, targets);
    write_file(
        &opts.out,
        "netpol-packet.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}

/// What one layout measured.
struct PacketResult {
    connect_with: Option<Summary>,
    connect_without: Option<Summary>,
    bw_with: f64,
    bw_without: f64,
}

impl PacketResult {
    fn connect_overhead(&self) -> f64 {
        match (&self.connect_with, &self.connect_without) {
            (Some(a), Some(b)) => (a.p50 / b.p50 - 1.0) * 100.0,
            _ => f64::NAN,
        }
    }

    fn bw_overhead(&self) -> f64 {
        (1.0 - self.bw_with / self.bw_without) * 100.0
    }
}

/// One layout: `per_namespace` policies in each namespace, 1,000 in all.
fn packet_layout(per_namespace: usize) -> Result<PacketResult> {
    let lab = PacketLab::new()?;
    let server_ip = "10.128.2.2";
    let listener = lab.server.run(|| TcpListener::bind((server_ip, 8080)))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut bw_with, mut bw_without) = (Vec::new(), Vec::new());
    let mut engine = lab.engine(per_namespace)?;
    for round in 0..PACKET_ROUNDS {
        for table in [true, false] {
            if table {
                timed(&lab.node, &mut engine, |e| e.force_full())?;
            } else {
                lab.node
                    .run(|| -> Result<bool> { Ok(netpol::cleanup(&NfTablesSocket::open()?)?) })??;
            }
            let samples = lab.connects(server_ip, CONNECTS)?;
            let bw = lab.iperf(server_ip)?;
            eprintln!(
                "netpol-packet: {per_namespace}/namespace round {round} table={table}: connect p50 {:?} ms, {bw:.0} Mbit/s",
                Summary::of(&samples).map(|s| s.p50)
            );
            if table {
                with.extend(samples);
                bw_with.push(bw);
            } else {
                without.extend(samples);
                bw_without.push(bw);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok(PacketResult {
        connect_with: Summary::of(&with),
        connect_without: Summary::of(&without),
        bw_with: median(&mut bw_with),
        bw_without: median(&mut bw_without),
    })
}

const PACKET_ROUNDS: usize = 5;
const CONNECTS: usize = 300;

/// A node namespace routing between a client and a server namespace.
struct PacketLab {
    node: TestNs,
    client: TestNs,
    server: TestNs,
}

impl PacketLab {
    fn new() -> Result<PacketLab> {
        let lab = PacketLab {
            node: TestNs::new("bnpn")?,
            client: TestNs::new("bnpc")?,
            server: TestNs::new("bnps")?,
        };
        lab.node.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Connection tracking is on in every node's namespace whatever the
        // policies (the proxy's NAT and the overlay's masquerade track
        // every connection), and a connection's first packet pays for its
        // entry: the reference tracks too, so the difference is the
        // policy table's own cost.
        lab.node.sh(&[
            "nft",
            "add table ip bench-conntrack; \
             add chain ip bench-conntrack forward { type filter hook forward priority -10; }; \
             add rule ip bench-conntrack forward ct state invalid drop",
        ])?;
        for (side, peer, net) in [("vc", &lab.client, 1), ("vs", &lab.server, 2)] {
            lab.node.plug(side, peer, &format!("10.128.{net}.2/24"))?;
            lab.node.sh(&[
                "ip",
                "addr",
                "add",
                &format!("10.128.{net}.1/24"),
                "dev",
                side,
            ])?;
            peer.sh(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.128.{net}.1"),
            ])?;
        }
        Ok(lab)
    }

    /// An engine in the node holding the two pods and 1,000 policies,
    /// `per_namespace` in each namespace; the server (namespace `s`) is
    /// selected only by the last of its namespace's.
    fn engine(&self, per_namespace: usize) -> Result<Engine> {
        self.node.run(|| -> Result<Engine> {
            let node = NodeConfig {
                node_name: NODE.into(),
                family: netpol::IpFamily::V4,
                guard_cidr: Some("10.128.0.0/16".parse()?),
            };
            let mut e = Engine::new(Arc::new(NfTablesSocket::open()?), node);
            for (ns, name, ip, app) in [
                ("c", "client", "10.128.1.2", "client"),
                ("s", "server", "10.128.2.2", "server"),
            ] {
                let labels = [("name".to_string(), ns.to_string())].into();
                e.set_namespace(ns, Some(labels));
                let p: Pod = serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": name, "uid": name, "labels": {"app": app}},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
                    "status": {"podIP": ip, "phase": "Running"},
                }))?;
                e.set_pod((ns.into(), name.into()), Some(&p));
            }
            for k in 0..1000 {
                // The server's namespace holds the last `per_namespace`.
                let ns = match (999 - k) / per_namespace {
                    0 => "s".to_string(),
                    g => format!("other-{g}"),
                };
                let (name, app) = if k == 999 {
                    ("zz-allow".to_string(), "server".to_string())
                } else {
                    (format!("np-{k:03}"), format!("other-{k}"))
                };
                let np: NetworkPolicy = serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": name},
                    "spec": {"podSelector": {"matchLabels": {"app": app}}, "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"name": "c"}}}],
                        "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 5201}]}]},
                }))?;
                e.set_policy((ns, name), Some(&np));
            }
            Ok(e)
        })?
    }

    /// `n` fresh connections from the client to `ip:8080`, each timed.
    fn connects(&self, ip: &str, n: usize) -> Result<Vec<Duration>> {
        let addr: std::net::SocketAddr = format!("{ip}:8080").parse()?;
        self.client.run(|| -> Result<Vec<Duration>> {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .with_context(|| format!("connect {addr}"))?;
                out.push(start.elapsed());
                drop(s);
            }
            Ok(out)
        })?
    }

    /// iperf3 from the client to `ip` for 3 s: Mbit/s received.
    fn iperf(&self, ip: &str) -> Result<f64> {
        let mut server = self
            .server
            .cmd(&["iperf3", "-s", "-B", ip])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut out = None;
        for _ in 0..50 {
            let o = self
                .client
                .cmd(&["iperf3", "-c", ip, "-t", "3", "-J"])
                .output()?;
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let bits = v["end"]["sum_received"]["bits_per_second"].as_f64();
            if o.status.success() && bits.is_some_and(|b| b > 0.0) {
                out = bits;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = server.kill();
        let _ = server.wait();
        Ok(out.context("iperf3 never completed a run")? / 1e6)
    }
}
