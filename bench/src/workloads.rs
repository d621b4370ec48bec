//! The controller manager's memory (`bench controller-memory`): a real
//! `knode agent` (embedded control plane; no kubelet, proxy, DNS, network
//! policy or overlay) given 1,000 Deployments of 10 replicas in 100
//! namespaces; its controllers make the 1,000 ReplicaSets and 10,000 pods
//! and its scheduler binds them to 3 registered nodes that have no
//! kubelet (the pods never run). Read: VmRSS idle and once every pod is
//! bound ("filled"); then the same agent is restarted on the same store
//! with `--disable controllers` and again with the controllers, and read
//! once each has listed everything. The manager's share is the difference
//! of the two restarted readings (same objects in both), cross-checked
//! by the growth from idle of the first run (which adds the store's own).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::rest::client::Client;
use controlplane::{ControlPlane, Kind, Object, Scope};
use netns_tests::agent::Agent;
use netns_tests::{TempDir, TestNs};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::controlplane::procfs::{self, Mem};
use crate::report::{host_facts, write_file};
use crate::Opts;

const DEPLOYMENTS: usize = 1000;
const REPLICAS: usize = 10;
const PER_NAMESPACE: usize = 10;
const NODES: usize = 3;
const CONCURRENCY: usize = 8;
/// How long the controllers may take to make and bind every pod.
const FILL_LIMIT: Duration = Duration::from_secs(900);
/// Settling time after the restarted agent answers (its informers list
/// 10k pods; the reading is taken once VmRSS stops growing).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
const NODE_NAME: &str = "bench-node";

fn flags(controllers: bool) -> Vec<String> {
    let mut disable = "pods,overlay,proxy,dns,network-policy".to_string();
    if !controllers {
        disable.push_str(",controllers");
    }
    [
        "--node-name",
        NODE_NAME,
        "--node-ip",
        "192.0.2.1",
        "--disable",
        &disable,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn object(v: Value) -> Result<Object> {
    Object::from_value(v).context("build an object")
}

/// Three ready nodes with live heartbeat Leases and room for every pod.
async fn nodes(cp: &dyn ControlPlane) -> Result<()> {
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}});
    let _ = cp.create(object(ns)?, None).await;
    for i in 0..NODES {
        let name = format!("fake-{i}");
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        let made = cp.create(object(node)?, None).await?;
        let mut v = made.to_value();
        v["status"] = json!({"allocatable": {"cpu": "640", "memory": "2560Gi", "pods": "10000"},
            "conditions": [{"type": "Ready", "status": "True"}]});
        cp.update_status(object(v)?).await?;
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 86400}});
        cp.create(object(lease)?, None).await?;
    }
    Ok(())
}

/// The Deployments, `PER_NAMESPACE` per namespace, a typical web pod each.
async fn deployments(cp: Arc<dyn ControlPlane>) -> Result<()> {
    for ns in 0..DEPLOYMENTS.div_ceil(PER_NAMESPACE) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("bench-{ns:03}")}});
        cp.create(object(ns)?, None).await?;
    }
    let mut set = JoinSet::new();
    for k in 0..CONCURRENCY {
        let cp = cp.clone();
        set.spawn(async move {
            for i in (k..DEPLOYMENTS).step_by(CONCURRENCY) {
                let app = format!("web-{i}");
                let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": app, "namespace": format!("bench-{:03}", i / PER_NAMESPACE)},
                    "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": app}},
                             "template": {"metadata": {"labels": {"app": app, "tier": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": "registry.local/web:1.0",
                                     "args": ["--port", "8080"],
                                     "env": [{"name": "MODE", "value": "production"}],
                                     "ports": [{"name": "http", "containerPort": 8080}],
                                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
                cp.create(object(d)?, None)
                    .await
                    .with_context(|| format!("create Deployment {app}"))?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a fill task panicked")??;
    }
    Ok(())
}

/// (pods, bound pods).
async fn pod_counts(cp: &dyn ControlPlane) -> Result<(usize, usize)> {
    let list = cp.list(&Scope::all(Kind::Pod)).await?;
    let bound = list
        .items
        .iter()
        .filter(|o| {
            matches!(o, Object::Pod(p) if p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()))
        })
        .count();
    Ok((list.items.len(), bound))
}

/// VmRSS once it has not grown for 6 s (the informers' first lists done).
fn settled(pid: u32) -> Result<Mem> {
    let t = Instant::now();
    let mut last = procfs::mem(pid)?;
    let mut still = 0;
    while still < 3 {
        std::thread::sleep(Duration::from_secs(2));
        let m = procfs::mem(pid)?;
        if m.rss_kib > last.rss_kib + 256 {
            still = 0;
        } else {
            still += 1;
        }
        last = m;
        if t.elapsed() > SETTLE_LIMIT {
            bail!("VmRSS still growing after {SETTLE_LIMIT:?}");
        }
    }
    Ok(last)
}

/// Runs the measurement and writes `controller-memory.json`.
pub fn run_memory(opts: &Opts) -> Result<()> {
    crate::built("knode")?;
    let node = TestNs::new("bcm")?;
    let mut agent = Agent::start_node(TempDir::new("bcm")?, node.path(), Vec::new(), flags(true))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cp: Arc<dyn ControlPlane> = Arc::new(Client::new(&agent.socket()));
    rt.block_on(cp.list(&Scope::all(Kind::Pod)))?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = |a: &Agent| a.pid().context("the agent is not running");
    let idle = procfs::mem(pid(&agent)?)?;
    let t = Instant::now();
    rt.block_on(async {
        nodes(cp.as_ref()).await?;
        deployments(cp.clone()).await
    })?;
    let created = t.elapsed();
    let want = DEPLOYMENTS * REPLICAS;
    loop {
        let (n, bound) = rt.block_on(pod_counts(cp.as_ref()))?;
        eprintln!(
            "controller-memory: {n} pods, {bound} bound after {:.0} s",
            t.elapsed().as_secs_f64()
        );
        if n == want && bound == want {
            break;
        }
        if t.elapsed() > FILL_LIMIT {
            bail!("after {FILL_LIMIT:?}: {n} pods, {bound} bound, want {want}");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let filled_after = t.elapsed();
    let filled = settled(pid(&agent)?)?;
    let mut restarted = Vec::new();
    for controllers in [false, true, false, true] {
        agent.restart_with(flags(controllers))?;
        let cp: Arc<dyn ControlPlane> = Arc::new(Client::new(&agent.socket()));
        let (n, _) = rt.block_on(pod_counts(cp.as_ref()))?;
        anyhow::ensure!(n == want, "restarted with {n} pods, want {want}");
        let m = settled(pid(&agent)?)?;
        eprintln!(
            "controller-memory: restarted, controllers {}: VmRSS {} KiB",
            if controllers { "on" } else { "off" },
            m.rss_kib
        );
        restarted.push((controllers, m));
    }
    let mib = |k: u64| k as f64 / 1024.0;
    let median = |on: bool| {
        let mut v: Vec<u64> = restarted
            .iter()
            .filter(|(c, _)| *c == on)
            .map(|(_, m)| m.rss_kib)
            .collect();
        v.sort();
        v[v.len() / 2]
    };
    let (on, off) = (median(true), median(false));
    let share = mib(on.saturating_sub(off));
    let growth = mib(filled.rss_kib.saturating_sub(idle.rss_kib));
    println!(
        "controller-memory: {DEPLOYMENTS} Deployments x {REPLICAS} pods ({want} pods) bound to {NODES} kubelet-less nodes in {:.0} s\n\
         agent VmRSS idle {:.1} MiB, filled {:.1} MiB (growth {growth:.1} MiB: store + manager)\n\
         restarted on the same store: controllers off {:.1} MiB, on {:.1} MiB -> manager {share:.1} MiB ({:.0} bytes per pod)",
        filled_after.as_secs_f64(),
        mib(idle.rss_kib),
        mib(filled.rss_kib),
        mib(off),
        mib(on),
        share * 1024.0 * 1024.0 / want as f64,
    );
    let mut doc = host_facts();
    doc["method"] = json!(format!(
        "a real `knode agent` (embedded control plane, --disable pods,overlay,proxy,dns,network-policy) in a node \
         namespace, given {DEPLOYMENTS} Deployments of {REPLICAS} replicas in {} namespaces through its socket; its \
         controllers make the ReplicaSets and pods and its scheduler binds them to {NODES} registered nodes without \
         a kubelet (pods never run). VmRSS idle and once all pods are bound (growth = store + manager); then \
         restarted on the same store with --disable controllers and without, twice each, read once VmRSS stops \
         growing: the manager's share is on - off (medians)",
        DEPLOYMENTS / PER_NAMESPACE
    ));
    doc["binary"] = json!(crate::built("knode")?.display().to_string());
    doc["results"] = json!({
        "pods": want, "deployments": DEPLOYMENTS,
        "create_s": created.as_secs_f64(), "all_bound_s": filled_after.as_secs_f64(),
        "idle_vmrss_kib": idle.rss_kib, "filled_vmrss_kib": filled.rss_kib,
        "filled_vmhwm_kib": filled.hwm_kib, "growth_from_idle_mib": growth,
        "restarted": restarted.iter().map(|(c, m)| json!({"controllers": c, "vmrss_kib": m.rss_kib, "vmhwm_kib": m.hwm_kib})).collect::<Vec<_>>(),
        "manager_mib": share,
        "manager_bytes_per_pod": share * 1024.0 * 1024.0 / want as f64,
    });
    let name = std::env::var("KNODE_BENCH_RESULT").unwrap_or_else(|_| "controller-memory".into());
    write_file(
        &opts.out,
        &format!("{name}.json"),
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}

/// Replicas of the Deployment row.
const DEPLOY_REPLICAS: usize = 100;
const DEPLOY_RUNS: usize = 3;
const DEPLOY_NS: &str = "default";
const DEPLOY_LIMIT: Duration = Duration::from_secs(600);

/// When each milestone of one run was reached, from the create call, and
/// the same span as the API's own timestamps tell it.
#[derive(Debug, Default, Clone)]
struct Milestones {
    replica_set: Option<Duration>,
    created: Option<Duration>,
    bound: Option<Duration>,
    running: Option<Duration>,
    /// The first pod's `creationTimestamp` (for a Deployment: its own),
    /// seconds since the epoch.
    api_start: Option<i64>,
    /// The last pod's `Ready` condition turning true (else its container's
    /// `startedAt`), seconds since the epoch.
    api_running: Option<i64>,
    /// Running pods per node once all ran.
    per_node: BTreeMap<String, usize>,
    /// Writes to the store (its revision's growth) from the create to all
    /// Running: every write of the controllers, scheduler and kubelets, and
    /// the nodes' heartbeats.
    writes: Option<u64>,
}

impl Milestones {
    /// `api_running - api_start`: whole seconds (the API's resolution).
    fn api_span(&self) -> Option<i64> {
        Some(self.api_running? - self.api_start?)
    }
}

fn busybox_template(image: &str, app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
                                    "command": ["sleep", "3600"]}]}})
}

type Pod = k8s_openapi::api::core::v1::Pod;

fn epoch(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<i64> {
    t.map(|t| t.0.as_second())
}

/// When the pod turned Running as the API has it: its Ready condition's
/// transition (no probes: ready once its container runs), else the
/// latest container start.
fn running_at(p: &Pod) -> Option<i64> {
    let status = p.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| epoch(c.last_transition_time.as_ref()));
    ready.or_else(|| {
        status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| epoch(c.state.as_ref()?.running.as_ref()?.started_at.as_ref()))
            .max()
    })
}

/// The store's revision now.
async fn revision(cp: &dyn ControlPlane) -> Result<u64> {
    Ok(cp
        .list(&Scope::namespaced(Kind::Pod, DEPLOY_NS))
        .await?
        .revision)
}

/// Polls the namespace every 50 ms until `n` pods run, noting milestones;
/// `rev0` is the store's revision before the first write.
async fn follow(
    cp: &dyn ControlPlane,
    t0: Instant,
    rev0: u64,
    n: usize,
    with_rs: bool,
) -> Result<Milestones> {
    let mut m = Milestones::default();
    loop {
        let at = t0.elapsed();
        if with_rs && m.replica_set.is_none() {
            let rs = cp
                .list(&Scope::namespaced(Kind::ReplicaSet, DEPLOY_NS))
                .await?;
            if !rs.items.is_empty() {
                m.replica_set = Some(at);
            }
        }
        let list = cp.list(&Scope::namespaced(Kind::Pod, DEPLOY_NS)).await?;
        let pods: Vec<&Pod> = list
            .items
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        let bound = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        let running: Vec<&&Pod> = pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if pods.len() >= n && m.created.is_none() {
            m.created = Some(at);
        }
        if bound >= n && m.bound.is_none() {
            m.bound = Some(at);
        }
        if running.len() >= n {
            m.running = Some(at);
            m.writes = Some(list.revision.saturating_sub(rev0));
            m.api_start = pods
                .iter()
                .filter_map(|p| epoch(p.metadata.creation_timestamp.as_ref()))
                .min();
            m.api_running = running.iter().map(|p| running_at(p)).max().flatten();
            for p in &running {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                *m.per_node.entry(node.unwrap_or_default()).or_default() += 1;
            }
            return Ok(m);
        }
        if at > DEPLOY_LIMIT {
            bail!(
                "after {DEPLOY_LIMIT:?}: {} pods, {bound} bound, {} running",
                pods.len(),
                running.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_no_pods(cp: &dyn ControlPlane) -> Result<()> {
    let t = Instant::now();
    while !cp
        .list(&Scope::namespaced(Kind::Pod, DEPLOY_NS))
        .await?
        .items
        .is_empty()
    {
        if t.elapsed() > DEPLOY_LIMIT {
            bail!("pods still there after {DEPLOY_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// One Deployment run: create, follow to all Running, delete, wait gone.
async fn deployment_run(cp: &dyn ControlPlane, image: &str) -> Result<Milestones> {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench-web", "namespace": DEPLOY_NS},
        "spec": {"replicas": DEPLOY_REPLICAS, "selector": {"matchLabels": {"app": "bench-web"}},
                 "template": busybox_template(image, "bench-web")}});
    let rev0 = revision(cp).await?;
    let t0 = Instant::now();
    let made = cp.create(object(d)?, None).await?;
    let mut m = follow(cp, t0, rev0, DEPLOY_REPLICAS, true).await?;
    // The span the API tells starts at the Deployment, as the wall clock.
    if let Object::Deployment(d) = &made {
        m.api_start = epoch(d.metadata.creation_timestamp.as_ref());
    }
    cp.delete(
        &controlplane::ObjectRef::new(Kind::Deployment, DEPLOY_NS, "bench-web"),
        None,
    )
    .await?;
    wait_no_pods(cp).await?;
    Ok(m)
}

/// The reference run: the same pods written directly (8 creates in
/// flight), no controller. With `nodes`, pod `i` is bound to node `i mod
/// n` at create (`nodeName`: no scheduler either); without, the
/// scheduler binds them.
async fn bare_pods_run(
    cp: Arc<dyn ControlPlane>,
    image: &str,
    nodes: &[String],
) -> Result<Milestones> {
    let rev0 = revision(cp.as_ref()).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for k in 0..CONCURRENCY {
        let (cp, image, nodes) = (cp.clone(), image.to_string(), nodes.to_vec());
        set.spawn(async move {
            for i in (k..DEPLOY_REPLICAS).step_by(CONCURRENCY) {
                let mut p = busybox_template(&image, "bench-bare");
                p["apiVersion"] = json!("v1");
                p["kind"] = json!("Pod");
                p["metadata"]["name"] = json!(format!("bench-bare-{i}"));
                p["metadata"]["namespace"] = json!(DEPLOY_NS);
                if !nodes.is_empty() {
                    p["spec"]["nodeName"] = json!(nodes[i % nodes.len()]);
                }
                cp.create(object(p)?, None).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let m = follow(cp.as_ref(), t0, rev0, DEPLOY_REPLICAS, false).await?;
    while let Some(r) = set.join_next().await {
        r.context("a create task panicked")??;
    }
    for i in 0..DEPLOY_REPLICAS {
        let r = controlplane::ObjectRef::new(Kind::Pod, DEPLOY_NS, &format!("bench-bare-{i}"));
        // As the collector deletes a Deployment's pods: the kubelet
        // finishes them.
        let _ = cp.delete(&r, None).await;
    }
    wait_no_pods(cp.as_ref()).await?;
    Ok(m)
}

fn secs(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The one-node row's method (its figures: `deployment-one-node.json`).
const ONE_NODE_METHOD: &str = "one real node (private containerd, `knode agent` on the embedded \
    control plane with its controllers, scheduler and kubelet; busybox `sleep`, image imported, grace 0): \
    a Deployment of 100 replicas created through the socket, pods polled every 50 ms until all Running, \
    then deleted and gone; interleaved with the same 100 pods created directly (8 in flight; the \
    scheduler binds them), 3 runs each";

/// The three-node row's method (`deployment.json`).
const THREE_NODE_METHOD: &str = "three real nodes on etcd (the end-to-end tests' cluster harness: \
    an underlay of network namespaces, one etcd, one private containerd shared by the three agents, \
    each in its own containerd namespace; every agent runs its kubelet, proxy, overlay and DNS, one \
    holds the controller manager and scheduler by its Lease; busybox `sleep`, image imported on each \
    node, grace 0): a Deployment of 100 replicas created through node 0's socket, pods polled every \
    50 ms until all Running, then deleted and gone; interleaved with the reference, the same 100 pods \
    created directly (8 in flight) already spread over the three nodes (`nodeName` set round-robin: \
    neither scheduler nor controllers), 3 runs each, medians. Cross-check: the same span from the \
    API's timestamps (first creationTimestamp, for the Deployment its own, to the last pod's Ready \
    transition; whole seconds), and the store's writes per run (its revision's growth from \
    the create to all Running, the nodes' heartbeats included)";

/// `bench deployment`: a Deployment of 100 replicas on three real nodes
/// on etcd, apply -> all Running, interleaved with the same 100 pods
/// written directly already spread over the nodes; 3 runs each, medians.
pub fn run_deployment(opts: &Opts) -> Result<()> {
    run_deployment_on(opts, 3)
}

/// `bench deployment-one-node`: the same on one node (embedded control
/// plane), the reference's pods bound by the scheduler.
pub fn run_deployment_one_node(opts: &Opts) -> Result<()> {
    run_deployment_on(opts, 1)
}

fn run_deployment_on(opts: &Opts, nodes: usize) -> Result<()> {
    use knode_tests::containerd::CONTAINERD;
    if !std::path::Path::new(CONTAINERD).is_file() {
        bail!("{CONTAINERD} missing: install containerd (make bootstrap does)");
    }
    crate::require_node_bins()?;
    let image = knode_tests::image::BUSYBOX.to_string();
    // What runs the pods (kept alive to the end), the socket to talk to,
    // and the nodes the reference's pods are bound to.
    let (_running, socket, names): (Box<dyn std::any::Any>, _, Vec<String>) = if nodes == 1 {
        let node = knode_tests::node::Node::start().context("start the node")?;
        let img = knode_tests::TempDir::new("bench-img")?;
        let tar =
            knode_tests::image::busybox_oci_tar(img.path()).context("build the busybox image")?;
        node.import(&tar).context("import the image")?;
        let socket = node.agent.socket();
        (Box::new(node), socket, Vec::new())
    } else {
        let c = knode_tests::cluster::Cluster::start(nodes, &[]).context("start the cluster")?;
        let socket = c.nodes[0].agent.socket();
        let names = c.nodes.iter().map(|n| n.name.clone()).collect();
        (Box::new(c), socket, names)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cp: Arc<dyn ControlPlane> = Arc::new(Client::new(&socket));
    let load_before = crate::overlay::loadavg();
    let (mut deps, mut bare) = (Vec::new(), Vec::new());
    for run in 0..DEPLOY_RUNS {
        let b = rt.block_on(bare_pods_run(cp.clone(), &image, &names))?;
        eprintln!("deployment: run {run}: bare pods {b:?}");
        bare.push(b);
        let d = rt.block_on(deployment_run(cp.as_ref(), &image))?;
        eprintln!("deployment: run {run}: Deployment {d:?}");
        deps.push(d);
    }
    let load_after = crate::overlay::loadavg();
    let col = |v: &[Milestones], f: fn(&Milestones) -> Option<Duration>| -> Vec<f64> {
        v.iter().map(|m| secs(f(m))).collect()
    };
    let api = |v: &[Milestones]| -> Vec<f64> {
        v.iter()
            .map(|m| m.api_span().map_or(f64::NAN, |s| s as f64))
            .collect()
    };
    let total = median(col(&deps, |m| m.running));
    let bound = median(col(&deps, |m| m.bound));
    let created = median(col(&deps, |m| m.created));
    let rs = median(col(&deps, |m| m.replica_set));
    let bare_total = median(col(&bare, |m| m.running));
    let bare_bound = median(col(&bare, |m| m.bound));
    let (api_total, api_bare) = (median(api(&deps)), median(api(&bare)));
    let writes = |v: &[Milestones]| -> f64 {
        median(
            v.iter()
                .map(|m| m.writes.map_or(f64::NAN, |w| w as f64))
                .collect(),
        )
    };
    let (writes_total, writes_bare) = (writes(&deps), writes(&bare));
    let extra = total - bare_total;
    println!(
        "deployment: {DEPLOY_REPLICAS} replicas on {nodes} real node(s), median of {DEPLOY_RUNS}: apply -> all Running {total:.2} s \
         (ReplicaSet {rs:.3} s, all pods created {created:.2} s, all bound {bound:.2} s: {:.1} % of the total); \
         the same pods written directly: all bound {bare_bound:.2} s, all Running {bare_total:.2} s; \
         the Deployment costs {extra:+.2} s ({:.1} % of its total); ratio {:.3}; \
         by the API's timestamps: {api_total:.0} s vs {api_bare:.0} s; store writes {writes_total:.0} vs {writes_bare:.0}; \
         load {load_before} -> {load_after}",
        bound / total * 100.0,
        extra / total * 100.0,
        total / bare_total,
    );
    let mut doc = host_facts();
    doc["method"] = json!(if nodes == 1 {
        ONE_NODE_METHOD
    } else {
        THREE_NODE_METHOD
    });
    doc["load_average"] = json!({"before": load_before, "after": load_after});
    doc["binary"] = json!(crate::built("knode")?.display().to_string());
    let runs = |v: &[Milestones]| -> Value {
        v.iter()
            .map(|m| {
                json!({"replica_set_s": secs(m.replica_set), "created_s": secs(m.created),
                       "bound_s": secs(m.bound), "running_s": secs(m.running),
                       "api_span_s": m.api_span(), "running_per_node": m.per_node,
                       "store_writes": m.writes})
            })
            .collect()
    };
    doc["results"] = json!({
        "replicas": DEPLOY_REPLICAS, "nodes": nodes, "runs": DEPLOY_RUNS,
        "deployment": runs(&deps), "bare_pods": runs(&bare),
        "median_total_s": total, "median_replica_set_s": rs, "median_created_s": created,
        "median_bound_s": bound, "bound_share_of_total": bound / total,
        "bare_median_total_s": bare_total, "bare_median_bound_s": bare_bound,
        "deployment_overhead_s": extra, "deployment_overhead_share": extra / total,
        "ratio": total / bare_total,
        "api_median_total_s": api_total, "api_bare_median_total_s": api_bare,
        "median_store_writes": writes_total, "bare_median_store_writes": writes_bare,
    });
    let doc = crate::report::with_targets(
        doc,
        vec![
            json!({"what": format!("controllers' and scheduler's share of a {DEPLOY_REPLICAS}-replica Deployment's apply -> all Running on {nodes} node(s)"),
                    "goal": "<= 10 %", "value": extra / total, "met": extra / total <= 0.10}),
        ],
    );
    let file = if nodes == 1 {
        "deployment-one-node.json"
    } else {
        "deployment.json"
    };
    write_file(
        &opts.out,
        file,
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}
