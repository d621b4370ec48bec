//! Validation of `networking.k8s.io/v1` NetworkPolicy and
//! `discovery.k8s.io/v1` EndpointSlice, with kube-apiserver's field paths
//! and messages.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::label_selector;
use super::{dns_label, dns_subdomain, Errs};

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const PORT_MSG: &str = "must be between 1 and 65535, inclusive";
/// At most this many endpoints and ports in one slice.
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 100;
const MAX_ADDRESSES: usize = 100;

/// A NetworkPolicy.
pub(crate) fn network_policy(np: &NetworkPolicy, e: &mut Errs) {
    let Some(s) = &np.spec else {
        e.required("spec", "");
        return;
    };
    if let Some(sel) = &s.pod_selector {
        label_selector(sel, "spec.podSelector", e);
    }
    for (i, rule) in s.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ports(rule.ports.as_deref(), &at, e);
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            policy_peer(peer, &format!("{at}.from[{j}]"), e);
        }
    }
    for (i, rule) in s.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        ports(rule.ports.as_deref(), &at, e);
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            policy_peer(peer, &format!("{at}.to[{j}]"), e);
        }
    }
    let types = s.policy_types.as_deref().unwrap_or_default();
    if types.len() > 2 {
        e.invalid(
            "spec.policyTypes",
            format!("{types:?}"),
            "may not specify more than two policyTypes",
        );
        return;
    }
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            e.not_supported(format!("spec.policyTypes[{i}]"), t, &["Ingress", "Egress"]);
        }
    }
}

fn ports(ports: Option<&[NetworkPolicyPort]>, rule: &str, e: &mut Errs) {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        policy_port(p, &format!("{rule}.ports[{i}]"), e);
    }
}

/// One port of a rule: protocol, a number or a name, and `endPort` only
/// after a numeric `port` it does not undercut.
fn policy_port(p: &NetworkPolicyPort, at: &str, e: &mut Errs) {
    if let Some(proto) = p.protocol.as_deref() {
        if !PROTOCOLS.contains(&proto) {
            e.not_supported(format!("{at}.protocol"), proto, PROTOCOLS);
        }
    }
    match (&p.port, p.end_port) {
        (Some(IntOrString::Int(port)), end) => {
            if !(1..=65535).contains(port) {
                e.invalid(format!("{at}.port"), port, PORT_MSG);
            }
            if let Some(end) = end {
                if end < *port {
                    e.invalid(
                        format!("{at}.endPort"),
                        end,
                        "must be greater than or equal to `port`",
                    );
                }
                if !(1..=65535).contains(&end) {
                    e.invalid(format!("{at}.endPort"), end, PORT_MSG);
                }
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                e.invalid(
                    format!("{at}.endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                );
            }
            if let Some(why) = port_name(name) {
                e.invalid(format!("{at}.port"), format!("{name:?}"), why);
            }
        }
        (None, Some(end)) => e.invalid(
            format!("{at}.endPort"),
            end,
            "may not be specified when `port` is not specified",
        ),
        (None, None) => {}
    }
}

/// Why `n` is not an IANA service name (a named container port).
pub(crate) fn port_name(n: &str) -> Option<&'static str> {
    let b = n.as_bytes();
    if b.is_empty() || b.len() > 15 {
        Some("must be no more than 15 characters")
    } else if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    } else if n.contains("--") || b[0] == b'-' || b[b.len() - 1] == b'-' {
        Some("must not contain consecutive hyphens or begin or end with a hyphen")
    } else if !b.iter().any(u8::is_ascii_lowercase) {
        Some("must contain at least one letter (a-z)")
    } else {
        None
    }
}

/// One peer: exactly a pod selector and/or namespace selector, or an ipBlock.
fn policy_peer(peer: &NetworkPolicyPeer, at: &str, e: &mut Errs) {
    let mut n = 0;
    if let Some(sel) = &peer.pod_selector {
        n += 1;
        label_selector(sel, &format!("{at}.podSelector"), e);
    }
    if let Some(sel) = &peer.namespace_selector {
        n += 1;
        label_selector(sel, &format!("{at}.namespaceSelector"), e);
    }
    if let Some(b) = &peer.ip_block {
        n += 1;
        ip_block(b, &format!("{at}.ipBlock"), e);
    }
    if n == 0 {
        e.required(at, "must specify a peer");
    } else if n > 1 && peer.ip_block.is_some() {
        e.forbidden(at, "may not specify both ipBlock and another peer");
    }
}

/// An ipBlock: a CIDR, and excepts strictly inside it.
fn ip_block(b: &IPBlock, at: &str, e: &mut Errs) {
    if b.cidr.is_empty() {
        e.required(format!("{at}.cidr"), "");
        return;
    }
    let Ok(cidr) = b.cidr.parse::<IpNet>() else {
        e.invalid(format!("{at}.cidr"), format!("{:?}", b.cidr), CIDR_MSG);
        return;
    };
    for (i, ex) in b.except.iter().flatten().enumerate() {
        let path = format!("{at}.except[{i}]");
        match ex.parse::<IpNet>() {
            Err(_) => e.invalid(&path, format!("{ex:?}"), CIDR_MSG),
            Ok(x) => {
                if !cidr.trunc().contains(&x.network()) || cidr.prefix_len() >= x.prefix_len() {
                    e.invalid(
                        &path,
                        format!("{ex:?}"),
                        "must be a strict subset of `cidr`",
                    );
                }
            }
        }
    }
}

/// An EndpointSlice.
pub(crate) fn endpoint_slice(s: &EndpointSlice, e: &mut Errs) {
    let ty = s.address_type.as_str();
    match ty {
        "IPv4" | "IPv6" | "FQDN" => {}
        "" => e.required("addressType", ""),
        other => e.not_supported("addressType", other, &["IPv4", "IPv6", "FQDN"]),
    }
    if s.endpoints.len() > MAX_ENDPOINTS {
        e.add(
            "endpoints",
            format!(
                "Too many: {}: must have at most {MAX_ENDPOINTS} items",
                s.endpoints.len()
            ),
        );
    }
    for (i, ep) in s.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if ep.addresses.is_empty() {
            e.required(format!("{at}.addresses"), "must contain at least 1 address");
        } else if ep.addresses.len() > MAX_ADDRESSES {
            e.add(
                format!("{at}.addresses"),
                format!(
                    "Too many: {}: must have at most {MAX_ADDRESSES} items",
                    ep.addresses.len()
                ),
            );
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let why = match ty {
                "IPv4" => (!a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()))
                    .then_some("must be a valid IPv4 address"),
                "IPv6" => (!a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()))
                    .then_some("must be a valid IPv6 address"),
                "FQDN" => dns_subdomain(a),
                _ => None,
            };
            if let Some(why) = why {
                e.invalid(format!("{at}.addresses[{j}]"), format!("{a:?}"), why);
            }
        }
        if let Some(h) = &ep.hostname {
            if let Some(why) = dns_label(h) {
                e.invalid(format!("{at}.hostname"), format!("{h:?}"), why);
            }
        }
        if let Some(n) = &ep.node_name {
            if let Some(why) = dns_subdomain(n) {
                e.invalid(format!("{at}.nodeName"), format!("{n:?}"), why);
            }
        }
    }
    let ports = s.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_PORTS {
        e.add(
            "ports",
            format!(
                "Too many: {}: must have at most {MAX_PORTS} items",
                ports.len()
            ),
        );
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or_default();
        if !name.is_empty() {
            if let Some(why) = dns_label(name) {
                e.invalid(format!("{at}.name"), format!("{name:?}"), why);
            }
        }
        if !names.insert(name) {
            e.add(format!("{at}.name"), format!("Duplicate value: {name:?}"));
        }
        match p.protocol.as_deref() {
            None => e.required(format!("{at}.protocol"), ""),
            Some(proto) if !PROTOCOLS.contains(&proto) => {
                e.not_supported(format!("{at}.protocol"), proto, PROTOCOLS)
            }
            Some(_) => {}
        }
        if let Some(port) = p.port {
            if !(1..=65535).contains(&port) {
                e.invalid(format!("{at}.port"), port, PORT_MSG);
            }
        }
    }
}

/// An EndpointSlice's address type may not change.
pub(crate) fn endpoint_slice_update(old: &EndpointSlice, new: &EndpointSlice, e: &mut Errs) {
    if old.address_type != new.address_type {
        e.invalid(
            "addressType",
            format!("{:?}", new.address_type),
            "field is immutable",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::create_errors;

    fn policy(spec: &str) -> Vec<String> {
        create_errors(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
        ))
    }

    #[test]
    fn a_good_policy_passes() {
        let e = policy("  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: web}}\n      namespaceSelector: {matchLabels: {team: a}}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports: [{port: 5432}, {port: 8000, endPort: 8080, protocol: UDP}, {port: http}]\n  egress:\n  - to: [{ipBlock: {cidr: '2001:db8::/32'}}]\n");
        assert_eq!(e, Vec::<String>::new());
    }

    #[test]
    fn end_port_rules_name_the_field() {
        let e = policy("  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: 79}, {port: http, endPort: 90}, {endPort: 90}, {port: 80, endPort: 70000}]\n");
        assert_eq!(
            e,
            [
                "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`",
                "spec.ingress[0].ports[1].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
                "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is not specified",
                "spec.ingress[0].ports[3].endPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn cidrs_excepts_protocols_and_peers() {
        let e = policy("  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/33}\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24, 10.0.0.0/16, nonsense]}\n    - {}\n    - {ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}\n    ports: [{port: 53, protocol: ICMP}]\n  policyTypes: [Egress, Sideways]\n");
        assert_eq!(
            e,
            [
                "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
                "spec.egress[0].to[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.egress[0].to[1].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
                "spec.egress[0].to[1].ipBlock.except[1]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
                "spec.egress[0].to[1].ipBlock.except[2]: Invalid value: \"nonsense\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.egress[0].to[2]: Required value: must specify a peer",
                "spec.egress[0].to[3]: Forbidden: may not specify both ipBlock and another peer",
                "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"",
            ]
        );
    }

    #[test]
    fn policy_defaults() {
        let mut o = crate::manifest::parse("t", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  egress: [{ports: [{port: 53}]}]\n").unwrap().remove(0);
        crate::defaults::apply(&mut o);
        let v = o.to_value();
        assert_eq!(
            v["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        assert_eq!(v["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(v["metadata"]["namespace"], "default");
    }

    fn slice(body: &str) -> Vec<String> {
        create_errors(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s}}\n{body}"
        ))
    }

    #[test]
    fn endpoint_slices() {
        assert_eq!(
            slice("addressType: IPv4\nendpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}]\nports: [{name: http, port: 80}]\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            slice("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}, {addresses: []}]\nports: [{port: 0, protocol: ICMP}, {name: ''}]\n"),
            [
                "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
                "endpoints[1].addresses: Required value: must contain at least 1 address",
                "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
                "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "ports[1].name: Duplicate value: \"\"",
            ]
        );
        assert_eq!(
            slice("addressType: Carrier\nendpoints: []\n"),
            ["addressType: Unsupported value: \"Carrier\": supported values: \"IPv4\", \"IPv6\", \"FQDN\""]
        );
    }
}
