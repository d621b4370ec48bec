//! The EndpointSlice controller: keeps `discovery.k8s.io/v1` EndpointSlices
//! for every Service with a selector, from the pods it selects, as
//! kube-controller-manager's does — the proxy's and the cluster DNS's
//! input on every node. Each endpoint carries the conditions kube-proxy
//! reads (`ready`, `serving`, `terminating`), its node, zone, hostname and
//! pod. Pods on a node whose heartbeat Lease expired are not serving
//! (standing in for the node lifecycle controller's NotReady marking), so
//! a lost node's endpoints leave every Service within the lease duration.
//!
//! Cost stays with what changed: pods and Service selectors are indexed
//! by label ([`index::LabelIndex`]), so a pod event queues only the
//! Services selecting it, and a Service sync reads only the pods carrying
//! its selector's rarest label and its own slices. [`plan`] decides.

pub mod index;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::endpoints::{selector_matches, SliceIndex};
use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::expectations::Expectations;
use crate::informer::Cache;
use crate::pods::random_suffix;
use crate::{Error, Result};
use index::{LabelIndex, Labels};
use plan::{Action, NodeInfo};

/// The namespace of the nodes' heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The node label naming its zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Default)]
struct Inner {
    /// Pods by label.
    pods: LabelIndex,
    /// Services by selector.
    selectors: LabelIndex,
    /// Each Service's slices.
    slices: SliceIndex,
    /// Registered nodes without a heartbeat Lease.
    lost: BTreeSet<String>,
}

/// The controller's indexes, fed by the informers' handlers.
#[derive(Default)]
pub struct Index {
    inner: Mutex<Inner>,
}

fn labels_of(o: &Object) -> Labels {
    o.meta().labels.clone().unwrap_or_default()
}

fn selector_of(s: &Service) -> Option<&Labels> {
    s.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

fn service_key(ns: &str, name: &str) -> ObjectRef {
    ObjectRef::new(Kind::Service, ns, name)
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a pod change; returns the Services that selected it before
    /// or select it now.
    pub fn pod_changed(&self, old: Option<&Object>, new: Option<&Object>) -> Vec<ObjectRef> {
        let Some(o) = new.or(old) else {
            return Vec::new();
        };
        let (ns, name) = (o.namespace().to_string(), o.name().to_string());
        let mut inner = self.lock();
        inner.pods.set(&ns, &name, new.map(labels_of));
        let mut out = BTreeSet::new();
        for labels in [old, new].into_iter().flatten().map(labels_of) {
            for svc in inner.selectors.sharing(&ns, &labels) {
                let selects = inner
                    .selectors
                    .get(&ns, svc)
                    .is_some_and(|sel| selector_matches(sel, Some(&labels)));
                if selects {
                    out.insert(service_key(&ns, svc));
                }
            }
        }
        out.into_iter().collect()
    }

    /// Records a Service change; returns its key.
    pub fn service_changed(&self, old: Option<&Object>, new: Option<&Object>) -> Option<ObjectRef> {
        let o = new.or(old)?;
        let selector = match new {
            Some(Object::Service(s)) => Some(selector_of(s).cloned().unwrap_or_default()),
            _ => None,
        };
        self.lock().selectors.set(o.namespace(), o.name(), selector);
        Some(service_key(o.namespace(), o.name()))
    }

    /// Records a slice change; returns the Services concerned.
    pub fn slice_changed(&self, old: Option<&Object>, new: Option<&Object>) -> Vec<ObjectRef> {
        let Some(o) = new.or(old) else {
            return Vec::new();
        };
        let now = new.and_then(|n| SliceIndex::service_label(n.meta()));
        let touched = self.lock().slices.set(o.namespace(), o.name(), now);
        touched
            .iter()
            .map(|(ns, svc)| service_key(ns, svc))
            .collect()
    }

    /// Recomputes the lost nodes from the caches; whether they changed.
    pub fn nodes_changed(&self, nodes: &Cache, leases: &Cache) -> bool {
        let alive: BTreeSet<String> = leases
            .in_namespace(NODE_LEASE_NAMESPACE)
            .iter()
            .map(|l| l.name().to_string())
            .collect();
        let lost: BTreeSet<String> = nodes
            .all()
            .iter()
            .map(|n| n.name().to_string())
            .filter(|n| !alive.contains(n))
            .collect();
        let mut inner = self.lock();
        if lost == inner.lost {
            return false;
        }
        for n in lost.symmetric_difference(&inner.lost) {
            let change = if lost.contains(n) {
                "lost (no heartbeat Lease): its endpoints are not serving"
            } else {
                "back"
            };
            tracing::info!(node = %n, "endpointslice: node {change}");
        }
        inner.lost = lost;
        true
    }
}

/// The EndpointSlice controller.
pub struct EndpointSliceController {
    pub cp: Arc<dyn ControlPlane>,
    pub services: Cache,
    pub pods: Cache,
    pub slices: Cache,
    pub nodes: Cache,
    pub index: Arc<Index>,
    /// Slices created and deleted but not yet in the cache: a sync waits
    /// for them (the slice events queue it again), so a lagging cache
    /// never makes it create a Service's slices twice.
    pub expectations: Expectations,
}

impl EndpointSliceController {
    /// The node facts endpoints carry.
    fn node_info(&self, lost: &BTreeSet<String>, node: &str) -> NodeInfo {
        let zone = match self.nodes.get(&ObjectRef::new(Kind::Node, "", node)) {
            Some(n) => n
                .meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL).cloned()),
            None => None,
        };
        NodeInfo {
            lost: lost.contains(node),
            zone,
        }
    }

    /// Brings the slices of Service `key` in line with its pods.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        let seen = |n: &str| {
            self.slices
                .get(&ObjectRef::new(Kind::EndpointSlice, ns, n))
                .map(|s| s.meta().deletion_timestamp.is_some())
        };
        if !self.expectations.satisfied_with(key, seen) {
            return Ok(None);
        }
        let (pods, slices, lost) = {
            let inner = self.index.lock();
            let slice_names: Vec<String> = inner
                .slices
                .slices_of(ns, name)
                .map(str::to_string)
                .collect();
            let selector = inner.selectors.get(ns, name).cloned().unwrap_or_default();
            let pod_names: Vec<String> = inner
                .pods
                .candidates(ns, &selector)
                .into_iter()
                .map(str::to_string)
                .collect();
            (pod_names, slice_names, inner.lost.clone())
        };
        let existing: Vec<EndpointSlice> = slices
            .iter()
            .filter_map(
                |s| match self.slices.get(&ObjectRef::new(Kind::EndpointSlice, ns, s)) {
                    Some(Object::EndpointSlice(s)) if plan::managed_for(&s, name) => Some(*s),
                    _ => None,
                },
            )
            .collect();
        let svc = match self.services.get(key) {
            Some(Object::Service(s)) => Some(*s),
            _ => None,
        };
        let desired = svc.as_ref().and_then(|svc| {
            let pods: Vec<Pod> = pods
                .iter()
                .filter_map(|p| match self.pods.get(&ObjectRef::new(Kind::Pod, ns, p)) {
                    Some(Object::Pod(p)) => Some(*p),
                    _ => None,
                })
                .collect();
            plan::desired(svc, &pods, |n| self.node_info(&lost, n))
        });
        let actions = match (svc, desired) {
            (Some(svc), Some(desired)) => {
                plan::plan(&svc, &desired, &existing, || slice_name(name))
            }
            // Gone, or no selector: our slices go (others' stay).
            _ => existing
                .iter()
                .map(|s| Action::Delete(s.metadata.name.clone().unwrap_or_default()))
                .collect(),
        };
        let named = |a: &Action| match a {
            Action::Create(s) => (s.metadata.name.clone(), None),
            Action::Delete(n) => (None, Some(n.clone())),
            Action::Update(_) => (None, None),
        };
        let adds = actions.iter().filter_map(|a| named(a).0).collect();
        let dels = actions.iter().filter_map(|a| named(a).1).collect();
        self.expectations.expect(key, adds, dels);
        let mut left = actions.into_iter();
        while let Some(a) = left.next() {
            let (add, del) = named(&a);
            if let Err(e) = self.apply(ns, a).await {
                // Neither this write nor the ones not made will show.
                for (add, del) in std::iter::once((add, del)).chain(left.map(|a| named(&a))) {
                    if let Some(n) = add.or(del) {
                        self.expectations.observed(key, &n);
                    }
                }
                return Err(e);
            }
        }
        Ok(None)
    }

    async fn apply(&self, ns: &str, action: Action) -> Result<()> {
        match action {
            Action::Create(s) => {
                let what = format!(
                    "create EndpointSlice {ns}/{}",
                    s.metadata.name.as_deref().unwrap_or_default()
                );
                self.cp
                    .create(Object::from(s), None)
                    .await
                    .map_err(|e| Error::write(what, e))?;
            }
            Action::Update(s) => {
                let what = format!(
                    "update EndpointSlice {ns}/{}",
                    s.metadata.name.as_deref().unwrap_or_default()
                );
                match self.cp.update(Object::from(s), None).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::write(what, e)),
                }
            }
            Action::Delete(name) => {
                let key = ObjectRef::new(Kind::EndpointSlice, ns, &name);
                match self.cp.delete(&key, None).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::write(format!("delete EndpointSlice {key}"), e)),
                }
            }
        }
        Ok(())
    }
}

/// `<service>-<5 random>`, the Service's name cut so the whole fits a
/// DNS label's 63 characters (kube's generateName prefix).
fn slice_name(service: &str) -> String {
    let prefix: String = service.chars().take(57).collect();
    format!("{prefix}-{}", random_suffix())
}
