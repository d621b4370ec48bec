//! The controller's state: each Service's ports as last computed, which
//! Services a change touched, and which EndpointSlices belong to each
//! Service (by their `kubernetes.io/service-name` label), so that a slice
//! event recomputes only its own Service from only its own slices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use controlplane::api::WatchEvent;
use controlplane::endpoints::{merge_slices, SliceEndpoints, SliceIndex, SERVICE_NAME_LABEL};
use controlplane::watcher::KeepMeta;
use controlplane::Object;

use crate::view::{service_ports_of, with_endpoints, Addr, ServiceKey as Key, ServicePort};

/// Services recomputed by a flush: each one's new ports, or `None` when it
/// is gone.
pub type Changes<A = Ipv4Addr> = BTreeMap<Key, Option<Arc<[ServicePort<A>]>>>;

/// The service view kept by the controller. It keeps its own projection
/// of every event (kube-proxy's change trackers do the same): each
/// Service as its ports without endpoints, and of each slice only what it
/// adds to its Service's endpoints; the watchers keep only revisions.
/// One view per address family: each keeps its family's ClusterIPs and
/// slices (`addressType`) only.
pub struct View<A: Addr = Ipv4Addr> {
    node_name: String,
    /// Per Service (namespace, name): its ports.
    ports: BTreeMap<Key, Arc<[ServicePort<A>]>>,
    /// Services to recompute at the next flush.
    dirty: BTreeSet<Key>,
    /// Each Service's slices.
    slices: SliceIndex,
    /// Each Service's ports, without endpoints.
    services: HashMap<Key, Box<[ServicePort<A>]>>,
    /// Each slice's contribution, by (namespace, slice name).
    parts: HashMap<Key, SliceEndpoints>,
}

impl<A: Addr> View<A> {
    pub fn new(node_name: String) -> View<A> {
        View {
            node_name,
            ports: BTreeMap::new(),
            dirty: BTreeSet::new(),
            slices: SliceIndex::default(),
            services: HashMap::new(),
            parts: HashMap::new(),
        }
    }

    pub fn service_event(&mut self, ev: WatchEvent) {
        let deleted = matches!(ev, WatchEvent::Deleted(_));
        let o = ev.object();
        let key = (o.namespace().to_string(), o.name().to_string());
        let Object::Service(s) = o else {
            return;
        };
        if deleted {
            self.services.remove(&key);
        } else {
            self.services
                .insert(key.clone(), service_ports_of(s).into_boxed_slice());
        }
        self.dirty.insert(key);
    }

    /// Files the slice under its Service (moving it if its label changed),
    /// keeps what it contributes, and marks the Services concerned.
    pub fn slice_event(&mut self, ev: WatchEvent) {
        let deleted = matches!(ev, WatchEvent::Deleted(_));
        let Object::EndpointSlice(s) = ev.into_object() else {
            return;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        let name = s.metadata.name.as_deref().unwrap_or_default();
        // A slice of another family is as good as absent.
        let deleted = deleted || s.address_type != A::NAME;
        let now = (!deleted)
            .then(|| SliceIndex::service_label(&s.metadata))
            .flatten();
        let touched = self.slices.set(ns, name, now);
        self.dirty.extend(touched);
        let key = (ns.to_string(), name.to_string());
        if deleted {
            self.parts.remove(&key);
        } else {
            self.parts.insert(key, SliceEndpoints::of(&s));
        }
    }

    /// Recomputes the Services marked dirty from their own slices;
    /// returns those whose ports changed.
    pub fn recompute(&mut self) -> Changes<A> {
        let mut changes = Changes::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(s) = self.services.get(&key) else {
                if self.ports.remove(&key).is_some() {
                    changes.insert(key, None);
                }
                continue;
            };
            let (ns, name) = (&key.0, &key.1);
            let own = self
                .slices
                .slices_of(ns, name)
                .filter_map(|n| self.parts.get(&(ns.clone(), n.to_string())));
            let subsets = merge_slices(ns, name, own);
            let ports: Arc<[ServicePort<A>]> = with_endpoints(s, &subsets, &self.node_name).into();
            if self.ports.get(&key) != Some(&ports) {
                self.ports.insert(key.clone(), Arc::clone(&ports));
                changes.insert(key, Some(ports));
            }
        }
        changes
    }

    #[cfg(test)]
    pub fn flatten(&self) -> Vec<ServicePort<A>> {
        self.ports
            .values()
            .flat_map(|p| p.iter().cloned())
            .collect()
    }
}

/// The proxy's EndpointSlice watch transform: keeps what the proxy reads
/// (name, namespace, the Service label, resourceVersion; per endpoint its
/// addresses, conditions and node), so that 10k Services hold little more
/// than their addresses.
pub fn strip_slice(o: &mut Object) {
    let Object::EndpointSlice(s) = o else {
        return;
    };
    let keep = KeepMeta {
        labels: true,
        ..KeepMeta::IDENTITY
    };
    keep.strip(&mut s.metadata);
    if let Some(l) = s.metadata.labels.as_mut() {
        l.retain(|k, _| k == SERVICE_NAME_LABEL);
    }
    for ep in &mut s.endpoints {
        ep.hostname = None;
        ep.zone = None;
        ep.hints = None;
        ep.deprecated_topology = None;
        ep.target_ref = None;
    }
}

/// The proxy's Service watch transform: keeps what [`ports_of`] reads
/// (name, namespace, resourceVersion; the spec's type, ClusterIP, ports,
/// affinity, external IPs and traffic policies; load-balancer ingress IPs).
pub fn strip_service(o: &mut Object) {
    let Object::Service(s) = o else {
        return;
    };
    KeepMeta::IDENTITY.strip(&mut s.metadata);
    if let Some(spec) = &mut s.spec {
        spec.selector = None;
        // A dual-stack Service's other family's ClusterIP is in clusterIPs.
        if spec.cluster_ips.as_ref().is_some_and(|ips| ips.len() < 2) {
            spec.cluster_ips = None;
        }
        spec.ip_families = None;
        spec.load_balancer_source_ranges = None;
        spec.external_name = None;
        for p in spec.ports.iter_mut().flatten() {
            p.app_protocol = None;
            p.target_port = None;
        }
    }
    if let Some(status) = &mut s.status {
        status.conditions = None;
        for i in status
            .load_balancer
            .iter_mut()
            .flat_map(|lb| lb.ingress.iter_mut().flatten())
        {
            i.hostname = None;
            i.ports = None;
            i.ip_mode = None;
        }
    }
}

/// A slice (for tests).
#[cfg(test)]
pub(crate) fn slice(
    name: &str,
    svc: &str,
    eps: &[(&str, bool)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps.iter().map(|(ip, ready)| serde_json::json!({
            "addresses": [ip], "nodeName": "n1", "conditions": {"ready": ready, "serving": ready}
        })).collect::<Vec<_>>(),
    }))
    .expect("slice")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    fn service(name: &str) -> Object {
        Object::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name},
                     "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}))
        .expect("service")
    }

    /// A view, told of events as the watchers tell it.
    struct World {
        v: View<Ipv4Addr>,
    }

    impl World {
        fn new() -> World {
            World {
                v: View::new("n1".into()),
            }
        }

        fn ev(&mut self, ev: WatchEvent) {
            match ev.object() {
                Object::Service(_) => self.v.service_event(ev),
                _ => self.v.slice_event(ev),
            }
        }

        fn recompute(&mut self) -> Changes {
            self.v.recompute()
        }
    }

    fn endpoints(view: &View) -> Vec<String> {
        view.flatten()
            .iter()
            .flat_map(|sp| sp.endpoints.iter().map(|e| e.addr()))
            .collect()
    }

    fn sl(name: &str, svc: &str, eps: &[(&str, bool)]) -> Object {
        let mut o = Object::from(slice(name, svc, eps));
        strip_slice(&mut o);
        o
    }

    #[test]
    fn the_view_follows_slices_of_each_service_only() {
        let mut w = World::new();
        w.ev(WatchEvent::Added(sl("a-1", "a", &[("10.244.0.2", true)])));
        w.ev(WatchEvent::Added(service("a")));
        w.ev(WatchEvent::Added(service("b")));
        w.ev(WatchEvent::Added(sl(
            "a-2",
            "a",
            &[("10.244.0.3", true), ("10.244.0.4", false)],
        )));
        w.ev(WatchEvent::Added(sl("b-1", "b", &[("10.244.1.2", true)])));
        w.recompute();
        assert_eq!(
            endpoints(&w.v),
            ["10.244.0.2:8080", "10.244.0.3:8080", "10.244.1.2:8080"]
        );

        // A slice of b changes: only b is recomputed.
        w.ev(WatchEvent::Modified(sl(
            "b-1",
            "b",
            &[("10.244.1.3", true)],
        )));
        assert_eq!(
            w.v.dirty.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        // A slice relabelled to b leaves a.
        w.ev(WatchEvent::Modified(sl(
            "a-2",
            "b",
            &[("10.244.0.3", true)],
        )));
        assert_eq!(w.v.dirty.len(), 2);
        let changed = w.recompute();
        assert_eq!(
            changed.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(
            endpoints(&w.v),
            ["10.244.0.2:8080", "10.244.0.3:8080", "10.244.1.3:8080"]
        );
        // A slice rewritten with the same endpoints changes nothing.
        w.ev(WatchEvent::Modified(sl(
            "b-1",
            "b",
            &[("10.244.1.3", true)],
        )));
        assert!(w.recompute().is_empty());
        w.ev(WatchEvent::Deleted(sl("a-1", "a", &[])));
        w.ev(WatchEvent::Deleted(service("b")));
        let changed = w.recompute();
        assert_eq!(changed.get(&("ns".into(), "b".into())), Some(&None));
        assert!(endpoints(&w.v).is_empty(), "{:?}", endpoints(&w.v));
        assert_eq!(w.v.flatten().len(), 1, "a is left, without endpoints");
    }

    #[test]
    fn stripping_keeps_what_the_ports_are_made_of() {
        let mut svc = Object::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb", "namespace": "ns", "labels": {"a": "b"},
                         "annotations": {"x": "y"}, "resourceVersion": "7"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "selector": {"app": "lb"},
                     "externalIPs": ["203.0.113.4"], "externalTrafficPolicy": "Local",
                     "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"name": "p", "port": 80, "targetPort": 8080, "nodePort": 30080},
                               {"name": "u", "port": 53, "protocol": "UDP", "targetPort": 53}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.3", "hostname": "lb.example"}]}}}))
        .expect("service");
        let mut eps = slice("lb-1", "lb", &[("10.244.0.2", true)]);
        eps.endpoints[0].target_ref = Some(Default::default());
        let ports = |svc: &Object, sl: &k8s_openapi::api::discovery::v1::EndpointSlice| {
            let Object::Service(s) = svc else { panic!() };
            crate::view::ports_of::<Ipv4Addr>(
                s,
                &controlplane::endpoints::from_slices(s, [sl]),
                "n1",
            )
        };
        let before = ports(&svc, &eps);
        assert_eq!(before.len(), 2);
        strip_service(&mut svc);
        let mut o = Object::from(eps);
        strip_slice(&mut o);
        let Object::EndpointSlice(eps) = o else {
            panic!()
        };
        assert_eq!(ports(&svc, &eps), before);
        assert!(svc.meta().labels.is_none() && svc.meta().annotations.is_none());
    }

    #[test]
    fn a_service_whose_endpoints_all_terminate_keeps_the_serving_ones() {
        let mut w = World::new();
        w.ev(WatchEvent::Added(service("a")));
        let mut draining = slice("a-1", "a", &[("10.244.0.2", false), ("10.244.0.3", false)]);
        draining.endpoints[0].conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        });
        w.ev(WatchEvent::Added(Object::from(draining)));
        w.recompute();
        assert_eq!(endpoints(&w.v), ["10.244.0.2:8080"]);
    }

    #[test]
    fn an_ipv6_view_keeps_ipv6_cluster_ips_and_slices_only() {
        use std::net::Ipv6Addr;
        let mut v = View::<Ipv6Addr>::new("n1".into());
        let mut svc = Object::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}))
        .expect("service");
        strip_service(&mut svc);
        v.service_event(WatchEvent::Added(svc));
        v.slice_event(WatchEvent::Added(sl("a-v4", "a", &[("10.244.0.2", true)])));
        let mut six = slice("a-v6", "a", &[("fd00:10:244::2", true)]);
        six.address_type = "IPv6".into();
        v.slice_event(WatchEvent::Added(Object::from(six)));
        v.recompute();
        let ports = v.flatten();
        assert_eq!(ports[0].cluster_ip.to_string(), "fd00:96::10");
        let eps: Vec<String> = ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(eps, ["fd00:10:244::2"]);
        assert_eq!(v.parts.len(), 1, "the IPv4 slice is not kept");
    }
}
