//! A NetworkPolicy as the engine reads it: which directions it isolates,
//! and per rule its peers (pod selectors, address ranges with the
//! `except`s carved out) and ports (merged ranges per protocol, and named
//! ports left to resolve per pod). Pure: no pods, no kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

/// `IPPROTO_TCP`.
pub const TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const SCTP: u8 = 132;

/// The protocol number of a Kubernetes protocol name (TCP when absent).
pub fn protocol(name: Option<&str>) -> Option<u8> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// Traffic into the selected pods, or out of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The short name chains and sets carry: `in`, `eg`.
    pub fn short(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        }
    }
}

/// Whose namespace a pod peer must be in.
#[derive(Debug, Clone, PartialEq)]
pub enum Namespaces {
    /// The policy's own (the peer has no namespaceSelector).
    Own,
    /// Namespaces whose labels match.
    Matching(LabelSelector),
}

/// One pod peer: pods matching `pods` (every pod when `None`) in
/// `namespaces`.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPeer {
    pub namespaces: Namespaces,
    pub pods: Option<LabelSelector>,
}

/// A rule's `from`/`to`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Peers {
    pub pods: Vec<PodPeer>,
    /// Inclusive address ranges, sorted (IPv4 first), merged, `except`s
    /// removed.
    pub cidrs: Vec<(IpAddr, IpAddr)>,
}

/// A rule's `ports`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ports {
    /// (protocol, first, last), sorted and merged per protocol; a
    /// protocol without a port is its whole range.
    pub ranges: Vec<(u8, u16, u16)>,
    /// (protocol, port name), resolved against each pod's container ports.
    pub named: Vec<(u8, String)>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `None`: every peer (no `from`/`to`, or an empty list).
    pub peers: Option<Peers>,
    /// `None`: every port of every protocol.
    pub ports: Option<Ports>,
}

/// A policy, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub namespace: String,
    pub name: String,
    /// Names its chains and sets; changes when the spec does, so a
    /// changed policy is a new chain (and a restarted agent can tell).
    pub id: String,
    pub pod_selector: LabelSelector,
    /// `None` when the policy does not isolate ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// The namespaceSelectors of its pod peers: pods of namespaces they
    /// match can be peers.
    pub peer_namespaces: Vec<LabelSelector>,
    /// Whether pods of every namespace can add elements to its sets
    /// (named ports of an egress rule open to every peer or to address
    /// ranges).
    pub all_namespaces: bool,
}

impl Compiled {
    /// Whether pods of namespace `ns` (labelled `labels`) can add elements
    /// to its sets: a pod of any other namespace cannot.
    pub fn concerns(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        ns == self.namespace
            || self.all_namespaces
            || self
                .peer_namespaces
                .iter()
                .any(|s| controlplane::labels::matches(s, labels))
    }

    /// The rules of direction `d`, if the policy isolates it.
    pub fn rules(&self, d: Direction) -> Option<&[Rule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Compiles `np`. Input the API server accepted compiles; what the
/// tables cannot hold (an unknown protocol) is left out, which only ever
/// allows less. Address ranges of both families are kept: each family's
/// table uses its own.
pub fn compile(np: &NetworkPolicy) -> Compiled {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = np.spec.clone().unwrap_or_default();
    let types = policy_types(&spec);
    let ingress = types.0.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .map(|r| rule(r.from.as_deref(), r.ports.as_deref()))
            .collect::<Vec<_>>()
    });
    let egress = types.1.then(|| {
        spec.egress
            .iter()
            .flatten()
            .map(|r| rule(r.to.as_deref(), r.ports.as_deref()))
            .collect::<Vec<_>>()
    });
    let rules = || ingress.iter().chain(egress.iter()).flatten();
    // Named ports of an egress rule open to every peer, or to address
    // ranges, are resolved on pods of any namespace (an ingress rule's on
    // the selected pods).
    let all_namespaces = egress.iter().flatten().any(|r| {
        let named = r.ports.as_ref().is_some_and(|p| !p.named.is_empty());
        named && r.peers.as_ref().is_none_or(|p| !p.cidrs.is_empty())
    });
    let peer_namespaces = rules()
        .flat_map(|r| r.peers.iter().flat_map(|p| p.pods.iter()))
        .filter_map(|p| match &p.namespaces {
            Namespaces::Matching(sel) => Some(sel.clone()),
            Namespaces::Own => None,
        })
        .collect();
    Compiled {
        id: chain_id(&namespace, &name, &spec),
        namespace,
        name,
        pod_selector: spec.pod_selector.clone().unwrap_or_default(),
        ingress,
        egress,
        peer_namespaces,
        all_namespaces,
    }
}

/// (ingress, egress): the API's defaulting rule where policyTypes is empty.
fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn rule(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>) -> Rule {
    Rule {
        peers: peers.filter(|p| !p.is_empty()).map(compile_peers),
        ports: ports.filter(|p| !p.is_empty()).map(compile_ports),
    }
}

fn compile_peers(peers: &[NetworkPolicyPeer]) -> Peers {
    let mut out = Peers::default();
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in peers {
        if let Some(b) = &p.ip_block {
            let Ok(net) = b.cidr.parse::<IpNet>() else {
                continue;
            };
            let mut keep = vec![span(&net)];
            for e in b.except.iter().flatten() {
                match e.parse::<IpNet>() {
                    Ok(x) if x.network().is_ipv4() == net.network().is_ipv4() => {
                        let (lo, hi) = span(&x);
                        keep = subtract(&keep, lo, hi);
                    }
                    _ => {}
                }
            }
            match net {
                IpNet::V4(_) => v4.extend(keep),
                IpNet::V6(_) => v6.extend(keep),
            }
            continue;
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            continue;
        }
        out.pods.push(PodPeer {
            namespaces: match &p.namespace_selector {
                Some(s) => Namespaces::Matching(s.clone()),
                None => Namespaces::Own,
            },
            pods: p.pod_selector.clone(),
        });
    }
    let addr4 = |a: u128| IpAddr::V4(Ipv4Addr::from(a as u32));
    let addr6 = |a: u128| IpAddr::V6(Ipv6Addr::from(a));
    out.cidrs = merge(v4)
        .into_iter()
        .map(|(a, b)| (addr4(a), addr4(b)))
        .chain(merge(v6).into_iter().map(|(a, b)| (addr6(a), addr6(b))))
        .collect();
    out
}

/// A network's first and last address, as numbers.
fn span(net: &IpNet) -> (u128, u128) {
    let n = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    (n(net.network()), n(net.broadcast()))
}

fn compile_ports(ports: &[NetworkPolicyPort]) -> Ports {
    let mut out = Ports::default();
    let mut by_proto: Vec<(u8, u128, u128)> = Vec::new();
    for p in ports {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => by_proto.push((proto, 0, 65535)),
            Some(IntOrString::Int(n)) => {
                let first = (*n).clamp(0, 65535) as u128;
                let last = p.end_port.map_or(first, |e| e.clamp(0, 65535) as u128);
                if last >= first {
                    by_proto.push((proto, first, last));
                }
            }
            Some(IntOrString::String(name)) => {
                if !out.named.contains(&(proto, name.clone())) {
                    out.named.push((proto, name.clone()));
                }
            }
        }
    }
    for proto in [TCP, UDP, SCTP] {
        let ranges = by_proto
            .iter()
            .filter(|(p, _, _)| *p == proto)
            .map(|(_, a, b)| (*a, *b))
            .collect();
        for (a, b) in merge(ranges) {
            out.ranges.push((proto, a as u16, b as u16));
        }
    }
    out
}

/// `ranges` minus `[lo, hi]`.
fn subtract(ranges: &[(u128, u128)], lo: u128, hi: u128) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        if hi < a || lo > b {
            out.push((a, b));
            continue;
        }
        if lo > a {
            out.push((a, lo - 1));
        }
        if hi < b {
            out.push((hi + 1, b));
        }
    }
    out
}

/// Sorted, with overlapping and adjacent ranges joined (interval sets
/// refuse overlaps, and an rbtree range's end marker would collide with
/// the next range's start).
pub fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `np/<namespace>/<name>/<8 hex of the spec's hash>`; names too long
/// for a readable chain name are hashed too.
fn chain_id(ns: &str, name: &str, spec: &NetworkPolicySpec) -> String {
    let spec_hash = hex8(&serde_json::to_vec(spec).unwrap_or_default());
    if ns.len() + name.len() <= 120 {
        format!("np/{ns}/{name}/{spec_hash}")
    } else {
        format!("np/{}/{spec_hash}", hex8(format!("{ns}/{name}").as_bytes()))
    }
}

fn hex8(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn policy_types_default_as_the_api_does() {
        let c = compile(&policy(json!({"podSelector": {}})));
        assert_eq!(c.ingress, Some(vec![]), "ingress isolated, nothing allowed");
        assert_eq!(c.egress, None);
        let c = compile(&policy(json!({"podSelector": {}, "egress": [{}]})));
        assert!(c.ingress.is_some() && c.egress.as_ref().unwrap().len() == 1);
        let c = compile(&policy(
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ));
        assert_eq!((c.ingress, c.egress), (None, Some(vec![])));
    }

    #[test]
    fn ip_blocks_lose_their_excepts_and_merge() {
        let c = compile(&policy(json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.128/25", "10.0.0.0/32"]}},
            {"ipBlock": {"cidr": "10.0.1.0/24"}},
            {"ipBlock": {"cidr": "10.0.0.200/32"}},
            {"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/65", "10.0.0.0/8"]}},
        ]}]})));
        let peers = c.ingress.unwrap()[0].peers.clone().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            peers.cidrs,
            vec![
                (ip("10.0.0.1"), ip("10.0.0.127")),
                (ip("10.0.0.200"), ip("10.0.0.200")),
                (ip("10.0.1.0"), ip("10.0.1.255")),
                (ip("fd00::8000:0:0:0"), ip("fd00::ffff:ffff:ffff:ffff")),
            ]
        );
        assert!(peers.pods.is_empty());
    }

    #[test]
    fn ports_merge_per_protocol_and_keep_names() {
        let c = compile(&policy(json!({"podSelector": {}, "ingress": [{"ports": [
            {"protocol": "TCP", "port": 80},
            {"protocol": "TCP", "port": 81, "endPort": 90},
            {"protocol": "UDP"},
            {"protocol": "SCTP", "port": "web"},
            {"port": 443},
        ]}]})));
        let ports = c.ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(
            ports.ranges,
            vec![(TCP, 80, 90), (TCP, 443, 443), (UDP, 0, 65535)]
        );
        assert_eq!(ports.named, vec![(SCTP, "web".to_string())]);
    }

    #[test]
    fn the_id_follows_the_spec() {
        let a = compile(&policy(json!({"podSelector": {}})));
        let b = compile(&policy(json!({"podSelector": {"matchLabels": {"a": "b"}}})));
        assert!(a.id.starts_with("np/x/p/") && a.id != b.id);
        assert_eq!(a.id, compile(&policy(json!({"podSelector": {}}))).id);
        let none = BTreeMap::new();
        assert!(a.concerns("x", &none) && !a.concerns("y", &none));
        let c = compile(&policy(json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]})));
        let team_y = [("team".to_string(), "y".to_string())].into();
        assert!(c.concerns("y", &team_y) && !c.concerns("z", &none));
        let named = |dir: &str, peers: &str| {
            json!({"podSelector": {}, dir: [{peers: [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                             "ports": [{"port": "web"}]}]})
        };
        let d = compile(&policy(named("egress", "to")));
        assert!(d.concerns("z", &none), "egress named ports: any namespace");
        let e = compile(&policy(named("ingress", "from")));
        assert!(
            !e.concerns("z", &none),
            "ingress named ports: the selected pods'"
        );
    }
}
