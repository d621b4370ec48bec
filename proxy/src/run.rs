//! The proxy controller the agent starts: list+watch Services and Pods,
//! keep the service view current (recomputing only the Services a change
//! touches), and hand each new view to a dedicated sync thread that
//! debounces (min sync period), checks the canary and runs full resyncs.
//! It also watches Nodes and their heartbeat Leases: the pods of a
//! registered node whose Lease expired are not endpoints, so a lost
//! node's endpoints leave every Service within the lease duration (40 s),
//! as the node lifecycle controller's NotReady marking does in Kubernetes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use controlplane::api::{ControlPlane, ObjectRef, Scope, WatchEvent};
use controlplane::endpoints::{selector_matches, strip_for_endpoints};
use controlplane::watcher::{Update, Watcher};
use controlplane::{Kind, Object};
use k8s_openapi::api::core::v1::Pod;

use crate::conntrack::netlink::NetlinkConntrack;
use crate::iptables::{Backend, ExecIptables};
use crate::metrics::Metrics;
use crate::rules::NodeConfig;
use crate::sync::{Syncer, DEFAULT_FULL_SYNC_PERIOD};
use crate::view::{ports_of, ServicePort};
use crate::{Error, Result};

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node and the rule options.
    pub node: NodeConfig,
    /// At most one sync per this period (kube-proxy `--iptables-min-sync-period`, 1 s; 0 for tests).
    pub min_sync_period: Duration,
    /// Health allows a change to wait twice this (kube-proxy `--iptables-sync-period`, 30 s).
    pub sync_period: Duration,
    /// A full sync at least this often (kube-proxy's FullSyncPeriod, 1 h).
    pub full_sync_period: Duration,
    /// How often the canary chains are checked.
    pub canary_period: Duration,
    /// The iptables backend; `None` detects it ([`Backend::detect`]).
    pub backend: Option<Backend>,
    /// Program this network namespace instead of the agent's own (tests).
    pub netns: Option<PathBuf>,
}

impl ProxyConfig {
    /// kube-proxy's defaults for `node`.
    pub fn new(node: NodeConfig) -> ProxyConfig {
        ProxyConfig {
            node,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: DEFAULT_FULL_SYNC_PERIOD,
            canary_period: Duration::from_secs(5),
            backend: None,
            netns: None,
        }
    }
}

/// Where agents keep their heartbeat Leases (one per node, named after it).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A new desired view and when its oldest change not yet handed over
/// arrived.
struct Desired {
    services: Vec<ServicePort>,
    at: Instant,
}

/// Hands the newest view from the controller to the sync thread. It holds
/// at most one view, and the controller only builds a new one once the
/// sync thread took the last: however long an `iptables-restore` takes and
/// however fast objects change, memory holds a bounded number of copies
/// of the service view (a queue of them grew to a gigabyte at 10k
/// Services while a restore ran).
#[derive(Default)]
struct Mailbox {
    /// The view not yet taken, and whether the controller is gone.
    slot: Mutex<(Option<Desired>, bool)>,
    ready: Condvar,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Desired>, bool)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last view was taken (a new one may be built).
    fn is_empty(&self) -> bool {
        self.lock().0.is_none()
    }

    fn put(&self, d: Desired) {
        self.lock().0 = Some(d);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_one();
    }

    /// The view, if one arrives within `timeout`; `Err(())` once closed.
    fn take(&self, timeout: Duration) -> std::result::Result<Option<Desired>, ()> {
        let guard = self.lock();
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |(d, closed)| d.is_none() && !*closed)
            .unwrap_or_else(|p| p.into_inner());
        match guard.0.take() {
            Some(d) => Ok(Some(d)),
            None if guard.1 => Err(()),
            None => Ok(None),
        }
    }
}

/// Closes the mailbox when the controller stops (its future dropped).
struct CloseOnDrop(Arc<Mailbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs the proxy until the control-plane watch or the sync thread fails
/// (it never returns otherwise; drop the future to stop it, which also
/// stops the sync thread). `metrics` is what the agent serves on
/// `/metrics` and `/healthz`; build it with `Metrics::new(cfg.sync_period)`.
pub async fn run(cp: Arc<dyn ControlPlane>, cfg: ProxyConfig, metrics: Arc<Metrics>) -> Result<()> {
    let mailbox = Arc::new(Mailbox::default());
    let _close = CloseOnDrop(Arc::clone(&mailbox));
    let rx = Arc::clone(&mailbox);
    let thread_cfg = cfg.clone();
    let thread_metrics = Arc::clone(&metrics);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("proxy-sync".into())
        .spawn(move || {
            let r = sync_thread(&rx, &thread_cfg, &thread_metrics);
            let _ = done_tx.send(r);
        })
        .map_err(|e| Error::Iptables {
            what: "start the proxy sync thread".into(),
            detail: e.to_string(),
        })?;

    let mut state = View::new(cfg.node.node_name.clone());
    let mut services = Watcher::new(Arc::clone(&cp), Scope::all(Kind::Service));
    // Only what endpoints are made of is kept of each pod.
    let mut pods = Watcher::new(Arc::clone(&cp), Scope::all(Kind::Pod)).with_transform(strip_pod);
    let mut nodes = Watcher::new(Arc::clone(&cp), Scope::all(Kind::Node));
    let mut leases = Watcher::new(cp, Scope::namespaced(Kind::Lease, NODE_LEASE_NAMESPACE));
    let (mut services_synced, mut pods_synced) = (false, false);
    let (mut nodes_synced, mut leases_synced) = (false, false);
    let mut pending: Option<Instant> = None;
    // While the sync thread has not taken the last view, look again then.
    let mut retry_at: Option<Instant> = None;
    loop {
        let flush_at = pending.map(|p| (p + Duration::from_millis(10)).max(retry_at.unwrap_or(p)));
        tokio::select! {
            u = services.next() => match u {
                Update::Synced => services_synced = true,
                Update::Event(ev) => {
                    state.service_event(&ev);
                    pending.get_or_insert_with(Instant::now);
                }
            },
            u = pods.next() => match u {
                Update::Synced => pods_synced = true,
                Update::Event(ev) => {
                    state.pod_event(&ev, services.store());
                    pending.get_or_insert_with(Instant::now);
                }
            },
            u = nodes.next() => {
                nodes_synced |= matches!(u, Update::Synced);
                if state.nodes_changed(nodes.store(), leases.store(), services.store()) {
                    pending.get_or_insert_with(Instant::now);
                }
            },
            u = leases.next() => {
                leases_synced |= matches!(u, Update::Synced);
                if state.nodes_changed(nodes.store(), leases.store(), services.store()) {
                    pending.get_or_insert_with(Instant::now);
                }
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now).into()), if flush_at.is_some() && services_synced && pods_synced && nodes_synced && leases_synced => {
                if !mailbox.is_empty() {
                    retry_at = Some(Instant::now() + Duration::from_millis(10));
                    continue;
                }
                retry_at = None;
                let at = pending.take().unwrap_or_else(Instant::now);
                state.recompute(services.store(), pods.store());
                metrics.queued(at);
                mailbox.put(Desired { services: state.flatten(), at });
            }
            r = &mut done_rx => return r.unwrap_or(Ok(())),
        }
    }
}

/// The service view kept by the controller.
struct View {
    node_name: String,
    /// Per Service (namespace, name): its ports.
    ports: BTreeMap<(String, String), Vec<ServicePort>>,
    /// Services to recompute at the next flush.
    dirty: BTreeSet<(String, String)>,
    /// Each pod's labels as last seen, to find the Services it left.
    pod_labels: HashMap<ObjectRef, BTreeMap<String, String>>,
    /// Nodes that are registered but hold no heartbeat Lease (it expired:
    /// the agent stopped renewing it). Their pods are not endpoints.
    lost: BTreeSet<String>,
}

impl View {
    fn new(node_name: String) -> View {
        View {
            node_name,
            ports: BTreeMap::new(),
            dirty: BTreeSet::new(),
            pod_labels: HashMap::new(),
            lost: BTreeSet::new(),
        }
    }

    /// Recomputes the lost nodes; when the set changed, every Service is
    /// recomputed (nodes come and go rarely). Returns whether it changed.
    fn nodes_changed(
        &mut self,
        nodes: &BTreeMap<ObjectRef, Object>,
        leases: &BTreeMap<ObjectRef, Object>,
        services: &BTreeMap<ObjectRef, Object>,
    ) -> bool {
        let alive: BTreeSet<&str> = leases.keys().map(|k| k.name.as_str()).collect();
        let lost: BTreeSet<String> = nodes
            .keys()
            .map(|k| k.name.as_str())
            .filter(|n| !alive.contains(n))
            .map(str::to_string)
            .collect();
        if lost == self.lost {
            return false;
        }
        for (n, change) in lost.symmetric_difference(&self.lost).map(|n| {
            (
                n,
                if lost.contains(n) {
                    "lost (no heartbeat lease)"
                } else {
                    "back"
                },
            )
        }) {
            tracing::info!(node = %n, "proxy: node {change}");
        }
        self.lost = lost;
        self.dirty.extend(
            services
                .keys()
                .map(|k| (k.namespace.clone(), k.name.clone())),
        );
        true
    }

    fn service_event(&mut self, ev: &WatchEvent) {
        let o = ev.object();
        self.dirty
            .insert((o.namespace().to_string(), o.name().to_string()));
    }

    /// Marks the Services of the pod's namespace whose selector matches
    /// its labels now or before.
    fn pod_event(&mut self, ev: &WatchEvent, services: &BTreeMap<ObjectRef, Object>) {
        let Object::Pod(pod) = ev.object() else {
            return;
        };
        let key = ObjectRef::of(ev.object());
        let now = match ev {
            WatchEvent::Deleted(_) => None,
            _ => Some(pod.metadata.labels.clone().unwrap_or_default()),
        };
        let before = match &now {
            Some(l) => self.pod_labels.insert(key.clone(), l.clone()),
            None => self.pod_labels.remove(&key),
        };
        for svc in in_namespace(services, Kind::Service, &key.namespace) {
            let Object::Service(s) = svc else { continue };
            let Some(sel) = s.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if [&now, &before]
                .into_iter()
                .any(|l| l.as_ref().is_some_and(|l| selector_matches(sel, Some(l))))
            {
                self.dirty
                    .insert((key.namespace.clone(), svc.name().to_string()));
            }
        }
    }

    fn recompute(
        &mut self,
        services: &BTreeMap<ObjectRef, Object>,
        pods: &BTreeMap<ObjectRef, Object>,
    ) {
        for (ns, name) in std::mem::take(&mut self.dirty) {
            let svc = services
                .get(&ObjectRef::new(Kind::Service, &ns, &name))
                .and_then(|o| match o {
                    Object::Service(s) => Some(s),
                    _ => None,
                });
            match svc {
                Some(s) => {
                    // The store's pods themselves, not copies: a Service is
                    // recomputed against every pod of its namespace.
                    let lost = &self.lost;
                    let ns_pods = in_namespace(pods, Kind::Pod, &ns)
                        .filter_map(|o| match o {
                            Object::Pod(p) => Some(p),
                            _ => None,
                        })
                        .filter(|p| !on_lost_node(lost, p));
                    let ports = ports_of(s, ns_pods, &self.node_name);
                    self.ports.insert((ns, name), ports);
                }
                None => {
                    self.ports.remove(&(ns, name));
                }
            }
        }
    }

    fn flatten(&self) -> Vec<ServicePort> {
        self.ports.values().flatten().cloned().collect()
    }
}

/// The proxy's Pod watch transform (see [`strip_for_endpoints`]).
fn strip_pod(o: &mut Object) {
    if let Object::Pod(p) = o {
        strip_for_endpoints(p);
    }
}

/// Whether `pod` runs on one of the `lost` nodes.
fn on_lost_node(lost: &BTreeSet<String>, pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| lost.contains(n))
}

/// The objects of `kind` in `namespace`, from a watcher's store.
fn in_namespace<'a>(
    store: &'a BTreeMap<ObjectRef, Object>,
    kind: Kind,
    namespace: &'a str,
) -> impl Iterator<Item = &'a Object> + 'a {
    store
        .range(ObjectRef::new(kind, namespace, "")..)
        .take_while(move |(k, _)| k.kind == kind && k.namespace == namespace)
        .map(|(_, o)| o)
}

/// The sync thread: enters the namespace, picks the backend, then syncs
/// whenever the view changed (no sooner than the min sync period after the
/// last sync), a full sync is due, or the canary is gone.
fn sync_thread(rx: &Mailbox, cfg: &ProxyConfig, metrics: &Metrics) -> Result<()> {
    let ns = cfg.netns.as_ref().map(hostnet::NetNs::open).transpose()?;
    let _guard = ns.as_ref().map(hostnet::NetNs::enter).transpose()?;
    if cfg.node.localhost_nodeports {
        hostnet::sysctl::ensure("net/ipv4/conf/all/route_localnet", "1")?;
    }
    let backend = cfg.backend.unwrap_or_else(Backend::detect);
    tracing::info!(?backend, "proxy: iptables backend");
    let mut syncer = Syncer::new(Arc::new(ExecIptables::new(backend)), cfg.node.clone())
        .with_full_sync_period(cfg.full_sync_period);
    match NetlinkConntrack::open() {
        Ok(ct) => syncer = syncer.with_conntrack(Arc::new(ct)),
        Err(e) => tracing::warn!(error = %e, "proxy: no UDP conntrack cleanup"),
    }

    let mut desired: Option<Vec<ServicePort>> = None;
    let mut queued: Option<Instant> = None;
    let mut last_sync: Option<Instant> = None;
    let mut retry_after = cfg.min_sync_period;
    let mut last_canary = Instant::now();
    loop {
        let now = Instant::now();
        let earliest = last_sync.map_or(now, |t| t + retry_after);
        let dirty = queued.is_some() || syncer.next_is_full();
        let wake = if dirty && desired.is_some() {
            earliest
        } else {
            (last_canary + cfg.canary_period).min(now + Duration::from_secs(1))
        };
        match rx.take(wake.saturating_duration_since(now)) {
            Ok(Some(d)) => {
                queued = Some(queued.map_or(d.at, |q| q.max(d.at)));
                desired = Some(d.services);
            }
            Ok(None) => {}
            Err(()) => return Ok(()),
        }
        let now = Instant::now();
        if now >= last_canary + cfg.canary_period && last_sync.is_some() {
            syncer.check_canary();
            last_canary = now;
        }
        let Some(view) = &desired else { continue };
        let due = queued.is_some() || syncer.next_is_full();
        if !due || last_sync.is_some_and(|t| now < t + retry_after) {
            continue;
        }
        last_sync = Some(now);
        match syncer.sync(view) {
            Ok(outcome) => {
                metrics.synced(&outcome, queued.take());
                retry_after = cfg.min_sync_period;
                tracing::debug!(full = outcome.full, written = outcome.chains_written, took = ?outcome.duration, "proxy: synced");
            }
            Err(e) => {
                metrics.restore_failed();
                retry_after = cfg.min_sync_period.max(Duration::from_secs(1));
                tracing::warn!(error = %e, "proxy: sync failed; retrying with a full sync");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: usize) -> Desired {
        Desired {
            services: Vec::with_capacity(n),
            at: Instant::now(),
        }
    }

    #[test]
    fn the_mailbox_holds_only_the_newest_view_and_reports_its_close() {
        let m = Mailbox::default();
        assert!(m.is_empty());
        assert!(matches!(m.take(Duration::ZERO), Ok(None)));
        m.put(view(1));
        m.put(view(2));
        assert!(!m.is_empty());
        let got = m.take(Duration::ZERO).unwrap().unwrap();
        assert_eq!(
            got.services.capacity(),
            2,
            "the newer view replaced the older"
        );
        assert!(m.is_empty());
        // A waiting sync thread wakes when the controller goes.
        let m = Arc::new(m);
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.take(Duration::from_secs(10)).is_err())
        };
        drop(CloseOnDrop(Arc::clone(&m)));
        assert!(waiter.join().unwrap(), "closed");
    }
}
