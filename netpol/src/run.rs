//! The controller the agent starts: list+watch NetworkPolicies, Pods and
//! Namespaces into the engine, and sync it (10 ms after the first change
//! of a burst, so a change is enforced well within 100 ms of arriving).
//! The kubelet reaches the same engines (one per address family) through
//! the [`Gate`]; both hold an engine's lock while they change and sync
//! it, so a pod the gate programmed is in the kernel before the kubelet
//! starts its first container.

use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use controlplane::api::{Scope, WatchEvent};
use controlplane::watcher::{Update, Watcher};
use controlplane::{ControlPlane, Kind, Object};
use k8s_openapi::api::core::v1::Pod;

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Changes arriving within this of the first are sent together.
    pub batch_delay: Duration,
    /// How often the table's handle is checked (someone's `nft flush
    /// ruleset` is repaired by a full sync).
    pub canary_period: Duration,
    /// How long the gate waits for the first lists before it refuses.
    pub gate_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            batch_delay: Duration::from_millis(10),
            canary_period: Duration::from_secs(5),
            gate_timeout: Duration::from_secs(60),
        }
    }
}

/// The engines (one per address family of the node's pods), shared by
/// the controller and the gate, and whether their first lists are in
/// (before that they must not sync: they would program pods as if there
/// were no policies).
pub struct Shared {
    engines: Vec<Mutex<Engine>>,
    ready: Mutex<bool>,
    ready_cv: Condvar,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Shares `engines`, recording into `metrics`.
    pub fn new(engines: Vec<Engine>, metrics: Arc<Metrics>) -> Arc<Shared> {
        Arc::new(Shared {
            engines: engines.into_iter().map(Mutex::new).collect(),
            ready: Mutex::new(false),
            ready_cv: Condvar::new(),
            metrics,
        })
    }

    fn locked(&self) -> impl Iterator<Item = MutexGuard<'_, Engine>> {
        self.engines
            .iter()
            .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_ready(&self) {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.ready_cv.notify_all();
    }

    /// Waits up to `timeout` for the first lists.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let guard = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .ready_cv
            .wait_timeout_while(guard, timeout, |r| !*r)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// Syncs `engine` if it has changes, recording the outcome.
    fn sync(&self, engine: &mut Engine) -> Result<()> {
        if !engine.dirty() {
            return Ok(());
        }
        match engine.sync() {
            Ok(o) => {
                self.metrics.synced(&o, engine.size());
                tracing::debug!(full = o.full, elements = o.elements, took = ?o.duration, "network policy: synced");
                Ok(())
            }
            Err(e) => {
                self.metrics.failed();
                Err(e)
            }
        }
    }
}

/// What the kubelet calls between CNI ADD and the first container.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Gate {
    /// The gate to `shared`'s engine.
    pub fn new(shared: Arc<Shared>, cfg: &Config) -> Gate {
        Gate {
            shared,
            timeout: cfg.gate_timeout,
        }
    }

    /// Programs `pod` at `ips` (its policies' sets and
    /// [`crate::ruleset::names::READY`], in the table of each address's
    /// family) and returns once the kernel holds it. Blocks: call it off
    /// the async runtime.
    pub fn pod_networked(&self, pod: &Pod, ips: &[String]) -> Result<()> {
        let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
        let start = Instant::now();
        if !self.shared.wait_ready(self.timeout) {
            return Err(Error::NotReady(format!(
                "the first lists of policies, pods and namespaces did not arrive within {:?}",
                self.timeout
            )));
        }
        for mut engine in self.shared.locked() {
            let family = engine.family();
            if let Some(ip) = ips.iter().find(|ip| family.holds(**ip)) {
                engine.pod_networked(pod, *ip);
                self.shared.sync(&mut engine)?;
            }
        }
        self.shared.metrics.gated(start.elapsed());
        Ok(())
    }
}

fn key(obj: &Object) -> (String, String) {
    let m = obj.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Folds one watch event into the engine.
fn apply(engine: &mut Engine, ev: &WatchEvent) {
    let gone = matches!(ev, WatchEvent::Deleted(_));
    match ev.object() {
        Object::NetworkPolicy(np) => engine.set_policy(key(ev.object()), (!gone).then_some(np)),
        Object::Pod(p) => engine.set_pod(key(ev.object()), (!gone).then_some(p)),
        Object::Namespace(ns) => {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let labels = (!gone).then(|| ns.metadata.labels.clone().unwrap_or_default());
            engine.set_namespace(&name, labels);
        }
        _ => {}
    }
}

/// Runs the controller until the future is dropped (it returns only when
/// its blocking sync task cannot run). A failed sync is retried, full,
/// a second later; nothing is synced before the first lists are in.
pub async fn run(cp: Arc<dyn ControlPlane>, shared: Arc<Shared>, cfg: Config) -> Result<()> {
    let mut policies = Watcher::new(Arc::clone(&cp), Scope::all(Kind::NetworkPolicy));
    let mut pods =
        Watcher::new(Arc::clone(&cp), Scope::all(Kind::Pod)).with_transform(crate::pods::strip_pod);
    let mut namespaces = Watcher::new(cp, Scope::all(Kind::Namespace));
    let mut synced = [false; 3];
    let mut ready = false;
    let mut pending: Option<tokio::time::Instant> = None;
    let mut canary = tokio::time::Instant::now() + cfg.canary_period;
    loop {
        let all_synced = synced.iter().all(|s| *s);
        let wake = pending.map_or(canary, |p| (p + cfg.batch_delay).min(canary));
        let update = tokio::select! {
            u = policies.next() => Some((0, u)),
            u = pods.next() => Some((1, u)),
            u = namespaces.next() => Some((2, u)),
            _ = tokio::time::sleep_until(wake), if all_synced => None,
        };
        match update {
            Some((i, Update::Synced)) => {
                synced[i] = true;
                pending.get_or_insert_with(tokio::time::Instant::now);
                continue;
            }
            Some((_, Update::Event(ev))) => {
                for mut engine in shared.locked() {
                    apply(&mut engine, &ev);
                }
                pending.get_or_insert_with(tokio::time::Instant::now);
                continue;
            }
            None => {}
        }
        let now = tokio::time::Instant::now();
        let canary_due = now >= canary;
        if canary_due {
            canary = now + cfg.canary_period;
        }
        if pending.is_none_or(|p| now < p + cfg.batch_delay) && !canary_due {
            continue;
        }
        let s = Arc::clone(&shared);
        let r = tokio::task::spawn_blocking(move || {
            let mut dropped = std::collections::BTreeMap::new();
            let mut result = Ok(());
            for mut engine in s.locked() {
                if canary_due && ready {
                    engine.check_canary();
                    match engine.dropped() {
                        Ok(d) => {
                            for (reason, n) in d {
                                *dropped.entry(reason).or_insert(0) += n;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "network policy: read drop counters"),
                    }
                }
                // Every family syncs, even after another failed.
                let r = s.sync(&mut engine);
                result = result.and(r);
            }
            if canary_due && ready {
                s.metrics.set_dropped(dropped.into_iter().collect());
            }
            result
        })
        .await
        .map_err(|e| Error::NotReady(format!("the sync task failed: {e}")))?;
        pending = None;
        match r {
            Ok(()) if !ready => {
                // The gate opens after the first sync: pods the kubelet
                // adopts after a restart meet every policy.
                ready = true;
                shared.set_ready();
                tracing::info!("network policy: enforcing");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "network policy: sync failed; retrying with a full sync");
                pending = Some(now + Duration::from_secs(1));
            }
        }
    }
}
