//! Memory at 10k Services x 5 endpoints: a fresh child process holding the
//! view and a [`proxy::Syncer`] after one full sync (the proxy's own state),
//! and a real `knode agent` filled through its socket with the Services and
//! their ready Pods, once with its proxy (read after it programmed every
//! chain) and once with the proxy disabled (the reference).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::rest::client::Client;
use controlplane::{ControlPlane, Kind, Object, Scope};
use hostnet::nftables::{NfTables, NfTablesSocket};
use netns_tests::agent::Agent;
use netns_tests::{TempDir, TestNs};
use proxy::nft::ruleset::{names, table};
use proxy::{Backend, ExecIptables, ProxyMode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::ENDPOINTS;
use crate::controlplane::procfs::{self, Mem};

/// Services held when memory is read.
pub const SERVICES: usize = 10_000;
/// Set (to the Service count) in the child that measures the Syncer.
pub const CHILD_ENV: &str = "KNODE_BENCH_PROXY_RSS_CHILD";
/// Services per namespace in the agent, spread out.
pub const PER_NAMESPACE: usize = 10;
/// Create calls in flight while filling the agent.
const FILL_CONCURRENCY: usize = 8;
/// How long the agent's proxy may take to program everything after the fill.
const SYNC_LIMIT: Duration = Duration::from_secs(240);
const NODE_NAME: &str = "bench-node";

/// One memory reading.
#[derive(Debug, Clone)]
pub struct Reading {
    pub when: String,
    pub services: usize,
    pub mem: Mem,
}

/// The readings of one process, and how long its phases took.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub readings: Vec<Reading>,
    /// The last reading again after glibc's `malloc_trim(0)` gave every
    /// free heap page back (the child only).
    pub trimmed: Option<Mem>,
    pub phases: Vec<(&'static str, Duration)>,
    /// How often the agent's watches had to relist (a watcher that falls
    /// behind the store's event buffer is told to; the agent logs each).
    pub relists: Option<usize>,
}

extern "C" {
    /// glibc: returns the free memory of every malloc arena to the kernel.
    fn malloc_trim(pad: usize) -> i32;
}

/// The Syncer measurement, in a child process (a fresh heap, whatever ran
/// in this one before).
pub fn syncer() -> Result<Outcome> {
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("proxy")
        .env(CHILD_ENV, SERVICES.to_string())
        .output()
        .context("run the Syncer memory child")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "the Syncer memory child failed: {}",
        stderr.trim()
    );
    let mut readings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_line)
        .collect::<Vec<_>>();
    if readings.len() != 4 {
        bail!(
            "the Syncer memory child printed {} readings, want 4",
            readings.len()
        );
    }
    let trimmed = readings.pop().map(|r| r.mem);
    Ok(Outcome {
        readings,
        trimmed,
        phases: vec![("child run", t.elapsed())],
        relists: None,
    })
}

/// `rss WHEN SERVICES RSS_KIB HWM_KIB`, WHEN with `_` for spaces.
fn parse_line(line: &str) -> Option<Reading> {
    let f: Vec<&str> = line.strip_prefix("rss ")?.split(' ').collect();
    let [when, services, rss, hwm] = f[..] else {
        return None;
    };
    Some(Reading {
        when: when.replace('_', " "),
        services: services.parse().ok()?,
        mem: Mem {
            rss_kib: rss.parse().ok()?,
            hwm_kib: hwm.parse().ok()?,
        },
    })
}

/// The child's side: reads its own memory at start, with the view of `n`
/// Services built, after one full sync of it (view and Syncer held), and
/// after `malloc_trim(0)`.
pub fn child(n: usize) -> Result<()> {
    let read = |when: &str, services: usize| -> Result<()> {
        let m = procfs::mem(std::process::id())?;
        println!(
            "rss {} {services} {} {}",
            when.replace(' ', "_"),
            m.rss_kib,
            m.hwm_kib
        );
        Ok(())
    };
    read("process start", 0)?;
    let desired = super::services(n);
    read("view built", n)?;
    let ns = TestNs::new("bpm")?;
    let mut s = super::syncer(Arc::new(ExecIptables::new(Backend::Legacy)));
    super::sync(&ns, &mut s, &desired)?;
    read("synced", n)?;
    // SAFETY: malloc_trim takes no pointer and only releases free memory.
    unsafe { malloc_trim(0) };
    read("trimmed", n)
}

/// Which parts run beside the control plane and the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Everything but pods and the overlay: the controllers make the
    /// EndpointSlices, DNS and network policy watch too.
    Usual,
    /// The control plane and the proxy alone; the bench writes the
    /// EndpointSlices the controller would (one per Service, every
    /// endpoint ready), so the proxy's share is not lost in the others'.
    ProxyAlone,
}

/// The agent measurement: with its proxy in `mode`, read idle, filled and
/// once the proxy programmed every Service and endpoint; without (`mode`
/// `None`), idle and filled. `per_namespace` Services (and their Pods)
/// share a namespace.
pub fn agent(mode: Option<ProxyMode>, per_namespace: usize, parts: Parts) -> Result<Outcome> {
    crate::built("knode")?;
    let node = TestNs::new("bpa")?;
    // kubelet's hint chain: the agent's proxy picks the legacy backend
    // (iptables-nft 1.8.9 needs minutes per sync at this size).
    let hint = "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY";
    node.sh(&hint.split(' ').collect::<Vec<_>>())?;
    let proxy = mode.is_some();
    let others = match parts {
        Parts::Usual => "pods,overlay",
        Parts::ProxyAlone => "pods,overlay,dns,network-policy,controllers",
    };
    let disable = if proxy {
        others.to_string()
    } else {
        format!("{others},proxy")
    };
    let flags = [
        "--node-name",
        NODE_NAME,
        "--node-ip",
        "192.0.2.1",
        "--disable",
        &disable,
        "--proxy-mode",
        mode.unwrap_or(ProxyMode::Nftables).name(),
    ];
    let agent = Agent::start_node(
        TempDir::new("bpa")?,
        node.path(),
        Vec::new(),
        flags.iter().map(|s| s.to_string()).collect(),
    )?;
    let pid = agent.pid().context("the agent is not running")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let cp: Arc<dyn ControlPlane> = Arc::new(Client::new(&agent.socket()));
    rt.block_on(cp.list(&Scope::all(Kind::Service)))?;
    std::thread::sleep(Duration::from_secs(2));
    let mut readings = Vec::new();
    let mut read = |when: &str, services| -> Result<()> {
        readings.push(Reading {
            when: when.to_string(),
            services,
            mem: procfs::mem(pid)?,
        });
        Ok(())
    };
    read("idle", 0)?;
    eprintln!(
        "proxy: rss: filling the agent (--disable {disable}) with {SERVICES} Services and {} ready Pods, {per_namespace} Services per namespace",
        SERVICES * ENDPOINTS
    );
    let t = Instant::now();
    rt.block_on(fill(
        cp,
        SERVICES,
        per_namespace,
        parts == Parts::ProxyAlone,
    ))
    .with_context(|| format!("fill the agent; its log:\n{}", tail(&agent.log())))?;
    let filled = t.elapsed();
    read("filled", SERVICES)?;
    let mut phases = vec![("fill", filled)];
    if let Some(mode) = mode {
        let synced = wait_synced(&node, mode, SERVICES)
            .with_context(|| format!("agent log:\n{}", tail(&agent.log())))?;
        read("proxy synced", SERVICES)?;
        phases.push(("sync after fill", synced));
    }
    let relists = agent.log().matches("relisting").count();
    eprintln!("proxy: rss: {phases:?}; watch relists in the agent: {relists}");
    Ok(Outcome {
        readings,
        trimmed: None,
        phases,
        relists: Some(relists),
    })
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Creates `n` Services, `per_namespace` per namespace, and ENDPOINTS
/// ready Pods each (create, then status), and with `slices` their
/// EndpointSlices, FILL_CONCURRENCY Services at a time once the namespaces
/// exist.
async fn fill(
    cp: Arc<dyn ControlPlane>,
    n: usize,
    per_namespace: usize,
    slices: bool,
) -> Result<()> {
    for ns in 0..n.div_ceil(per_namespace) {
        let namespace = namespace_name(ns);
        cp.create(
            object(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            )?,
            None,
        )
        .await
        .with_context(|| format!("create namespace {namespace}"))?;
    }
    let mut set = JoinSet::new();
    for k in 0..FILL_CONCURRENCY {
        let cp = Arc::clone(&cp);
        set.spawn(async move {
            for i in (k..n).step_by(FILL_CONCURRENCY) {
                fill_service(cp.as_ref(), &namespace_name(i / per_namespace), i, slices).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a fill task panicked")??;
    }
    Ok(())
}

fn object(v: Value) -> Result<Object> {
    Object::from_value(v).context("build an object")
}

fn namespace_name(ns: usize) -> String {
    format!("bench-{ns:04}")
}

/// Service `i` in `namespace` and its Pods (and with `slices` the
/// EndpointSlice the controller would write for them).
async fn fill_service(
    cp: &dyn ControlPlane,
    namespace: &str,
    i: usize,
    slices: bool,
) -> Result<()> {
    let app = format!("svc-{i}");
    cp.create(
        object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": app, "namespace": namespace},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }))?,
        None,
    )
    .await
    .with_context(|| format!("create Service {namespace}/{app}"))?;
    for e in 0..ENDPOINTS {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{app}-{e}"), "namespace": namespace, "labels": {"app": app}},
            "spec": {"nodeName": NODE_NAME,
                     "containers": [{"name": "c", "image": "pause", "ports": [{"containerPort": 8080}]}]},
        });
        cp.create(object(pod.clone())?, None)
            .await
            .with_context(|| format!("create Pod {namespace}/{app}-{e}"))?;
        let ip = super::endpoint_ip(i, e).to_string();
        pod["status"] = json!({
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        cp.update_status(object(pod)?)
            .await
            .with_context(|| format!("mark Pod {namespace}/{app}-{e} ready"))?;
    }
    if slices {
        let endpoints: Vec<Value> = (0..ENDPOINTS)
            .map(|e| {
                json!({"addresses": [super::endpoint_ip(i, e).to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": NODE_NAME,
                       "targetRef": {"kind": "Pod", "namespace": namespace, "name": format!("{app}-{e}")}})
            })
            .collect();
        cp.create(
            object(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{app}-x1"), "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": app,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))?,
            None,
        )
        .await
        .with_context(|| format!("create the EndpointSlice of {namespace}/{app}"))?;
    }
    Ok(())
}

/// Waits until the node holds every Service and endpoint (iptables: a
/// KUBE-SVC chain per Service and a KUBE-SEP chain per endpoint; nftables:
/// their elements in `service-ips` and `service-endpoints`); returns how
/// long that took.
fn wait_synced(node: &TestNs, mode: ProxyMode, n: usize) -> Result<Duration> {
    let t = Instant::now();
    type Count = fn(&TestNs) -> Result<(usize, usize)>;
    let (what, count): (&str, Count) = match mode {
        ProxyMode::Iptables => ("KUBE-SVC and KUBE-SEP chains", count_chains),
        ProxyMode::Nftables => ("service-ips and service-endpoints elements", count_elements),
    };
    loop {
        let (svc, eps) = count(node)?;
        if svc >= n && eps >= n * ENDPOINTS {
            return Ok(t.elapsed());
        }
        if t.elapsed() > SYNC_LIMIT {
            bail!(
                "after {SYNC_LIMIT:?} the node has {svc} and {eps} {what}, want {n} and {}",
                n * ENDPOINTS
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn count_chains(node: &TestNs) -> Result<(usize, usize)> {
    let saved = node.sh(&["iptables-legacy-save", "-t", "nat"])?;
    let count = |prefix: &str| saved.lines().filter(|l| l.starts_with(prefix)).count();
    Ok((count(":KUBE-SVC-"), count(":KUBE-SEP-")))
}

fn count_elements(node: &TestNs) -> Result<(usize, usize)> {
    node.run(|| -> Result<(usize, usize)> {
        let nft = NfTablesSocket::open()?;
        // No table yet: nothing programmed.
        let count = |set: &str| nft.elements(&table(), set).map(|e| e.len()).unwrap_or(0);
        Ok((count(names::SERVICE_IPS), count(names::SERVICE_ENDPOINTS)))
    })?
}
