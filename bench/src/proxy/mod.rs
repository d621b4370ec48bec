//! The proxy benchmark: full syncs of 1k/5k/10k Services x 5 endpoints,
//! a partial sync and a periodic full resync (into the populated table, so
//! it includes finding stale chains) at 10k, each interleaved with `iptables-restore --noflush`
//! of the same payload run directly (the floor any iptables proxy pays);
//! first-packet connect latency (`connect`) and memory (`rss`) at scale.
//! Everything happens in namespaces this harness creates and drops.

pub mod connect;
pub mod nftmode;
mod report;
mod rss;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netns_tests::TestNs;
use proxy::rules::names::{Protocol, ServicePortName};
use proxy::rules::Table;
use proxy::{
    group, Backend, Endpoint, ExecIptables, Iptables, NodeConfig, Proxier, ServiceKey, ServiceMap,
    ServicePort, SyncOutcome, Syncer,
};

use crate::Opts;

/// Service counts for full syncs; the largest is used for partial syncs.
const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
const ENDPOINTS: usize = 5;
const FULL_REPS: usize = 3;
const PARTIAL_REPS: usize = 15;
const RESYNC_REPS: usize = 3;

/// Samples of one measurement, ours and the direct restore.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    pub ours: Vec<Duration>,
    pub reference: Vec<Duration>,
    /// Lines in the last payload.
    pub lines: usize,
}

/// Every measurement on one backend.
#[derive(Debug, Clone)]
pub struct Results {
    /// (services, samples) per size.
    pub full: Vec<(usize, Pair)>,
    /// (services in the table, samples); `None` when not measured.
    pub partial: Option<(usize, Pair)>,
    /// Full resyncs into that populated table; `None` when not measured.
    pub resync: Option<(usize, Pair)>,
    pub backend: Backend,
}

/// Forwards to the real tools and keeps the last restore payload.
struct Capture {
    inner: ExecIptables,
    last: Mutex<String>,
}

impl Iptables for Capture {
    fn restore(&self, payload: &str) -> proxy::Result<()> {
        if let Ok(mut l) = self.last.lock() {
            *l = payload.to_string();
        }
        self.inner.restore(payload)
    }
    fn save(&self, table: Table) -> proxy::Result<String> {
        self.inner.save(table)
    }
    fn list_chain(&self, table: Table, chain: &str) -> proxy::Result<Option<String>> {
        self.inner.list_chain(table, chain)
    }
    fn survey(&self, table: Table, listed: &[&str]) -> proxy::Result<proxy::iptables::Survey> {
        self.inner.survey(table, listed)
    }
}

impl Capture {
    fn last(&self) -> String {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "bench".into(),
        node_ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        cluster_cidr_v6: None,
        masquerade_all: false,
        localhost_nodeports: false,
    }
}

/// `n` Services with one TCP port and `ENDPOINTS` endpoints each.
fn services(n: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| {
            let name = ServicePortName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port: "http".into(),
            };
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32);
            let mut sp = ServicePort::new(name, Protocol::Tcp, vip, 80);
            sp.endpoints = (0..ENDPOINTS)
                .map(|e| Endpoint {
                    ip: endpoint_ip(i, e),
                    port: 8080,
                    local: e == 0,
                })
                .collect();
            sp
        })
        .collect()
}

/// What the agent hands a proxier: the view by Service and the Services
/// changed since the last successful sync ([`Proxier::sync_changed`]).
struct Fed {
    view: ServiceMap,
    changed: BTreeSet<ServiceKey>,
}

impl Fed {
    /// `desired` as a first view: every Service changed.
    fn new(desired: &[ServicePort]) -> Fed {
        let view = group(desired);
        let changed = view.keys().cloned().collect();
        Fed { view, changed }
    }

    /// `sp`, the one port of its Service, is now as given.
    fn set(&mut self, sp: &ServicePort) {
        let key = (sp.name.namespace.clone(), sp.name.name.clone());
        self.view.insert(key.clone(), vec![sp.clone()].into());
        self.changed.insert(key);
    }

    fn sync(&mut self, p: &mut dyn Proxier) -> proxy::Result<SyncOutcome> {
        let r = p.sync_changed(&self.view, &self.changed);
        if r.is_ok() {
            self.changed.clear();
        }
        r
    }
}

/// The pod IP of endpoint `e` of Service `i` (in 10.244.0.0/16).
fn endpoint_ip(i: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * ENDPOINTS + e) as u32)
}

/// A Syncer for the bench's node writing through `ipt`. No periodic full
/// sync inside a measurement: a partial sample stays partial.
fn syncer(ipt: Arc<dyn Iptables>) -> Syncer {
    Syncer::new(ipt, node()).with_full_sync_period(Duration::from_secs(24 * 3600))
}

/// `iptables-restore --noflush` of `payload` in `ns`, timed.
fn restore_direct(ns: &TestNs, backend: Backend, payload: &str) -> Result<Duration> {
    let tool = match backend {
        Backend::Nft => "iptables-nft-restore",
        Backend::Legacy => "iptables-legacy-restore",
    };
    let t = Instant::now();
    let mut child = ns
        .cmd(&[tool, "-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {tool}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(payload.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!("{tool}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}

/// A fresh namespace with a Syncer in it.
fn setup(backend: Backend) -> Result<(TestNs, Arc<Capture>, Syncer)> {
    let ns = TestNs::new("bpx")?;
    let cap = Arc::new(Capture {
        inner: ExecIptables::new(backend),
        last: Mutex::new(String::new()),
    });
    let syncer = syncer(cap.clone());
    Ok((ns, cap, syncer))
}

fn sync(ns: &TestNs, s: &mut Syncer, desired: &[ServicePort]) -> Result<Duration> {
    let o = ns
        .run(|| s.sync(desired))?
        .map_err(|e| anyhow!("sync: {e}"))?;
    Ok(o.duration)
}

/// Full syncs at each of `sizes`, then (when `partial_at` is given) partial
/// syncs into a table of that many Services.
fn measure(backend: Backend, sizes: &[usize], partial_at: Option<usize>) -> Result<Results> {
    let mut full = Vec::new();
    for &n in sizes {
        let desired = services(n);
        let mut pair = Pair::default();
        for rep in 0..FULL_REPS {
            let (ns, cap, mut s) = setup(backend)?;
            pair.ours.push(sync(&ns, &mut s, &desired)?);
            let payload = cap.last();
            pair.lines = payload.lines().count();
            let reference = TestNs::new("bpr")?;
            pair.reference
                .push(restore_direct(&reference, backend, &payload)?);
            eprintln!(
                "proxy: full {n} rep {rep}: ours {:?}, iptables-restore {:?}",
                pair.ours[rep], pair.reference[rep]
            );
        }
        full.push((n, pair));
    }

    let Some(n) = partial_at else {
        return Ok(Results {
            full,
            partial: None,
            resync: None,
            backend,
        });
    };
    let mut desired = services(n);
    let (ns, cap, mut s) = setup(backend)?;
    sync(&ns, &mut s, &desired)?;
    let reference = TestNs::new("bpr")?;
    restore_direct(&reference, backend, &cap.last())?;
    let mut partial = Pair::default();
    for rep in 0..PARTIAL_REPS {
        let sp = &mut desired[(rep * 7919) % n];
        sp.endpoints[1].ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + rep as u32);
        partial.ours.push(sync(&ns, &mut s, &desired)?);
        let payload = cap.last();
        partial.lines = payload.lines().count();
        partial
            .reference
            .push(restore_direct(&reference, backend, &payload)?);
    }
    // The periodic full sync: every chain rewritten in place, stale ones
    // looked for (the reference restores the same payload, nothing more).
    let mut resync = Pair::default();
    for rep in 0..RESYNC_REPS {
        s.request_full();
        resync.ours.push(sync(&ns, &mut s, &desired)?);
        let payload = cap.last();
        resync.lines = payload.lines().count();
        resync
            .reference
            .push(restore_direct(&reference, backend, &payload)?);
        eprintln!(
            "proxy: resync {n} rep {rep}: ours {:?}, iptables-restore {:?}",
            resync.ours[rep], resync.reference[rep]
        );
    }
    Ok(Results {
        full,
        partial: Some((n, partial)),
        resync: Some((n, resync)),
        backend,
    })
}

/// The agent's memory with its proxy in `mode` (or none): a failure is
/// reported, not fatal to the rest (the agent needs more machinery: its
/// control plane, a fill of 60k objects).
fn agent_rss(
    mode: Option<proxy::ProxyMode>,
    per_namespace: usize,
    parts: rss::Parts,
) -> std::result::Result<rss::Outcome, String> {
    rss::agent(mode, per_namespace, parts).map_err(|e| {
        let mode = mode.map_or("off", |m| m.name());
        eprintln!("proxy: rss: the agent measurement (proxy {mode}, {per_namespace} Services per namespace) failed: {e:#}");
        format!("{e:#}")
    })
}

/// Runs the benchmark and writes `proxy.json` and `proxy.svg`.
pub fn run(opts: &Opts) -> Result<()> {
    if let Ok(n) = std::env::var(rss::CHILD_ENV) {
        return rss::child(n.parse().context("the Service count")?);
    }
    for tool in ["iptables-nft-restore", "iptables-legacy-restore"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        if !found {
            bail!("{tool} not found (install iptables)");
        }
    }
    // iptables-nft 1.8.9 is quadratic in user space: even with the
    // proxy's descending chain declarations it needs ~48 s for the
    // 10k-Service payload (60k chains), so its full syncs are measured to
    // 5k; the partial sync at 10k is measured on both (one 10k load each
    // for ours and the reference).
    let largest = SIZES[SIZES.len() - 1];
    let legacy = measure(Backend::Legacy, &SIZES, Some(largest))?;
    let nft = measure(Backend::Nft, &SIZES[..2], Some(largest))?;
    let iptables_nodes = connect::SIZES.map(|n| (proxy::ProxyMode::Iptables, n));
    let connect = connect::measure(&iptables_nodes).context("connect latency")?;
    eprintln!(
        "proxy: rss: a child process holding a Syncer after a full sync of {} Services",
        rss::SERVICES
    );
    let syncer_rss = rss::syncer().context("Syncer memory")?;
    // The agent needs more machinery (its control plane, a fill of 60k
    // objects): a failure there is reported, not fatal to the rest.
    let ipt = Some(proxy::ProxyMode::Iptables);
    let usual = rss::Parts::Usual;
    let memory = report::Memory {
        syncer: syncer_rss,
        agent: agent_rss(ipt, rss::PER_NAMESPACE, usual),
        agent_without_proxy: agent_rss(None, rss::PER_NAMESPACE, usual),
        agent_one_namespace: agent_rss(ipt, rss::SERVICES, usual),
    };
    report::write(opts, &[legacy, nft], &connect, &memory)
}
