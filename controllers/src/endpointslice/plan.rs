//! The EndpointSlice controller's pure decisions: which endpoints a
//! Service should have (one [`Group`] per address family and resolved port
//! list), and the creates, updates and deletes that bring its existing
//! slices there with the fewest writes. No I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use controlplane::endpoints::{pod_is_ready, resolve_port, selector_matches, EndpointPort};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub use controlplane::endpoints::SERVICE_NAME_LABEL;
/// The label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`] (kube-controller-manager's, so tools
/// that look for controller-managed slices find ours).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-controller-manager's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What the controller knows of a node, for the endpoints on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node is registered but its heartbeat Lease expired: its pods
    /// are not serving (the node lifecycle controller's NotReady marking).
    pub lost: bool,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

/// One slice's worth of identity: address family and resolved ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// `IPv4` or `IPv6`.
    pub address_type: &'static str,
    pub ports: Vec<EndpointPort>,
}

/// The endpoints a Service should have in slices of one [`GroupKey`], by
/// address.
pub type Groups = BTreeMap<GroupKey, BTreeMap<IpAddr, Endpoint>>;

/// The Service's address families (`spec.ipFamilies`, else the family of
/// its ClusterIP, else IPv4).
fn families(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        let v6 = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_ipv6());
        out.push(if v6 { "IPv6" } else { "IPv4" });
    }
    out
}

/// The pod's address of `family` (`status.podIPs`, else `status.podIP`).
fn pod_ip(pod: &Pod, family: &str) -> Option<IpAddr> {
    let status = pod.status.as_ref()?;
    let all = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    all.filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == (family == "IPv6"))
}

/// The endpoints `svc` should have among `pods` (only those of its
/// namespace matching its selector count), as kube's EndpointSlice
/// controller computes them: pods with an address of the family that are
/// not finished (Succeeded/Failed), terminating ones included;
/// `serving` = the pod is Ready (and its node not lost), `terminating` =
/// it has a deletionTimestamp, `ready` = serving and not terminating, or
/// always with `publishNotReadyAddresses`. Each Service port is resolved
/// per pod (named target ports through the pod's container ports); a pod
/// resolving none of several ports is left out. `None` for a Service
/// without a selector, whose slices are not ours to keep.
pub fn desired<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
    node: impl Fn(&str) -> NodeInfo,
) -> Option<Groups> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let svc_name = svc.metadata.name.as_deref().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    let families = families(svc);
    let mut groups = Groups::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref().unwrap_or("default") != ns
            || !selector_matches(selector, pod.metadata.labels.as_ref())
        {
            continue;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let ports: Vec<EndpointPort> = service_ports
            .iter()
            .filter_map(|sp| resolve_port(sp, pod))
            .collect();
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let spec = pod.spec.as_ref();
        let node_name = spec.and_then(|s| s.node_name.clone());
        let info = node_name.as_deref().map(&node).unwrap_or_default();
        let serving = pod_is_ready(pod) && !info.lost;
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = publish_not_ready || (serving && !terminating);
        let hostname = spec
            .filter(|s| s.subdomain.as_deref() == Some(svc_name))
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty());
        for family in &families {
            let Some(ip) = pod_ip(pod, family) else {
                continue;
            };
            let ep = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname.clone(),
                node_name: node_name.clone(),
                zone: info.zone.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.to_string()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            };
            let key = GroupKey {
                address_type: family,
                ports: ports.clone(),
            };
            groups.entry(key).or_default().insert(ip, ep);
        }
    }
    Some(groups)
}

/// A write the controller makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(EndpointSlice),
    Update(EndpointSlice),
    /// The slice of this name goes.
    Delete(String),
}

/// The labels every slice of `svc` carries: the Service's own (less the
/// ones we set), the Service name, the manager, and headless when it is.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            ![SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// Whether `slice` is one of ours for `svc`.
pub fn managed_for(slice: &EndpointSlice, svc_name: &str) -> bool {
    let labels = slice.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(SERVICE_NAME_LABEL) == Some(svc_name) && label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
}

fn group_of(slice: &EndpointSlice) -> GroupKey {
    let address_type = if slice.address_type == "IPv6" {
        "IPv6"
    } else {
        "IPv4"
    };
    GroupKey {
        address_type,
        ports: slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: p.port?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                })
            })
            .collect(),
    }
}

fn slice_ports(key: &GroupKey, svc: &Service) -> Vec<SlicePort> {
    let app_protocol = |name: &Option<String>| {
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == name.as_deref().unwrap_or_default())
            .and_then(|p| p.app_protocol.clone())
    };
    key.ports
        .iter()
        .map(|p| SlicePort {
            name: Some(p.name.clone().unwrap_or_default()),
            port: Some(p.port),
            protocol: Some(p.protocol.clone()),
            app_protocol: app_protocol(&p.name),
        })
        .collect()
}

fn ip_of(ep: &Endpoint) -> Option<IpAddr> {
    ep.addresses.first().and_then(|a| a.parse().ok())
}

/// A new slice of `svc` (named by the caller's `name_for`).
fn new_slice(
    svc: &Service,
    key: &GroupKey,
    endpoints: Vec<Endpoint>,
    name: String,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![owner_ref(svc)]),
            ..ObjectMeta::default()
        },
        address_type: key.address_type.into(),
        endpoints,
        ports: Some(slice_ports(key, svc)),
    }
}

/// The Service as the controlling owner of its slices.
pub fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The writes that turn `existing` (the Service's slices that we manage)
/// into `desired`, changing as few slices as it can, as kube's reconciler
/// does: an endpoint stays in the slice that holds it (updated in place
/// when its conditions change); one that is gone leaves its slice; new
/// ones fill existing slices of their group up to
/// [`MAX_ENDPOINTS_PER_SLICE`] before a new slice is made; a slice left
/// empty, or of a group no longer wanted, is deleted. A Service with no
/// endpoints at all keeps one empty slice (kube's placeholder), so that
/// "no endpoints" is visible. `name_for` names new slices
/// (`<svc>-<random>`). Endpoints in a slice are ordered by address.
pub fn plan(
    svc: &Service,
    desired: &Groups,
    existing: &[EndpointSlice],
    mut name_for: impl FnMut() -> String,
) -> Vec<Action> {
    let labels = slice_labels(svc);
    let owner = owner_ref(svc);
    let mut actions = Vec::new();
    let mut placed: BTreeSet<(GroupKey, IpAddr)> = BTreeSet::new();
    // Existing slices, each with the endpoints it keeps, by group.
    let mut kept: Vec<(EndpointSlice, GroupKey, BTreeMap<IpAddr, Endpoint>)> = Vec::new();
    let mut sorted: Vec<&EndpointSlice> = existing.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for slice in sorted {
        let key = group_of(slice);
        let wanted = desired.get(&key);
        let mut eps = BTreeMap::new();
        for ep in &slice.endpoints {
            let Some(ip) = ip_of(ep) else { continue };
            let Some(want) = wanted.and_then(|w| w.get(&ip)) else {
                continue;
            };
            if placed.insert((key.clone(), ip)) {
                eps.insert(ip, want.clone());
            }
        }
        kept.push((slice.clone(), key, eps));
    }
    // New endpoints: into existing slices with room, then new slices.
    let mut new_slices: Vec<(GroupKey, BTreeMap<IpAddr, Endpoint>)> = Vec::new();
    for (key, eps) in desired {
        for (ip, ep) in eps {
            if placed.contains(&(key.clone(), *ip)) {
                continue;
            }
            let room = kept
                .iter_mut()
                .map(|(_, k, e)| (&*k, e))
                .chain(new_slices.iter_mut().map(|(k, e)| (&*k, e)))
                .find(|(k, e)| *k == key && !e.is_empty() && e.len() < MAX_ENDPOINTS_PER_SLICE);
            match room {
                Some((_, e)) => {
                    e.insert(*ip, ep.clone());
                }
                None => {
                    // An existing slice of this group emptied by removals
                    // is reused before a new one is made.
                    if let Some((_, _, e)) =
                        kept.iter_mut().find(|(_, k, e)| k == key && e.is_empty())
                    {
                        e.insert(*ip, ep.clone());
                    } else {
                        let mut e = BTreeMap::new();
                        e.insert(*ip, ep.clone());
                        new_slices.push((key.clone(), e));
                    }
                }
            }
        }
    }
    let no_endpoints = desired.values().all(BTreeMap::is_empty);
    let mut placeholder_kept = false;
    for (slice, key, eps) in kept {
        let name = slice.metadata.name.clone().unwrap_or_default();
        if eps.is_empty() {
            // Keep one empty slice as the placeholder: reuse this one.
            if no_endpoints && !placeholder_kept {
                placeholder_kept = true;
                let mut s = slice.clone();
                s.endpoints = Vec::new();
                s.ports = Some(Vec::new());
                s.metadata.labels = Some(labels.clone());
                s.metadata.owner_references = Some(vec![owner.clone()]);
                if !same_slice(&s, &slice) {
                    actions.push(Action::Update(s));
                }
            } else {
                actions.push(Action::Delete(name));
            }
            continue;
        }
        let mut s = slice.clone();
        s.endpoints = eps.into_values().collect();
        s.ports = Some(slice_ports(&key, svc));
        s.metadata.labels = Some(labels.clone());
        s.metadata.owner_references = Some(vec![owner.clone()]);
        if !same_slice(&s, &slice) {
            actions.push(Action::Update(s));
        }
    }
    for (key, eps) in new_slices {
        actions.push(Action::Create(new_slice(
            svc,
            &key,
            eps.into_values().collect(),
            name_for(),
        )));
    }
    if no_endpoints && !placeholder_kept {
        let key = GroupKey {
            address_type: families(svc)[0],
            ports: Vec::new(),
        };
        let mut s = new_slice(svc, &key, Vec::new(), name_for());
        s.ports = Some(Vec::new());
        actions.push(Action::Create(s));
    }
    actions
}

/// Equal as far as we write them (ports and endpoints in our order, our
/// labels and owner), whatever the store added (defaults, metadata).
fn same_slice(want: &EndpointSlice, have: &EndpointSlice) -> bool {
    let mut have_eps = have.endpoints.clone();
    have_eps.sort_by_key(ip_of);
    want.endpoints == have_eps
        && want.ports.as_deref().unwrap_or_default() == have.ports.as_deref().unwrap_or_default()
        && want.metadata.labels == have.metadata.labels
        && want.metadata.owner_references == have.metadata.owner_references
        && want.address_type == have.address_type
}
