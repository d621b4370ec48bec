//! The cluster zone: what Services, their endpoints and pods contribute to
//! DNS, kept as a compact index by namespace and Service so that one object's
//! change touches only its own entry. Records are not stored: answers are
//! computed on lookup (see `lookup`). Pure data; no I/O, no watching.

mod lookup;
mod names;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use controlplane::endpoints::Endpoints;
use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::{Pod, Service};

pub use lookup::Answer;

use crate::{Error, Result};

/// The default TTL of cluster records, in seconds (CoreDNS's `ttl` default).
pub const DEFAULT_TTL: u32 = 5;
/// Namespace assumed for objects whose `metadata.namespace` is unset.
const DEFAULT_NAMESPACE: &str = "default";

/// How the zone is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain (kubelet's `cluster-domain`), e.g. `cluster.local`.
    pub domain: String,
    /// TTL of every record and of negative answers (SOA minimum).
    pub ttl: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            domain: "cluster.local".to_string(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// The in-memory cluster zone. Update it with the `upsert_*`/`remove_*`/
/// [`Zone::set_endpoints`] methods as watch events arrive; answer with
/// [`Zone::lookup`].
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    ttl: u32,
    serial: u32,
    namespaces: HashMap<Box<str>, Namespace>,
    /// ClusterIPs and headless endpoint IPs -> the Services that own them.
    ptr: HashMap<IpAddr, Vec<Owner>>,
    /// Pod IP -> the pod's namespace (for `a-b-c-d.<ns>.pod.<zone>`).
    pod_ips: HashMap<IpAddr, Arc<str>>,
}

#[derive(Debug)]
struct Namespace {
    name: Arc<str>,
    services: HashMap<Box<str>, Svc>,
    pods: HashMap<Box<str>, PodEntry>,
}

/// A Service and its endpoints; `kind` is `None` while only endpoints are
/// known (they may arrive before the Service).
#[derive(Debug)]
struct Svc {
    name: Arc<str>,
    kind: Option<SvcKind>,
    ports: Box<[Port]>,
    subsets: Box<[Subset]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SvcKind {
    ClusterIp(Box<[IpAddr]>),
    Headless,
    ExternalName(Name),
}

/// A named port: its lowercase name, protocol label (`_tcp`) and number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    name: Box<str>,
    proto: Box<str>,
    port: u16,
}

#[derive(Debug)]
struct Subset {
    ports: Box<[Port]>,
    addrs: Box<[Addr]>,
}

#[derive(Debug)]
struct Addr {
    ip: IpAddr,
    ready: bool,
    /// The backing pod's name (in the Service's namespace), if any.
    pod: Option<Box<str>>,
}

#[derive(Debug, PartialEq)]
struct PodEntry {
    ips: Box<[IpAddr]>,
    /// `(hostname, subdomain)` when the pod sets both.
    host: Option<Box<(Box<str>, Box<str>)>>,
}

/// A Service owning an IP, for PTR answers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    ns: Arc<str>,
    svc: Arc<str>,
}

impl Zone {
    /// An empty zone for `config.domain`; errors if the domain is not a
    /// valid DNS name.
    pub fn new(config: &ZoneConfig) -> Result<Self> {
        let origin = Name::from_ascii(config.domain.trim_end_matches('.'))
            .ok()
            .filter(|n| n.num_labels() > 0 && config.domain.is_ascii())
            .ok_or_else(|| Error::Config {
                field: "cluster-domain",
                problem: format!("{:?} is not a DNS name", config.domain),
            })?
            .to_lowercase();
        let mut origin = origin;
        origin.set_fqdn(true);
        Ok(Self {
            origin,
            ttl: config.ttl,
            serial: 1,
            namespaces: HashMap::new(),
            ptr: HashMap::new(),
            pod_ips: HashMap::new(),
        })
    }

    /// The zone's origin, e.g. `cluster.local.`.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA serial; bumped on every change.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Adds or replaces a Service (its endpoints are kept).
    pub fn upsert_service(&mut self, service: &Service) {
        let (ns, name) = meta_key(&service.metadata.namespace, &service.metadata.name);
        let Some(name) = name else { return };
        let kind = service_kind(service);
        let ports = service_ports(service);
        self.edit_service(ns, name, |svc| {
            svc.kind = kind;
            svc.ports = ports;
        });
    }

    /// Removes a Service and its endpoints.
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        self.edit_service(namespace, name, |svc| {
            svc.kind = None;
            svc.subsets = Box::new([]);
        });
    }

    /// Replaces the endpoints of Service `namespace/name` (as computed by
    /// `controlplane::endpoints::endpoints_for`, or translated from
    /// EndpointSlices). An empty slice clears them.
    pub fn set_endpoints(&mut self, namespace: &str, name: &str, subsets: &[Endpoints]) {
        let subsets: Box<[Subset]> = subsets.iter().map(subset_from).collect();
        self.edit_service(namespace, name, |svc| svc.subsets = subsets);
    }

    /// Adds or replaces a pod (its IPs for pod records, its hostname and
    /// subdomain for headless Service records).
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let (ns, name) = meta_key(&pod.metadata.namespace, &pod.metadata.name);
        let Some(name) = name else { return };
        let entry = pod_entry(pod);
        self.remove_pod(ns, name);
        self.serial = self.serial.wrapping_add(1);
        let namespace = self.namespace_mut(ns);
        let ns_name = namespace.name.clone();
        let ips = entry.ips.clone();
        namespace.pods.insert(name.into(), entry);
        for ip in ips.iter() {
            self.pod_ips.insert(*ip, ns_name.clone());
        }
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let ns_key = namespace.to_ascii_lowercase();
        let Some(ns) = self.namespaces.get_mut(ns_key.as_str()) else {
            return;
        };
        let Some(old) = ns.pods.remove(name) else {
            return;
        };
        self.serial = self.serial.wrapping_add(1);
        for ip in old.ips.iter() {
            if self.pod_ips.get(ip).is_some_and(|n| **n == *ns_key) {
                self.pod_ips.remove(ip);
            }
        }
        self.drop_namespace_if_empty(&ns_key);
    }

    /// Number of Services known (with or without endpoints).
    pub fn service_count(&self) -> usize {
        self.namespaces
            .values()
            .map(|n| n.services.values().filter(|s| s.kind.is_some()).count())
            .sum()
    }

    /// Number of pods known.
    pub fn pod_count(&self) -> usize {
        self.namespaces.values().map(|n| n.pods.len()).sum()
    }

    /// Applies `edit` to the Service entry (created if absent), keeping the
    /// PTR index in step and dropping entries that end up empty.
    fn edit_service(&mut self, namespace: &str, name: &str, edit: impl FnOnce(&mut Svc)) {
        let ns_key = namespace.to_ascii_lowercase();
        let svc_key = name.to_ascii_lowercase();
        self.serial = self.serial.wrapping_add(1);
        let ns = self.namespace_mut(&ns_key);
        let ns_name = ns.name.clone();
        let svc = ns
            .services
            .entry(svc_key.as_str().into())
            .or_insert_with(|| Svc {
                name: Arc::from(svc_key.as_str()),
                kind: None,
                ports: Box::new([]),
                subsets: Box::new([]),
            });
        let before = svc.ptr_ips();
        edit(svc);
        let after = svc.ptr_ips();
        let owner = Owner {
            ns: ns_name,
            svc: svc.name.clone(),
        };
        let empty = svc.kind.is_none() && svc.subsets.is_empty();
        if empty {
            ns.services.remove(svc_key.as_str());
        }
        for ip in before.iter().filter(|ip| !after.contains(ip)) {
            if let Some(owners) = self.ptr.get_mut(ip) {
                owners.retain(|o| *o != owner);
                if owners.is_empty() {
                    self.ptr.remove(ip);
                }
            }
        }
        for ip in after.iter().filter(|ip| !before.contains(ip)) {
            let owners = self.ptr.entry(*ip).or_default();
            if !owners.contains(&owner) {
                owners.push(owner.clone());
            }
        }
        self.drop_namespace_if_empty(&ns_key);
    }

    fn namespace_mut(&mut self, ns: &str) -> &mut Namespace {
        let key = ns.to_ascii_lowercase();
        self.namespaces
            .entry(key.as_str().into())
            .or_insert_with(|| Namespace {
                name: Arc::from(key.as_str()),
                services: HashMap::new(),
                pods: HashMap::new(),
            })
    }

    fn drop_namespace_if_empty(&mut self, ns: &str) {
        if self
            .namespaces
            .get(ns)
            .is_some_and(|n| n.services.is_empty() && n.pods.is_empty())
        {
            self.namespaces.remove(ns);
        }
    }
}

impl Svc {
    /// The IPs this Service answers PTR queries for: its ClusterIPs, or the
    /// ready endpoint IPs of a headless Service.
    fn ptr_ips(&self) -> Vec<IpAddr> {
        match &self.kind {
            Some(SvcKind::ClusterIp(ips)) => ips.to_vec(),
            Some(SvcKind::Headless) => {
                let mut ips: Vec<IpAddr> = self.ready_addrs().map(|a| a.ip).collect();
                ips.sort();
                ips.dedup();
                ips
            }
            _ => Vec::new(),
        }
    }

    fn ready_addrs(&self) -> impl Iterator<Item = &Addr> {
        self.subsets
            .iter()
            .flat_map(|s| s.addrs.iter())
            .filter(|a| a.ready)
    }
}

/// `(namespace, name)` of an object, namespace defaulted.
fn meta_key<'a>(ns: &'a Option<String>, name: &'a Option<String>) -> (&'a str, Option<&'a str>) {
    (
        ns.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        name.as_deref().filter(|n| !n.is_empty()),
    )
}

fn service_kind(service: &Service) -> Option<SvcKind> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?;
        let mut name = Name::from_ascii(target.trim_end_matches('.')).ok()?;
        name.set_fqdn(true);
        return Some(SvcKind::ExternalName(name));
    }
    let mut raw: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if raw.is_empty() {
        raw.extend(spec.cluster_ip.as_deref());
    }
    if raw.is_empty() {
        return None; // not allocated yet
    }
    if raw.contains(&"None") {
        return Some(SvcKind::Headless);
    }
    let ips: Box<[IpAddr]> = raw.iter().filter_map(|ip| ip.parse().ok()).collect();
    (!ips.is_empty()).then_some(SvcKind::ClusterIp(ips))
}

fn service_ports(service: &Service) -> Box<[Port]> {
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| {
            named_port(
                p.name.as_deref(),
                p.protocol.as_deref(),
                u16::try_from(p.port).ok()?,
            )
        })
        .collect()
}

fn named_port(name: Option<&str>, proto: Option<&str>, port: u16) -> Option<Port> {
    let name = name.filter(|n| !n.is_empty())?;
    Some(Port {
        name: format!("_{}", name.to_ascii_lowercase()).into(),
        proto: format!("_{}", proto.unwrap_or("TCP").to_ascii_lowercase()).into(),
        port,
    })
}

fn subset_from(e: &Endpoints) -> Subset {
    Subset {
        ports: e
            .ports
            .iter()
            .filter_map(|p| {
                named_port(
                    p.name.as_deref(),
                    Some(&p.protocol),
                    u16::try_from(p.port).ok()?,
                )
            })
            .collect(),
        addrs: e
            .addresses
            .iter()
            .map(|a| Addr {
                ip: a.ip,
                ready: a.ready,
                pod: a
                    .pod
                    .rsplit_once('/')
                    .map(|(_, n)| n)
                    .filter(|n| !n.is_empty())
                    .map(Into::into),
            })
            .collect(),
    }
}

fn pod_entry(pod: &Pod) -> PodEntry {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut ips: Vec<IpAddr> = Vec::new();
    if let (Some(status), false) = (pod.status.as_ref(), host_network) {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
        for ip in status.pod_ips.iter().flatten() {
            if let Ok(ip) = ip.ip.parse() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    let host = spec.and_then(|s| {
        let h = s.hostname.as_deref().filter(|h| !h.is_empty())?;
        let d = s.subdomain.as_deref().filter(|d| !d.is_empty())?;
        Some(Box::new((
            h.to_ascii_lowercase().into(),
            d.to_ascii_lowercase().into(),
        )))
    });
    PodEntry {
        ips: ips.into(),
        host,
    }
}

/// A watch transform for the pods the zone is fed: keeps what
/// [`Zone::upsert_pod`] reads (name, namespace, resourceVersion;
/// hostNetwork, hostname and subdomain; the pod IPs), so that the feed's
/// store of every pod in the cluster holds little more than addresses.
pub fn strip_pod(o: &mut controlplane::Object) {
    let controlplane::Object::Pod(pod) = o else {
        return;
    };
    controlplane::watcher::KeepMeta::IDENTITY.strip(&mut pod.metadata);
    pod.spec = pod
        .spec
        .take()
        .map(|s| k8s_openapi::api::core::v1::PodSpec {
            host_network: s.host_network,
            hostname: s.hostname,
            subdomain: s.subdomain,
            ..Default::default()
        });
    pod.status = pod
        .status
        .take()
        .map(|s| k8s_openapi::api::core::v1::PodStatus {
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..Default::default()
        });
}

#[cfg(test)]
pub(crate) mod tests;
