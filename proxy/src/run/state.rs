//! The controller's state: each Service's ports as last computed, which
//! Services a change touched, the lost nodes, and two label indexes that
//! keep a change's cost proportional to what it touches. A pod event
//! looks only at the Services whose selectors share one of its labels,
//! and a Service is recomputed against only the pods carrying its
//! selector's rarest label, not every object of the namespace (with 10k
//! Services and 50k pods in one namespace a full scan is 500M selector
//! checks).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use controlplane::api::{ObjectRef, WatchEvent};
use controlplane::endpoints::{selector_matches, strip_for_endpoints};
use controlplane::{Kind, Object};
use k8s_openapi::api::core::v1::{Pod, Service};

use crate::view::{ports_of, ServicePort};

type Labels = BTreeMap<String, String>;

/// Objects of one kind by (namespace, label pair), and the labels (or, for
/// Services, the selector) each was last recorded with.
#[derive(Debug, Default)]
pub struct LabelIndex {
    /// namespace -> "key\0value" -> names.
    by_pair: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// (namespace, name) -> labels.
    labels: HashMap<(String, String), Labels>,
}

fn pair(k: &str, v: &str) -> String {
    format!("{k}\0{v}")
}

impl LabelIndex {
    /// Records `labels` for `ns/name` (`None`: the object is gone) and
    /// returns what was recorded before.
    pub fn set(&mut self, ns: &str, name: &str, labels: Option<Labels>) -> Option<Labels> {
        let key = (ns.to_string(), name.to_string());
        let before = self.labels.remove(&key);
        if let Some(old) = &before {
            if let Some(pairs) = self.by_pair.get_mut(ns) {
                for (k, v) in old {
                    let p = pair(k, v);
                    if let Some(names) = pairs.get_mut(&p) {
                        names.remove(name);
                        if names.is_empty() {
                            pairs.remove(&p);
                        }
                    }
                }
                if pairs.is_empty() {
                    self.by_pair.remove(ns);
                }
            }
        }
        if let Some(new) = labels {
            let pairs = self.by_pair.entry(ns.to_string()).or_default();
            for (k, v) in &new {
                pairs
                    .entry(pair(k, v))
                    .or_default()
                    .insert(name.to_string());
            }
            self.labels.insert(key, new);
        }
        before
    }

    /// The names in `ns` carrying the rarest pair of `selector`: a superset
    /// of those carrying all of it (empty for an empty selector, which
    /// selects nothing).
    pub fn candidates(&self, ns: &str, selector: &Labels) -> Vec<&str> {
        let Some(pairs) = self.by_pair.get(ns) else {
            return Vec::new();
        };
        let mut rarest: Option<&BTreeSet<String>> = None;
        for (k, v) in selector {
            match pairs.get(&pair(k, v)) {
                // Nothing carries this pair: nothing carries all of them.
                None => return Vec::new(),
                Some(names) if rarest.is_none_or(|r| names.len() < r.len()) => rarest = Some(names),
                Some(_) => {}
            }
        }
        rarest
            .map(|r| r.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The names in `ns` whose recorded labels share a pair with `labels`.
    pub fn sharing(&self, ns: &str, labels: &Labels) -> BTreeSet<&str> {
        let Some(pairs) = self.by_pair.get(ns) else {
            return BTreeSet::new();
        };
        labels
            .iter()
            .filter_map(|(k, v)| pairs.get(&pair(k, v)))
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

/// The service view kept by the controller.
pub struct View {
    node_name: String,
    /// Per Service (namespace, name): its ports.
    ports: BTreeMap<(String, String), Vec<ServicePort>>,
    /// Services to recompute at the next flush.
    dirty: BTreeSet<(String, String)>,
    /// Pods by label.
    pods: LabelIndex,
    /// Services by selector.
    selectors: LabelIndex,
    /// Nodes that are registered but hold no heartbeat Lease (it expired:
    /// the agent stopped renewing it). Their pods are not endpoints.
    lost: BTreeSet<String>,
}

impl View {
    pub fn new(node_name: String) -> View {
        View {
            node_name,
            ports: BTreeMap::new(),
            dirty: BTreeSet::new(),
            pods: LabelIndex::default(),
            selectors: LabelIndex::default(),
            lost: BTreeSet::new(),
        }
    }

    /// Recomputes the lost nodes; when the set changed, every Service is
    /// recomputed (nodes come and go rarely). Returns whether it changed.
    pub fn nodes_changed(
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
        for n in lost.symmetric_difference(&self.lost) {
            let change = if lost.contains(n) {
                "lost (no heartbeat lease)"
            } else {
                "back"
            };
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

    pub fn service_event(&mut self, ev: &WatchEvent) {
        let o = ev.object();
        let (ns, name) = (o.namespace(), o.name());
        let selector = match (ev, o) {
            (WatchEvent::Deleted(_), _) => None,
            (_, Object::Service(s)) => Some(selector_of(s).cloned().unwrap_or_default()),
            _ => None,
        };
        self.selectors.set(ns, name, selector);
        self.dirty.insert((ns.to_string(), name.to_string()));
    }

    /// Marks the Services of the pod's namespace whose selector matches
    /// its labels now or before: only those sharing a label with it are
    /// looked at, and checked against the store's Service.
    pub fn pod_event(&mut self, ev: &WatchEvent, services: &BTreeMap<ObjectRef, Object>) {
        let Object::Pod(pod) = ev.object() else {
            return;
        };
        let key = ObjectRef::of(ev.object());
        let now = match ev {
            WatchEvent::Deleted(_) => None,
            _ => Some(pod.metadata.labels.clone().unwrap_or_default()),
        };
        let before = self.pods.set(&key.namespace, &key.name, now.clone());
        let mut touched = Vec::new();
        for labels in [&now, &before].into_iter().flatten() {
            for svc in self.selectors.sharing(&key.namespace, labels) {
                let current = services.get(&ObjectRef::new(Kind::Service, &key.namespace, svc));
                let Some(Object::Service(s)) = current else {
                    continue;
                };
                if selector_of(s).is_some_and(|sel| selector_matches(sel, Some(labels))) {
                    touched.push((key.namespace.clone(), svc.to_string()));
                }
            }
        }
        self.dirty.extend(touched);
    }

    /// Recomputes the Services marked dirty, each against the pods of its
    /// namespace that carry its selector's rarest label.
    pub fn recompute(
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
            let Some(s) = svc else {
                self.ports.remove(&(ns, name));
                continue;
            };
            let selector = selector_of(s).cloned().unwrap_or_default();
            let lost = &self.lost;
            let candidates = self
                .pods
                .candidates(&ns, &selector)
                .into_iter()
                .filter_map(|p| match pods.get(&ObjectRef::new(Kind::Pod, &ns, p)) {
                    Some(Object::Pod(p)) => Some(p),
                    _ => None,
                })
                .filter(|p| !on_lost_node(lost, p));
            let ports = ports_of(s, candidates, &self.node_name);
            self.ports.insert((ns, name), ports);
        }
    }

    pub fn flatten(&self) -> Vec<ServicePort> {
        self.ports.values().flatten().cloned().collect()
    }
}

fn selector_of(s: &Service) -> Option<&Labels> {
    s.spec.as_ref().and_then(|s| s.selector.as_ref())
}

/// The proxy's Pod watch transform (see [`strip_for_endpoints`]).
pub fn strip_pod(o: &mut Object) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn object(v: serde_json::Value) -> Object {
        Object::from_value(v).expect("object")
    }

    fn service(name: &str, selector: serde_json::Value) -> Object {
        object(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "selector": selector,
                     "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}))
    }

    fn pod(name: &str, ip: &str, labels: serde_json::Value) -> Object {
        object(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    type Store = BTreeMap<ObjectRef, Object>;

    /// Applies `ev` to `store` and tells the view, as the watchers do.
    fn apply(view: &mut View, services: &mut Store, pods: &mut Store, ev: WatchEvent) {
        let o = ev.object().clone();
        let store = if matches!(o, Object::Service(_)) {
            &mut *services
        } else {
            &mut *pods
        };
        match &ev {
            WatchEvent::Deleted(_) => store.remove(&ObjectRef::of(&o)),
            _ => store.insert(ObjectRef::of(&o), o.clone()),
        };
        match o {
            Object::Service(_) => view.service_event(&ev),
            _ => view.pod_event(&ev, services),
        }
    }

    fn endpoints(view: &View) -> Vec<String> {
        view.flatten()
            .iter()
            .flat_map(|sp| sp.endpoints.iter().map(|e| e.ip.to_string()))
            .collect()
    }

    #[test]
    fn the_view_follows_relabels_selector_changes_and_deletions() {
        let (mut v, mut svcs, mut pods) = (View::new("n1".into()), Store::new(), Store::new());
        let web = serde_json::json!({"app": "web"});
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Added(pod("a", "10.244.0.2", web.clone())),
        );
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Added(service("s", web.clone())),
        );
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Added(pod("b", "10.244.0.3", web.clone())),
        );
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Added(pod("c", "10.244.0.4", serde_json::json!({"app": "db"}))),
        );
        v.recompute(&svcs, &pods);
        assert_eq!(endpoints(&v), ["10.244.0.2", "10.244.0.3"]);
        assert!(v.dirty.is_empty());

        // b relabelled away from the selector: the Service is touched.
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Modified(pod("b", "10.244.0.3", serde_json::json!({"app": "other"}))),
        );
        assert_eq!(v.dirty.len(), 1);
        v.recompute(&svcs, &pods);
        assert_eq!(endpoints(&v), ["10.244.0.2"]);
        // A pod no selector matches touches nothing.
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Modified(pod(
                "c",
                "10.244.0.4",
                serde_json::json!({"app": "db", "x": "y"}),
            )),
        );
        assert!(v.dirty.is_empty());

        // The selector now names db: c, not a.
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Modified(service("s", serde_json::json!({"app": "db"}))),
        );
        v.recompute(&svcs, &pods);
        assert_eq!(endpoints(&v), ["10.244.0.4"]);
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Deleted(pod(
                "c",
                "10.244.0.4",
                serde_json::json!({"app": "db", "x": "y"}),
            )),
        );
        v.recompute(&svcs, &pods);
        assert!(endpoints(&v).is_empty());
        apply(
            &mut v,
            &mut svcs,
            &mut pods,
            WatchEvent::Deleted(service("s", web)),
        );
        v.recompute(&svcs, &pods);
        assert!(v.flatten().is_empty());
    }

    #[test]
    fn the_index_narrows_to_the_rarest_pair_and_forgets_old_labels() {
        let mut ix = LabelIndex::default();
        for i in 0..10 {
            ix.set("a", &format!("p{i}"), Some(labels(&[("tier", "web")])));
        }
        ix.set("a", "p3", Some(labels(&[("tier", "web"), ("app", "x")])));
        ix.set("b", "q", Some(labels(&[("tier", "web"), ("app", "x")])));
        let sel = labels(&[("tier", "web"), ("app", "x")]);
        assert_eq!(
            ix.candidates("a", &sel),
            ["p3"],
            "the rarer pair, this namespace"
        );
        assert!(ix.candidates("a", &labels(&[("app", "y")])).is_empty());
        assert!(
            ix.candidates("a", &Labels::new()).is_empty(),
            "empty selects nothing"
        );
        assert_eq!(ix.candidates("a", &labels(&[("tier", "web")])).len(), 10);

        // Relabelled: the old pair no longer finds it; gone: nothing does.
        let before = ix.set("a", "p3", Some(labels(&[("tier", "db")])));
        assert_eq!(before, Some(sel.clone()));
        assert!(ix.candidates("a", &sel).is_empty());
        assert_eq!(ix.candidates("a", &labels(&[("tier", "web")])).len(), 9);
        ix.set("a", "p3", None);
        assert!(ix.candidates("a", &labels(&[("tier", "db")])).is_empty());

        let shared = ix.sharing("b", &labels(&[("app", "x"), ("zone", "z")]));
        assert_eq!(shared.into_iter().collect::<Vec<_>>(), ["q"]);
        for i in 0..10 {
            ix.set("a", &format!("p{i}"), None);
        }
        ix.set("b", "q", None);
        assert!(
            ix.by_pair.is_empty() && ix.labels.is_empty(),
            "nothing left behind"
        );
    }
}
