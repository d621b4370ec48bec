//! What the engine keeps of a pod: where it runs, its address of the
//! engine's family, its
//! labels and its named container ports, and which set elements one
//! (pod, policy) pair contributes. Pure functions of plain data.

use std::collections::BTreeMap;
use std::net::IpAddr;

use controlplane::labels;
use k8s_openapi::api::core::v1::Pod;

use crate::compile::{protocol, Compiled, Direction, Namespaces, Rule};
use crate::ruleset::{addr, named_elem, names, number, peer_elem, IpFamily, Policy, RuleRefs};
use hostnet::nftables::Value;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One element the engine tracks: set name, key, and the value for maps.
pub type ElemKey = (&'static str, Value, Option<Value>);

/// A pod as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    /// On this node and in a namespace of its own (not hostNetwork): the
    /// pods this node isolates.
    pub local: bool,
    pub labels: Labels,
    /// (name, protocol, port) of every named container port.
    pub ports: Vec<(String, u8, u16)>,
}

impl PodInfo {
    /// `pod` on node `node`, with its address of family `family` (from
    /// `status.podIPs`, or `podIP`); `ip` stands in while the status has
    /// none (the kubelet's gate knows the address before the status says
    /// it). Pods that finished hold no address.
    pub fn of(pod: &Pod, node: &str, ip: Option<IpAddr>, family: IpFamily) -> PodInfo {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let from_status = status
            .into_iter()
            .flat_map(|s| {
                let listed = s.pod_ips.iter().flatten().map(|p| p.ip.as_str());
                s.pod_ip.as_deref().into_iter().chain(listed)
            })
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .find(|ip| family.holds(*ip));
        let ports = spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let proto = protocol(p.protocol.as_deref())?;
                let port = u16::try_from(p.container_port).ok()?;
                Some((name, proto, port))
            })
            .collect();
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ip: if finished {
                None
            } else {
                from_status.or(ip.filter(|ip| family.holds(*ip)))
            },
            local: !host_network && spec.and_then(|s| s.node_name.as_deref()) == Some(node),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        }
    }

    /// The port named `name` of protocol `proto`.
    fn named_port(&self, name: &str, proto: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

/// The policy watch's transform for pods: keeps what [`PodInfo::of`]
/// reads (name, namespace, uid, labels, resourceVersion; hostNetwork,
/// nodeName and the containers' ports; phase and pod IPs), so that the
/// store of every pod in the cluster stays small.
pub fn strip_pod(o: &mut controlplane::Object) {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    let controlplane::Object::Pod(pod) = o else {
        return;
    };
    let keep = controlplane::watcher::KeepMeta {
        uid: true,
        labels: true,
        ..controlplane::watcher::KeepMeta::IDENTITY
    };
    keep.strip(&mut pod.metadata);
    let ports_only = |c: Container| Container {
        name: c.name,
        ports: c
            .ports
            .map(|p| p.into_iter().filter(|p| p.name.is_some()).collect()),
        ..Default::default()
    };
    pod.spec = pod.spec.take().map(|s| PodSpec {
        host_network: s.host_network,
        node_name: s.node_name,
        containers: s.containers.into_iter().map(ports_only).collect(),
        init_containers: s
            .init_containers
            .map(|v| v.into_iter().map(ports_only).collect()),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
}

/// The elements a pod contributes whatever the policies, once it is a
/// local pod with an address: the address in [`names::READY`], and its
/// group's number `group` in [`names::POD_GROUP`] (0 for a pod no policy
/// selects: a number no map leads anywhere from, which keeps the address
/// this pod's when another pod held it a moment ago).
pub fn own_elements(pod: &PodInfo, group: u32) -> Vec<ElemKey> {
    match (pod.local, pod.ip) {
        (true, Some(ip)) => vec![
            (names::READY, addr(ip), None),
            (names::POD_GROUP, addr(ip), Some(number(group))),
        ],
        _ => Vec::new(),
    }
}

/// Whether policy `p` selects `pod` (a local pod of its namespace whose
/// labels match).
pub fn selects(p: &Compiled, pod: &PodInfo) -> bool {
    pod.ip.is_some()
        && pod.local
        && pod.namespace == p.namespace
        && labels::matches(&p.pod_selector, &pod.labels)
}

/// The elements `pod` (with `ns_labels`, its namespace's labels)
/// contributes to the shared sets for policy `p`, which selects it or
/// not (`selected`).
pub fn policy_elements(
    p: &Policy,
    pod: &PodInfo,
    ns_labels: &Labels,
    selected: bool,
) -> Vec<ElemKey> {
    let Some(ip) = pod.ip else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in [Direction::Ingress, Direction::Egress] {
        let Some(rules) = p.compiled.rules(d) else {
            continue;
        };
        if selected {
            let shared = match d {
                Direction::Ingress => names::INGRESS_ISOLATED,
                Direction::Egress => names::EGRESS_ISOLATED,
            };
            out.push((shared, addr(ip), None));
        }
        for (rule, refs) in rules.iter().zip(p.refs(d)) {
            rule_elements(p, d, rule, refs, pod, ip, ns_labels, selected, &mut out);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn rule_elements(
    p: &Policy,
    d: Direction,
    rule: &Rule,
    refs: &RuleRefs,
    pod: &PodInfo,
    ip: IpAddr,
    ns_labels: &Labels,
    selected: bool,
    out: &mut Vec<ElemKey>,
) {
    let mut by_selector = false;
    if let Some(peers) = &rule.peers {
        for (pp, n) in peers.pods.iter().zip(&refs.selectors) {
            let ns_ok = match &pp.namespaces {
                Namespaces::Own => pod.namespace == p.compiled.namespace,
                Namespaces::Matching(sel) => labels::matches(sel, ns_labels),
            };
            if ns_ok
                && pp
                    .pods
                    .as_ref()
                    .is_none_or(|s| labels::matches(s, &pod.labels))
            {
                by_selector = true;
                out.push((names::PEERS, peer_elem(*n, ip), None));
            }
        }
    }
    let Some(ports) = rule.ports.as_ref().filter(|ports| !ports.named.is_empty()) else {
        return;
    };
    let Some(n) = refs.named else { return };
    // Ingress: the selected pod's own port. Egress: the peer's port.
    let resolve = match d {
        Direction::Ingress => selected,
        Direction::Egress => match &rule.peers {
            None => true,
            Some(peers) => by_selector || peers.cidrs.iter().any(|(a, z)| (*a..=*z).contains(&ip)),
        },
    };
    if !resolve {
        return;
    }
    for (proto, name) in &ports.named {
        if let Some(port) = pod.named_port(name, *proto) {
            out.push((names::NAMED_PORTS, named_elem(n, ip, *proto, port), None));
        }
    }
}
