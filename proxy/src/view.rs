//! The service view: plain data per Service port (VIP, NodePort, policies,
//! affinity, the endpoints it balances over), built from the control
//! plane's Services and EndpointSlices with `controlplane::endpoints`. It decides
//! nothing about iptables and does no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub use crate::family::Addr;
use std::sync::Arc;

use controlplane::endpoints::{endpoints_for, targets, Endpoints};
use k8s_openapi::api::core::v1::{Pod, Service};

pub use crate::rules::names::{Protocol, ServicePortName};

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A Service: (namespace, name).
pub type ServiceKey = (String, String);

/// The desired state by Service: each one's proxied ports, in the order
/// [`ports_of`] gives them. The ports are shared: the controller, the sync
/// thread and the nftables engine hold one allocation per Service.
pub type ServiceMap<A = Ipv4Addr> = BTreeMap<ServiceKey, Arc<[ServicePort<A>]>>;

/// `ports` by their Service, keeping their order within each.
pub fn group<A: Addr>(ports: &[ServicePort<A>]) -> ServiceMap<A> {
    let mut by: BTreeMap<ServiceKey, Vec<ServicePort<A>>> = BTreeMap::new();
    for sp in ports {
        by.entry((sp.name.namespace.clone(), sp.name.name.clone()))
            .or_default()
            .push(sp.clone());
    }
    by.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// One backend of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    /// Whether the pod runs on this node (traffic policy `Local`).
    pub local: bool,
}

impl<A: Addr> Endpoint<A> {
    /// `ip:port`, as kube-proxy prints (and hashes) an endpoint.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One port of one Service, with everything the ruleset needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort<A = Ipv4Addr> {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub cluster_ip: A,
    pub port: u16,
    /// Set for `NodePort` and `LoadBalancer` Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` (those of the family): answered like the load balancer's.
    pub external_ips: Vec<A>,
    /// `status.loadBalancer.ingress[].ip` of a `LoadBalancer` Service.
    pub load_balancer_ips: Vec<A>,
    /// `sessionAffinity: ClientIP` and its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// The endpoints traffic is balanced over, sorted by IP then port: the
    /// ready ones, or when none is ready the serving terminating ones.
    pub endpoints: Vec<Endpoint<A>>,
    /// This node's serving terminating endpoints, when `endpoints` has
    /// ready ones but none on this node: a Local policy uses these rather
    /// than dropping (kube-proxy categorises local endpoints on their own).
    /// Empty otherwise, and for Services without a Local policy.
    pub local_fallback: Vec<Endpoint<A>>,
}

impl<A: Addr> ServicePort<A> {
    /// A ClusterIP Service port without endpoints, affinity or Local
    /// policies; set the other fields as needed.
    pub fn new(
        name: ServicePortName,
        protocol: Protocol,
        cluster_ip: A,
        port: u16,
    ) -> ServicePort<A> {
        ServicePort {
            name,
            protocol,
            cluster_ip,
            port,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: Vec::new(),
            local_fallback: Vec::new(),
        }
    }

    /// The endpoints a Local policy balances over: this node's among
    /// `endpoints`, or [`ServicePort::local_fallback`] when there are none.
    pub fn local_endpoints(&self) -> Vec<Endpoint<A>> {
        let local: Vec<Endpoint<A>> = self.endpoints.iter().filter(|e| e.local).cloned().collect();
        if local.is_empty() {
            self.local_fallback.clone()
        } else {
            local
        }
    }

    /// Whether `other` sends to the same endpoints.
    pub fn same_endpoints(&self, other: &ServicePort<A>) -> bool {
        (&self.endpoints, &self.local_fallback) == (&other.endpoints, &other.local_fallback)
    }

    /// Every endpoint some chain may send to.
    pub fn all_endpoints(&self) -> impl Iterator<Item = &Endpoint<A>> {
        self.endpoints.iter().chain(&self.local_fallback)
    }

    /// Reachable from outside the cluster: a NodePort, external IPs or
    /// load-balancer IPs (kube-proxy's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// The external IPs, then the load-balancer IPs: destinations that
    /// follow the external traffic policy.
    pub fn external_destinations(&self) -> impl Iterator<Item = A> + '_ {
        self.external_ips
            .iter()
            .chain(&self.load_balancer_ips)
            .copied()
    }

    /// Whether a chain balancing over every endpoint is needed (kube-proxy's
    /// `UsesClusterEndpoints`).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || (self.externally_accessible() && !self.external_local)
    }

    /// Whether a chain balancing over this node's endpoints is needed
    /// (kube-proxy's `UsesLocalEndpoints`).
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.externally_accessible() && self.external_local)
    }

    /// `externalTrafficPolicy: Local` on a Service that has external traffic.
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_local
    }
}

/// The Service ports of `services` that this node proxies, with their
/// endpoints among `pods` as `endpoints_for` finds them (for tests and
/// tools; the proxy itself reads EndpointSlices, [`ports_of`]). Skipped: headless Services and those without a ClusterIP,
/// ExternalName Services, non-IPv4 addresses (IPv4 ports only; the
/// proxy's IPv6 pipeline uses [`ports_of`] for `Ipv6Addr`) and ports with
/// an unknown protocol. Sorted by port name.
pub fn service_ports(services: &[Service], pods: &[Pod], node_name: &str) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = services
        .iter()
        .flat_map(|s| ports_of(s, &endpoints_for(s, pods).unwrap_or_default(), node_name))
        .collect();
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    out
}

/// The proxied ports of one Service with its endpoints `subsets` (from
/// its EndpointSlices, `controlplane::endpoints::from_slices`): the ready
/// ones, or the serving terminating ones when none is ready (`targets`).
/// An endpoint is local when its node is `node_name`. Skipped: headless
/// Services and those without a ClusterIP of family `A` (from
/// `clusterIPs`), ExternalName Services, addresses of the other family
/// and ports with an unknown protocol.
pub fn ports_of<A: Addr>(
    service: &Service,
    subsets: &[Endpoints],
    node_name: &str,
) -> Vec<ServicePort<A>> {
    with_endpoints(&service_ports_of(service), subsets, node_name)
}

/// `ports`, each with its endpoints among `subsets` (by the port's name):
/// the second half of [`ports_of`], for a caller that keeps a Service as
/// its ports ([`service_ports_of`]) rather than as the object.
pub fn with_endpoints<A: Addr>(
    ports: &[ServicePort<A>],
    subsets: &[Endpoints],
    node_name: &str,
) -> Vec<ServicePort<A>> {
    let of_family = |e: &controlplane::endpoints::Endpoint, target: i32| -> Option<Endpoint<A>> {
        let ip = A::of(e.ip)?;
        Some(Endpoint {
            ip,
            port: u16::try_from(target).ok()?,
            local: e.node.as_deref() == Some(node_name),
        })
    };
    let sorted = |mut v: Vec<Endpoint<A>>| {
        v.sort();
        v.dedup();
        v
    };
    ports
        .iter()
        .map(|sp| {
            let name = Some(sp.name.port.as_str()).filter(|n| !n.is_empty());
            let endpoints = sorted(
                targets(subsets, name)
                    .into_iter()
                    .filter_map(|(e, target)| of_family(e, target))
                    .collect(),
            );
            let local_fallback = if sp.uses_local_endpoints() && !endpoints.iter().any(|e| e.local)
            {
                sorted(
                    local_terminating(subsets, name, node_name)
                        .filter_map(|(e, target)| of_family(e, target))
                        .collect(),
                )
            } else {
                Vec::new()
            };
            ServicePort {
                endpoints,
                local_fallback,
                ..sp.clone()
            }
        })
        .collect()
}

/// The serving terminating endpoints on `node_name` of the Service port
/// called `port_name`.
fn local_terminating<'a>(
    subsets: &'a [Endpoints],
    port_name: Option<&'a str>,
    node_name: &'a str,
) -> impl Iterator<Item = (&'a controlplane::endpoints::Endpoint, i32)> + 'a {
    subsets
        .iter()
        .filter_map(move |subset| subset.port(port_name).map(|p| (subset, p.port)))
        .flat_map(|(subset, port)| subset.addresses.iter().map(move |e| (e, port)))
        .filter(move |(e, _)| e.serving && e.terminating && e.node.as_deref() == Some(node_name))
}

/// The proxied ports of one Service, without endpoints: everything
/// [`ports_of`] takes from the Service object.
pub fn service_ports_of<A: Addr>(service: &Service) -> Vec<ServicePort<A>> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Vec::new();
    }
    // The ClusterIP of this family: `clusterIPs` of a dual-stack Service,
    // else `clusterIP`.
    let Some(cluster_ip) = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find_map(A::of)
    else {
        return Vec::new();
    };
    let with_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let of_family = |ips: Vec<&str>| -> Vec<A> {
        let mut v: Vec<A> = ips
            .into_iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .filter_map(A::of)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let external_ips = of_family(
        spec.external_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect(),
    );
    let load_balancer_ips = if ty == "LoadBalancer" {
        of_family(
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .filter_map(|lb| lb.ingress.as_ref())
                .flatten()
                .filter_map(|i| i.ip.as_deref())
                .collect(),
        )
    } else {
        Vec::new()
    };
    let external = with_node_ports || !external_ips.is_empty();
    let namespace = service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| controlplane::defaults::DEFAULT_NAMESPACE.into());
    let name = service.metadata.name.clone().unwrap_or_default();

    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
            let port = u16::try_from(p.port).ok()?;
            Some(ServicePort {
                name: ServicePortName {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: p.name.clone().unwrap_or_default(),
                },
                protocol,
                cluster_ip,
                port,
                node_port: p
                    .node_port
                    .filter(|_| with_node_ports)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0),
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                affinity_seconds,
                external_local: external
                    && spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                endpoints: Vec::new(),
                local_fallback: Vec::new(),
            })
        })
        .collect()
}

/// A TCP port 80 Service port with target port 80 endpoints `(ip, local)`,
/// for tests.
#[cfg(test)]
pub(crate) fn test_port(
    ns: &str,
    name: &str,
    port: &str,
    vip: &str,
    eps: &[(&str, bool)],
) -> ServicePort {
    let name = ServicePortName {
        namespace: ns.into(),
        name: name.into(),
        port: port.into(),
    };
    let mut sp = ServicePort::new(name, Protocol::Tcp, vip.parse().expect("vip"), 80);
    sp.endpoints = eps
        .iter()
        .map(|(ip, local)| Endpoint {
            ip: ip.parse().expect("ip"),
            port: 80,
            local: *local,
        })
        .collect();
    sp
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn svc(spec: Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "prod"}, "spec": spec}),
        )
        .expect("service")
    }

    fn pod(name: &str, ip: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn a_nodeport_service_becomes_ports_with_local_flags() {
        let s = svc(json!({
            "type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
            "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": "UDP"}
            ]
        }));
        let pods = [pod("b", "10.244.2.5", "n2"), pod("a", "10.244.1.5", "n1")];
        let ports = service_ports(&[s], &pods, "n1");
        assert_eq!(ports.len(), 2);
        let http = &ports[1];
        assert_eq!(http.name.to_string(), "prod/web:http");
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert!(http.external_local && !http.internal_local);
        assert_eq!(
            http.endpoints,
            vec![
                Endpoint {
                    ip: "10.244.1.5".parse().expect("ip"),
                    port: 8080,
                    local: true
                },
                Endpoint {
                    ip: "10.244.2.5".parse().expect("ip"),
                    port: 8080,
                    local: false
                },
            ]
        );
        assert_eq!(ports[0].protocol, Protocol::Udp);
        assert_eq!(ports[0].endpoints[0].port, 5353);
    }

    #[test]
    fn external_and_load_balancer_ips_are_kept_with_the_external_policy() {
        let mut s = svc(json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
            "externalIPs": ["203.0.113.9", "2001:db8::1", "203.0.113.8"],
            "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]
        }));
        s.status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example"}]}}),
        )
        .expect("status");
        let p = &service_ports(&[s], &[], "n1")[0];
        assert_eq!(
            p.external_ips,
            ["203.0.113.8", "203.0.113.9"].map(|ip| ip.parse::<Ipv4Addr>().unwrap())
        );
        assert_eq!(
            p.load_balancer_ips,
            vec!["198.51.100.7".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(p.external_policy_local());

        // A ClusterIP Service with external IPs is externally accessible.
        let s = svc(json!({
            "clusterIP": "10.96.0.11", "externalIPs": ["203.0.113.9"],
            "externalTrafficPolicy": "Local", "ports": [{"port": 80}]
        }));
        let p = &service_ports(&[s], &[], "n1")[0];
        assert!(p.externally_accessible() && p.external_policy_local());
        assert!(p.load_balancer_ips.is_empty() && p.node_port.is_none());
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        for spec in [
            json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "example.com"}),
            json!({"clusterIP": "fd00::10", "ports": [{"port": 80}]}),
        ] {
            assert!(service_ports(&[svc(spec)], &[], "n1").is_empty());
        }
    }

    #[test]
    fn a_cluster_ip_service_ignores_a_stray_node_port_and_keeps_no_endpoints() {
        let s = svc(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80, "nodePort": 30001}]}));
        let ports = service_ports(&[s], &[], "n1");
        assert_eq!(ports[0].node_port, None);
        assert!(ports[0].endpoints.is_empty());
        assert_eq!(ports[0].name.to_string(), "prod/web");
    }

    /// Subsets of one port `p` (8080): `(ip, node, ready, terminating)`.
    fn subsets(eps: &[(&str, &str, bool, bool)]) -> Vec<Endpoints> {
        vec![Endpoints {
            namespace: "prod".into(),
            service: "web".into(),
            addresses: eps
                .iter()
                .map(
                    |(ip, node, ready, terminating)| controlplane::endpoints::Endpoint {
                        ip: ip.parse().expect("ip"),
                        node: Some(node.to_string()),
                        pod: String::new(),
                        ready: *ready,
                        serving: *ready || *terminating,
                        terminating: *terminating,
                    },
                )
                .collect(),
            ports: vec![controlplane::endpoints::EndpointPort {
                name: Some("p".into()),
                port: 8080,
                protocol: "TCP".into(),
            }],
        }]
    }

    #[test]
    fn a_local_policy_falls_back_to_this_nodes_terminating_endpoints() {
        let local = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
            "externalTrafficPolicy": "Local",
            "ports": [{"name": "p", "port": 80, "nodePort": 30080}]}));
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        // Ready only elsewhere, serving and terminating here.
        let draining = subsets(&[
            ("10.244.2.5", "n2", true, false),
            ("10.244.1.5", "n1", false, true),
        ]);
        let p = &ports_of::<Ipv4Addr>(&local, &draining, "n1")[0];
        assert_eq!(
            p.endpoints.iter().map(|e| e.ip).collect::<Vec<_>>(),
            [ip("10.244.2.5")]
        );
        assert_eq!(
            p.local_fallback
                .iter()
                .map(|e| (e.ip, e.local))
                .collect::<Vec<_>>(),
            [(ip("10.244.1.5"), true)]
        );
        assert_eq!(p.local_endpoints(), p.local_fallback);
        assert_eq!(p.all_endpoints().count(), 2);
        // A ready local endpoint wins over the terminating one.
        let mixed = subsets(&[
            ("10.244.1.6", "n1", true, false),
            ("10.244.1.5", "n1", false, true),
        ]);
        let p = &ports_of::<Ipv4Addr>(&local, &mixed, "n1")[0];
        assert!(p.local_fallback.is_empty());
        assert_eq!(
            p.local_endpoints().iter().map(|e| e.ip).collect::<Vec<_>>(),
            [ip("10.244.1.6")]
        );
        // On another node, or without a Local policy, there is no fallback.
        assert!(ports_of::<Ipv4Addr>(&local, &draining, "n3")[0]
            .local_fallback
            .is_empty());
        let cluster = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"name": "p", "port": 80, "nodePort": 30080}]}));
        assert!(ports_of::<Ipv4Addr>(&cluster, &draining, "n1")[0]
            .local_fallback
            .is_empty());
        // A terminating endpoint that no longer serves is never used.
        let gone = subsets(&[("10.244.2.5", "n2", true, false)]);
        let mut not_serving = gone.clone();
        not_serving[0]
            .addresses
            .push(controlplane::endpoints::Endpoint {
                serving: false,
                ..draining[0].addresses[1].clone()
            });
        assert!(ports_of::<Ipv4Addr>(&local, &not_serving, "n1")[0]
            .local_fallback
            .is_empty());
    }

    #[test]
    fn a_dual_stack_service_has_ports_in_each_family_with_that_familys_endpoints() {
        use std::net::Ipv6Addr;
        // An IPv6-primary dual-stack Service: its IPv4 address is clusterIPs[1].
        let s = svc(json!({"type": "NodePort", "clusterIP": "fd00:96::10",
            "clusterIPs": ["fd00:96::10", "10.96.0.10"],
            "externalIPs": ["203.0.113.9", "2001:db8::9"],
            "ports": [{"name": "p", "port": 80, "nodePort": 30080}]}));
        let mut both = subsets(&[("10.244.1.5", "n1", true, false)]);
        both.extend(subsets(&[("fd00:10:244:1::5", "n1", true, false)]));
        let v4 = &ports_of::<Ipv4Addr>(&s, &both, "n1")[0];
        let v6 = &ports_of::<Ipv6Addr>(&s, &both, "n1")[0];
        assert_eq!(v4.cluster_ip.to_string(), "10.96.0.10");
        assert_eq!(v6.cluster_ip.to_string(), "fd00:96::10");
        assert_eq!(v4.external_ips.len(), 1);
        assert_eq!(v6.external_ips[0].to_string(), "2001:db8::9");
        assert_eq!((v4.node_port, v6.node_port), (Some(30080), Some(30080)));
        let ips = |p: &ServicePort<Ipv6Addr>| {
            p.endpoints
                .iter()
                .map(|e| e.ip.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ips(v6), ["fd00:10:244:1::5"]);
        assert_eq!(v4.endpoints.len(), 1);
        // A single-stack IPv4 Service has no IPv6 ports.
        let single = svc(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}));
        assert!(ports_of::<Ipv6Addr>(&single, &both, "n1").is_empty());
    }
}
