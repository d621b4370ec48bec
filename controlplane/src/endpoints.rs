//! Service -> endpoints: which pods back a Service and on which ports, the
//! computation the API layer stores and the proxy reuses. Pure functions
//! over k8s-openapi values; no I/O, no store access, no watching — callers
//! hand in the Service and the pods they already hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// Namespace assumed for objects whose `metadata.namespace` is unset.
const DEFAULT_NAMESPACE: &str = "default";
/// Protocol assumed for ports whose `protocol` is unset.
const DEFAULT_PROTOCOL: &str = "TCP";

/// One backend address of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The pod's IP (`status.podIP`).
    pub ip: IpAddr,
    /// The node the pod runs on (`spec.nodeName`), if scheduled.
    pub node: Option<String>,
    /// The pod as `namespace/name`.
    pub pod: String,
    /// Whether traffic may be sent here, with EndpointSlice `conditions.ready`
    /// semantics. [`endpoints_for`] only emits routable endpoints, so it is
    /// always `true` there; [`from_slices`] carries the slice's condition.
    pub ready: bool,
    /// EndpointSlice `conditions.serving`: the pod is ready, whether or not
    /// it is terminating.
    #[serde(default = "yes")]
    pub serving: bool,
    /// EndpointSlice `conditions.terminating`: the pod is being deleted.
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

/// One port of a subset: the Service port's name and the resolved
/// target (container) port number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The Service port's `name` (unique within the Service; may be absent
    /// when the Service has a single port).
    pub name: Option<String>,
    /// The resolved target port on the endpoints.
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP` (defaults to `TCP`).
    pub protocol: String,
}

/// A subset of a Service's endpoints that share the same resolved ports,
/// like a Kubernetes Endpoints subset or one EndpointSlice.
///
/// Pods may map a named `targetPort` to different numbers, so one Service
/// can yield several `Endpoints`; see [`endpoints_for`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The addresses in this subset, sorted by IP then pod.
    pub addresses: Vec<Endpoint>,
    /// The ports every address in this subset serves, in Service port order.
    pub ports: Vec<EndpointPort>,
}

impl Endpoints {
    /// The port of this subset that serves the Service port called `name`
    /// (`None` for an unnamed Service port).
    pub fn port(&self, name: Option<&str>) -> Option<&EndpointPort> {
        let name = name.filter(|n| !n.is_empty());
        self.ports
            .iter()
            .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == name)
    }
}

/// Whether `labels` satisfy the equality-based `selector`: every selector key
/// is present with the same value.
///
/// An empty selector matches nothing here. In Kubernetes an empty selector
/// on a Service means "no selector" (endpoints are managed by hand), not
/// "select every pod", so treating it as matching everything would route a
/// Service to every pod in the namespace.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if selector.is_empty() {
        return false;
    }
    let Some(labels) = labels else {
        return false;
    };
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The endpoints of `service` among `pods`, grouped into subsets by resolved
/// port set, or `None` when the Service has no selector (absent or empty:
/// its endpoints are not computed from pods).
///
/// A pod is included when it is in the Service's namespace, its labels match
/// the selector, it has a parseable `status.podIP`, it is not in a terminal
/// phase (`Succeeded`/`Failed`), and it is ready (`Ready` condition `"True"`)
/// and not terminating (`metadata.deletionTimestamp` unset). When the
/// Service sets `publishNotReadyAddresses`, readiness and termination are
/// ignored, as Kubernetes does.
///
/// Each Service port's `targetPort` is resolved per pod: absent -> the
/// Service `port`; a number -> that number; a name -> the `containerPort` of
/// the pod's container port with that name and the same protocol (regular
/// containers, then restartable init containers). A pod whose named port
/// cannot be resolved is left out for that port only; a pod that resolves
/// none of the Service's ports is left out entirely. A Service with no ports
/// yields one subset with every address and no ports.
///
/// The result is deterministic: subsets are ordered by their port lists,
/// addresses within a subset by IP then pod. `Some(vec![])` means the
/// Service selects pods but none is currently an endpoint. Headless Services
/// (`clusterIP: None`) with a selector get endpoints too (DNS uses them).
pub fn endpoints_for<'a>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<Vec<Endpoints>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let namespace = service
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.as_deref().unwrap_or(&[]);

    let mut subsets: BTreeMap<Vec<EndpointPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
            != namespace
            || !selector_matches(selector, pod.metadata.labels.as_ref())
        {
            continue;
        }
        let Some(endpoint) = pod_endpoint(pod, namespace, publish_not_ready) else {
            continue;
        };
        let ports: Vec<EndpointPort> = service_ports
            .iter()
            .filter_map(|sp| resolve_port(sp, pod))
            .collect();
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        subsets.entry(ports).or_default().push(endpoint);
    }

    Some(
        subsets
            .into_iter()
            .map(|(ports, mut addresses)| {
                addresses.sort_by(|a, b| (a.ip, &a.pod).cmp(&(b.ip, &b.pod)));
                Endpoints {
                    namespace: namespace.to_string(),
                    service: service_name.clone(),
                    addresses,
                    ports,
                }
            })
            .collect(),
    )
}

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which EndpointSlices belong to which Service, by their
/// [`SERVICE_NAME_LABEL`], for consumers that recompute one Service from
/// its own slices (the proxy, DNS, the EndpointSlice controller).
#[derive(Debug, Default)]
pub struct SliceIndex {
    /// (namespace, Service) -> slice names.
    by_service: HashMap<(String, String), BTreeSet<String>>,
    /// (namespace, slice) -> the Service it was recorded under.
    service_of: HashMap<(String, String), String>,
}

impl SliceIndex {
    /// The Service a slice names, if any.
    pub fn service_label(slice: &ObjectMeta) -> Option<&str> {
        slice
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    /// Records slice `ns/name` under `service` (`None`: deleted, or no
    /// longer labelled); returns the Services concerned, before and now,
    /// as (namespace, name).
    pub fn set(&mut self, ns: &str, name: &str, service: Option<&str>) -> Vec<(String, String)> {
        let key = (ns.to_string(), name.to_string());
        let mut touched = Vec::new();
        if let Some(before) = self.service_of.remove(&key) {
            let skey = (ns.to_string(), before);
            if let Some(names) = self.by_service.get_mut(&skey) {
                names.remove(name);
                if names.is_empty() {
                    self.by_service.remove(&skey);
                }
            }
            touched.push(skey);
        }
        if let Some(svc) = service {
            let skey = (ns.to_string(), svc.to_string());
            self.by_service
                .entry(skey.clone())
                .or_default()
                .insert(name.to_string());
            self.service_of.insert(key, svc.to_string());
            if !touched.contains(&skey) {
                touched.push(skey);
            }
        }
        touched
    }

    /// The names of the slices of Service `ns/svc`.
    pub fn slices_of(&self, ns: &str, svc: &str) -> impl Iterator<Item = &str> {
        self.by_service
            .get(&(ns.to_string(), svc.to_string()))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// The routable `(endpoint, target port)` pairs for the Service port called
/// `port_name` across all `subsets`, sorted by IP, port, then pod: the
/// ready endpoints, or when none is ready the serving ones that are
/// terminating (kube-proxy's fallback, so that a Service whose pods are all
/// shutting down still answers while they drain). This is what a proxy
/// load-balances over.
pub fn targets<'a>(subsets: &'a [Endpoints], port_name: Option<&str>) -> Vec<(&'a Endpoint, i32)> {
    let mut out: Vec<(&Endpoint, i32)> = subsets
        .iter()
        .filter_map(|subset| subset.port(port_name).map(|p| (subset, p.port)))
        .flat_map(|(subset, port)| subset.addresses.iter().map(move |e| (e, port)))
        .collect();
    if out.iter().any(|(e, _)| e.ready) {
        out.retain(|(e, _)| e.ready);
    } else {
        out.retain(|(e, _)| e.serving && e.terminating);
    }
    out.sort_by(|(a, pa), (b, pb)| (a.ip, pa, &a.pod).cmp(&(b.ip, pb, &b.pod)));
    out
}

/// A Service's endpoints as its EndpointSlices hold them (the slices
/// labelled `kubernetes.io/service-name` with the Service's name; the
/// caller picks them), grouped into subsets by port list as
/// [`endpoints_for`] groups them, with each endpoint's conditions: `ready`
/// absent means true, `serving` absent means `ready`, `terminating` absent
/// means false (the API's rules for nil conditions). Addresses that do not
/// parse are skipped; an endpoint's first address is the one used, as
/// kube-proxy does. Subsets and addresses are ordered as [`endpoints_for`]
/// orders them.
pub fn from_slices<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<Endpoints> {
    let parts: Vec<SliceEndpoints> = slices.into_iter().map(SliceEndpoints::of).collect();
    let namespace = service.metadata.namespace.as_deref();
    merge_slices(
        namespace.unwrap_or(DEFAULT_NAMESPACE),
        service.metadata.name.as_deref().unwrap_or_default(),
        &parts,
    )
}

/// What one EndpointSlice contributes to its Service's endpoints, read as
/// [`from_slices`] reads it: a consumer that keeps many slices only to
/// compute endpoints keeps this instead of the slice (a fifth of its size).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceEndpoints {
    /// The slice's ports (protocol defaulted, unnamed as `None`).
    pub ports: Vec<EndpointPort>,
    /// Its endpoints with a parsable first address.
    pub endpoints: Vec<Endpoint>,
}

impl SliceEndpoints {
    pub fn of(slice: &EndpointSlice) -> SliceEndpoints {
        let namespace = slice
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: p.port?,
                    protocol: p
                        .protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PROTOCOL.into()),
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|ep| {
                let ip = ep.addresses.first()?.parse::<IpAddr>().ok()?;
                let cond = ep.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .map(|r| {
                        let ns = r.namespace.as_deref().unwrap_or(namespace);
                        format!("{ns}/{}", r.name.as_deref().unwrap_or_default())
                    })
                    .unwrap_or_default();
                Some(Endpoint {
                    ip,
                    node: ep.node_name.clone(),
                    pod,
                    ready,
                    serving: cond.serving.unwrap_or(ready),
                    terminating: cond.terminating.unwrap_or(false),
                })
            })
            .collect();
        SliceEndpoints { ports, endpoints }
    }
}

/// The endpoints of Service `namespace/service` from what its slices
/// contribute: [`from_slices`] over kept [`SliceEndpoints`].
pub fn merge_slices<'a>(
    namespace: &str,
    service: &str,
    parts: impl IntoIterator<Item = &'a SliceEndpoints>,
) -> Vec<Endpoints> {
    let mut subsets: BTreeMap<&[EndpointPort], Vec<Endpoint>> = BTreeMap::new();
    for part in parts {
        subsets
            .entry(&part.ports)
            .or_default()
            .extend(part.endpoints.iter().cloned());
    }
    subsets
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(ports, mut addresses)| {
            addresses.sort_by(|a, b| (a.ip, &a.pod).cmp(&(b.ip, &b.pod)));
            addresses.dedup_by(|a, b| a.ip == b.ip);
            Endpoints {
                namespace: namespace.to_string(),
                service: service.to_string(),
                addresses,
                ports: ports.to_vec(),
            }
        })
        .collect()
}

/// Drops from `pod` everything [`endpoints_for`] does not read, for
/// consumers that keep many pods only to compute endpoints (the proxy's
/// watch cache: at 50,000 pods whole objects cost about 11 KB each).
/// Kept: name, namespace, labels, `resourceVersion`, `deletionTimestamp`;
/// `nodeName`; the named ports of the containers and of the restartable
/// init containers (containers without one are dropped); phase, pod IP
/// and the `Ready` condition. `endpoints_for` gives the same result for
/// the stripped pod as for the whole one.
pub fn strip_for_endpoints(pod: &mut Pod) {
    let keep = crate::watcher::KeepMeta {
        labels: true,
        deletion_timestamp: true,
        ..crate::watcher::KeepMeta::IDENTITY
    };
    keep.strip(&mut pod.metadata);
    let named_ports = |c: Container| -> Option<Container> {
        let ports: Vec<ContainerPort> = c
            .ports
            .into_iter()
            .flatten()
            .filter(|p| p.name.is_some())
            .collect();
        (!ports.is_empty()).then(|| Container {
            name: c.name,
            ports: Some(ports),
            restart_policy: c.restart_policy,
            ..Container::default()
        })
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        containers: spec
            .containers
            .into_iter()
            .filter_map(named_ports)
            .collect(),
        init_containers: spec.init_containers.map(|init| {
            init.into_iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .filter_map(named_ports)
                .collect()
        }),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        conditions: status.conditions.map(|conds| {
            conds
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
}

/// The pod as an endpoint, or `None` if it must not receive traffic.
fn pod_endpoint(pod: &Pod, namespace: &str, publish_not_ready: bool) -> Option<Endpoint> {
    let name = pod.metadata.name.as_deref()?;
    let status = pod.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    if !publish_not_ready {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if terminating || !pod_is_ready(pod) {
            return None;
        }
    }
    Some(Endpoint {
        ip,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        pod: format!("{namespace}/{name}"),
        ready: true,
        serving: pod_is_ready(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// Whether the pod's `Ready` condition is `"True"`.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The Service port resolved against one pod, or `None` when its named
/// `targetPort` does not exist on the pod.
pub fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<EndpointPort> {
    let protocol = sp.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL);
    let port = match &sp.target_port {
        None => sp.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => named_container_port(pod, name, protocol)?,
    };
    Some(EndpointPort {
        name: sp.name.clone(),
        port,
        protocol: protocol.to_string(),
    })
}

/// The `containerPort` named `name` with `protocol` in the pod's containers,
/// then its restartable (sidecar) init containers.
fn named_container_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c: &Container| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && p.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL) == protocol
        })
        .map(|p| p.container_port)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A service in `default` selecting `app=web` with the given ports JSON.
    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": ports}
        }))
        .expect("valid service")
    }

    /// A ready, running `app=web` pod in `default` on node-a.
    fn pod_json(name: &str, ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web", "tier": "fe"}},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        })
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("valid pod")
    }

    fn ready_pod(name: &str, ip: &str) -> Pod {
        pod(pod_json(name, ip))
    }

    fn ips(eps: &Endpoints) -> Vec<String> {
        eps.addresses.iter().map(|e| e.ip.to_string()).collect()
    }

    fn port(name: Option<&str>, port: i32) -> EndpointPort {
        EndpointPort {
            name: name.map(str::to_string),
            port,
            protocol: "TCP".to_string(),
        }
    }

    #[test]
    fn selector_requires_every_key_to_match() {
        let pod_labels = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(selector_matches(
            &labels(&[("app", "web")]),
            Some(&pod_labels)
        ));
        assert!(selector_matches(
            &labels(&[("app", "web"), ("tier", "fe")]),
            Some(&pod_labels)
        ));
        assert!(!selector_matches(
            &labels(&[("app", "db")]),
            Some(&pod_labels)
        ));
        assert!(!selector_matches(
            &labels(&[("app", "web"), ("env", "prod")]),
            Some(&pod_labels)
        ));
        assert!(!selector_matches(&labels(&[("app", "web")]), None));
    }

    #[test]
    fn empty_selector_matches_nothing() {
        assert!(!selector_matches(
            &BTreeMap::new(),
            Some(&labels(&[("app", "web")]))
        ));
        assert!(!selector_matches(&BTreeMap::new(), None));
    }

    #[test]
    fn ready_pods_become_endpoints_with_node_and_pod_name() {
        let svc = service(json!([{"port": 80}]));
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        assert_eq!(
            eps,
            vec![Endpoints {
                namespace: "default".into(),
                service: "web".into(),
                addresses: vec![Endpoint {
                    ip: "10.244.0.5".parse().expect("ip"),
                    node: Some("node-a".into()),
                    pod: "default/web-1".into(),
                    ready: true,
                    serving: true,
                    terminating: false,
                }],
                ports: vec![port(None, 80)],
            }]
        );
    }

    #[test]
    fn unfit_pods_are_excluded() {
        let svc = service(json!([{"port": 80}]));
        let mut not_ready = pod_json("not-ready", "10.244.0.2");
        not_ready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        let mut no_conditions = pod_json("no-conditions", "10.244.0.3");
        no_conditions["status"]["conditions"] = json!([]);
        let mut no_ip = pod_json("no-ip", "x");
        no_ip["status"]
            .as_object_mut()
            .expect("status")
            .remove("podIP");
        let mut terminating = pod_json("terminating", "10.244.0.4");
        terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let mut other_ns = pod_json("other-ns", "10.244.0.6");
        other_ns["metadata"]["namespace"] = json!("kube-system");
        let mut other_labels = pod_json("other-labels", "10.244.0.7");
        other_labels["metadata"]["labels"] = json!({"app": "db"});
        let mut no_labels = pod_json("no-labels", "10.244.0.8");
        no_labels["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("labels");
        let mut succeeded = pod_json("succeeded", "10.244.0.9");
        succeeded["status"]["phase"] = json!("Succeeded");

        let pods: Vec<Pod> = [
            not_ready,
            no_conditions,
            no_ip,
            terminating,
            other_ns,
            other_labels,
            no_labels,
            succeeded,
        ]
        .into_iter()
        .map(pod)
        .chain([ready_pod("good", "10.244.0.1")])
        .collect();

        let eps = endpoints_for(&svc, &pods).expect("selector");
        assert_eq!(eps.len(), 1);
        assert_eq!(ips(&eps[0]), ["10.244.0.1"]);
    }

    #[test]
    fn no_matching_pods_gives_empty_subsets() {
        let svc = service(json!([{"port": 80}]));
        assert_eq!(endpoints_for(&svc, &[]), Some(vec![]));
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_and_terminating_pods() {
        let mut svc = service(json!([{"port": 80}]));
        if let Some(spec) = svc.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        let mut not_ready = pod_json("not-ready", "10.244.0.2");
        not_ready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        let mut terminating = pod_json("terminating", "10.244.0.4");
        terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let mut failed = pod_json("failed", "10.244.0.9");
        failed["status"]["phase"] = json!("Failed");

        let eps = endpoints_for(&svc, &[pod(not_ready), pod(terminating), pod(failed)])
            .expect("selector");
        assert_eq!(ips(&eps[0]), ["10.244.0.2", "10.244.0.4"]);
    }

    #[test]
    fn target_port_defaults_to_service_port_and_numbers_are_used_as_is() {
        let svc = service(json!([
            {"name": "http", "port": 80},
            {"name": "metrics", "port": 9100, "targetPort": 9200, "protocol": "UDP"}
        ]));
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        assert_eq!(
            eps[0].ports,
            vec![
                port(Some("http"), 80),
                EndpointPort {
                    name: Some("metrics".into()),
                    port: 9200,
                    protocol: "UDP".into(),
                },
            ]
        );
    }

    #[test]
    fn named_target_port_resolves_per_pod_into_subsets() {
        let svc = service(json!([{"name": "web", "port": 80, "targetPort": "http"}]));
        let mut other = pod_json("web-2", "10.244.1.5");
        other["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 9090}]);
        let pods = [
            ready_pod("web-1", "10.244.0.5"),
            pod(other),
            ready_pod("web-3", "10.244.0.4"),
        ];

        let eps = endpoints_for(&svc, &pods).expect("selector");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].ports, vec![port(Some("web"), 8080)]);
        assert_eq!(ips(&eps[0]), ["10.244.0.4", "10.244.0.5"]);
        assert_eq!(eps[1].ports, vec![port(Some("web"), 9090)]);
        assert_eq!(ips(&eps[1]), ["10.244.1.5"]);

        let pairs: Vec<(String, i32)> = targets(&eps, Some("web"))
            .into_iter()
            .map(|(e, p)| (e.ip.to_string(), p))
            .collect();
        assert_eq!(
            pairs,
            [
                ("10.244.0.4".to_string(), 8080),
                ("10.244.0.5".to_string(), 8080),
                ("10.244.1.5".to_string(), 9090),
            ]
        );
    }

    #[test]
    fn named_target_port_found_in_sidecar_init_container() {
        let svc = service(json!([{"port": 80, "targetPort": "proxy"}]));
        let mut p = pod_json("web-1", "10.244.0.5");
        p["spec"]["initContainers"] = json!([
            {"name": "setup", "ports": [{"name": "proxy", "containerPort": 1111}]},
            {"name": "envoy", "restartPolicy": "Always", "ports": [{"name": "proxy", "containerPort": 15001}]}
        ]);
        let eps = endpoints_for(&svc, &[pod(p)]).expect("selector");
        assert_eq!(eps[0].ports, vec![port(None, 15001)]);
    }

    #[test]
    fn missing_named_port_drops_the_pod_for_that_port_only() {
        let svc = service(json!([
            {"name": "plain", "port": 80},
            {"name": "admin", "port": 81, "targetPort": "admin"}
        ]));
        let mut with_admin = pod_json("web-2", "10.244.0.6");
        with_admin["spec"]["containers"][0]["ports"] =
            json!([{"name": "admin", "containerPort": 7000}]);
        let pods = [ready_pod("web-1", "10.244.0.5"), pod(with_admin)];

        let eps = endpoints_for(&svc, &pods).expect("selector");
        let plain = targets(&eps, Some("plain"));
        let admin = targets(&eps, Some("admin"));
        assert_eq!(plain.len(), 2);
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].0.pod, "default/web-2");
        assert_eq!(admin[0].1, 7000);
    }

    #[test]
    fn named_port_must_match_protocol() {
        let svc = service(json!([{"port": 53, "targetPort": "http", "protocol": "UDP"}]));
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        assert_eq!(eps, vec![], "pod resolves no port, so it is left out");
    }

    #[test]
    fn service_without_ports_lists_addresses_only() {
        let svc = service(json!([]));
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        assert_eq!(eps.len(), 1);
        assert!(eps[0].ports.is_empty());
        assert_eq!(ips(&eps[0]), ["10.244.0.5"]);
    }

    #[test]
    fn no_selector_gives_none() {
        let pods = [ready_pod("web-1", "10.244.0.5")];
        for spec in [
            json!({"ports": [{"port": 80}]}),
            json!({"selector": {}, "ports": [{"port": 80}]}),
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ] {
            let svc: Service =
                serde_json::from_value(json!({"metadata": {"name": "ext"}, "spec": spec}))
                    .expect("valid service");
            assert_eq!(endpoints_for(&svc, &pods), None);
        }
        assert_eq!(endpoints_for(&Service::default(), &pods), None);
    }

    #[test]
    fn headless_service_with_selector_still_gets_endpoints() {
        let mut svc = service(json!([{"port": 80}]));
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        assert_eq!(ips(&eps[0]), ["10.244.0.5"]);
    }

    #[test]
    fn missing_namespaces_default_to_default() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .expect("valid service");
        let mut p = pod_json("web-1", "10.244.0.5");
        p["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("namespace");
        let eps = endpoints_for(&svc, &[pod(p)]).expect("selector");
        assert_eq!(eps[0].namespace, "default");
        assert_eq!(eps[0].addresses[0].pod, "default/web-1");
    }

    #[test]
    fn output_is_sorted_by_ip_regardless_of_input_order() {
        let svc = service(json!([{"port": 80}]));
        let mut pods = vec![
            ready_pod("c", "10.244.1.10"),
            ready_pod("a", "10.244.0.9"),
            ready_pod("b", "10.244.1.2"),
            ready_pod("v6", "fd00::1"),
        ];
        let first = endpoints_for(&svc, &pods).expect("selector");
        pods.reverse();
        let second = endpoints_for(&svc, &pods).expect("selector");
        assert_eq!(first, second);
        assert_eq!(
            ips(&first[0]),
            ["10.244.0.9", "10.244.1.2", "10.244.1.10", "fd00::1"]
        );
    }

    #[test]
    fn targets_skip_not_ready_and_unknown_ports() {
        let eps = vec![Endpoints {
            namespace: "default".into(),
            service: "web".into(),
            addresses: vec![
                Endpoint {
                    ip: "10.0.0.2".parse().expect("ip"),
                    node: None,
                    pod: "default/b".into(),
                    ready: false,
                    serving: false,
                    terminating: false,
                },
                Endpoint {
                    ip: "10.0.0.1".parse().expect("ip"),
                    node: None,
                    pod: "default/a".into(),
                    ready: true,
                    serving: true,
                    terminating: false,
                },
            ],
            ports: vec![port(Some("http"), 8080)],
        }];
        let t = targets(&eps, Some("http"));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0.pod, "default/a");
        assert!(targets(&eps, Some("grpc")).is_empty());
        assert!(targets(&eps, None).is_empty());
    }

    #[test]
    fn endpoints_round_trip_through_json() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
        let eps = endpoints_for(&svc, &[ready_pod("web-1", "10.244.0.5")]).expect("selector");
        let text = serde_json::to_string(&eps).expect("serialize");
        let back: Vec<Endpoints> = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, eps);
    }

    #[test]
    fn a_stripped_pod_gives_the_same_endpoints() {
        let pods: Vec<Pod> = vec![
            ready_pod("plain", "10.1.0.1"),
            pod(json!({
                "metadata": {"name": "rich", "namespace": "default", "resourceVersion": "42",
                    "labels": {"app": "web"}, "annotations": {"a": "b"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}]},
                "spec": {
                    "nodeName": "node-b",
                    "initContainers": [
                        {"name": "side", "restartPolicy": "Always", "image": "x",
                         "ports": [{"name": "metrics", "containerPort": 9100}]},
                        {"name": "once", "image": "x", "ports": [{"name": "admin", "containerPort": 9200}]}
                    ],
                    "containers": [
                        {"name": "app", "image": "x", "env": [{"name": "K", "value": "V"}],
                         "ports": [{"containerPort": 80}, {"name": "http", "containerPort": 8080},
                                   {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
                        {"name": "noports", "image": "x"}
                    ]
                },
                "status": {"phase": "Running", "podIP": "10.1.0.2", "hostIP": "192.0.2.2",
                    "conditions": [{"type": "PodScheduled", "status": "True"},
                                   {"type": "Ready", "status": "True", "reason": "r"}]}
            })),
            pod(json!({
                "metadata": {"name": "gone", "namespace": "default", "labels": {"app": "web"},
                    "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.1.0.3",
                    "conditions": [{"type": "Ready", "status": "True"}]}
            })),
            pod(json!({
                "metadata": {"name": "unready", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.1.0.4",
                    "conditions": [{"type": "Ready", "status": "False"}]}
            })),
        ];
        let stripped: Vec<Pod> = pods
            .iter()
            .cloned()
            .map(|mut p| {
                strip_for_endpoints(&mut p);
                p
            })
            .collect();
        let target_ports = [
            json!([{"port": 80}]),
            json!([{"name": "a", "port": 80, "targetPort": "http"}]),
            json!([{"name": "m", "port": 91, "targetPort": "metrics"},
                   {"name": "adm", "port": 92, "targetPort": "admin"}]),
            json!([{"name": "d", "port": 53, "targetPort": "dns", "protocol": "UDP"}]),
            json!([]),
        ];
        for ports in target_ports {
            for publish in [false, true] {
                let mut svc = service(ports.clone());
                if let Some(spec) = svc.spec.as_mut() {
                    spec.publish_not_ready_addresses = Some(publish);
                }
                assert_eq!(
                    endpoints_for(&svc, &stripped),
                    endpoints_for(&svc, &pods),
                    "ports {ports}, publishNotReady {publish}"
                );
            }
        }
        let rich = &stripped[1];
        assert_eq!(rich.metadata.resource_version.as_deref(), Some("42"));
        assert!(rich.metadata.annotations.is_none() && rich.metadata.owner_references.is_none());
        let spec = rich.spec.as_ref().expect("spec");
        assert_eq!(spec.containers.len(), 1, "only containers with named ports");
        assert_eq!(spec.containers[0].ports.as_ref().map(Vec::len), Some(2));
        assert!(spec.containers[0].image.is_none() && spec.containers[0].env.is_none());
        assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
        let status = rich.status.as_ref().expect("status");
        assert!(status.host_ip.is_none());
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn slices_become_subsets_with_their_conditions_and_targets_fall_back_to_terminating() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abcde", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.3"], "nodeName": "n1",
                 "conditions": {"ready": false, "serving": true, "terminating": true},
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "b"}},
                {"addresses": ["10.244.0.2"], "targetRef": {"kind": "Pod", "name": "a"}},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .expect("slice");
        let subsets = from_slices(&svc, [&slice]);
        assert_eq!(subsets.len(), 1);
        let a = &subsets[0].addresses[0];
        assert_eq!(
            (a.pod.as_str(), a.ready, a.serving, a.terminating),
            ("default/a", true, true, false)
        );
        let b = &subsets[0].addresses[1];
        assert_eq!(
            (b.node.as_deref(), b.ready, b.serving, b.terminating),
            (Some("n1"), false, true, true)
        );
        let ips = |t: Vec<(&Endpoint, i32)>| {
            t.iter()
                .map(|(e, p)| format!("{}:{p}", e.ip))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ips(targets(&subsets, Some("http"))),
            ["10.244.0.2:8080"],
            "ready ones only"
        );
        // With no ready endpoint the terminating serving ones are used.
        let mut draining = slice.clone();
        draining.endpoints.remove(1);
        let subsets = from_slices(&svc, [&draining]);
        assert_eq!(ips(targets(&subsets, Some("http"))), ["10.244.0.3:8080"]);
        // An unnamed port matches a slice port named "".
        let unnamed = service(json!([{"port": 80}]));
        let mut s = slice.clone();
        s.ports.as_mut().unwrap()[0].name = Some(String::new());
        assert_eq!(
            ips(targets(&from_slices(&unnamed, [&s]), None)),
            ["10.244.0.2:8080"]
        );
    }

    #[test]
    fn the_slice_index_follows_relabels_and_deletions() {
        let mut ix = SliceIndex::default();
        assert_eq!(ix.set("ns", "a-1", Some("a")), [("ns".into(), "a".into())]);
        ix.set("ns", "a-2", Some("a"));
        ix.set("other", "a-3", Some("a"));
        assert_eq!(ix.slices_of("ns", "a").collect::<Vec<_>>(), ["a-1", "a-2"]);
        let touched = ix.set("ns", "a-2", Some("b"));
        assert_eq!(
            touched,
            [("ns".into(), "a".into()), ("ns".into(), "b".into())]
        );
        assert_eq!(ix.slices_of("ns", "b").collect::<Vec<_>>(), ["a-2"]);
        ix.set("ns", "a-1", None);
        ix.set("ns", "a-2", None);
        assert_eq!(ix.slices_of("ns", "a").count(), 0);
        assert!(
            ix.by_service.len() == 1 && ix.service_of.len() == 1,
            "nothing left behind"
        );
    }
}
