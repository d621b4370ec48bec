//! Session affinity's client entries, which the packet path writes into
//! `affinity-clients`: which of them a sync must drop (their endpoint left
//! the Service port, or the port lost affinity) and which a full sync
//! carries into the new table. Pure functions over views and dumped
//! elements; the engine does the I/O.

use std::collections::{HashMap, HashSet};

use hostnet::nftables::{Elem, ElemData, Field, Value};

use super::ruleset::to;
use crate::family::Addr;
use crate::view::ServicePort;

/// An entry's key: client (4 bytes, 16 for IPv6), destination address
/// (4 or 16), protocol and port (4 + 4, padded).
fn dest(addr: usize) -> std::ops::Range<usize> {
    addr..2 * addr + 8
}

fn port(addr: usize) -> std::ops::Range<usize> {
    2 * addr..2 * addr + 8
}

/// The endpoints an entry may lead to, by destination (`ip . proto .
/// port`: ClusterIP, external and load-balancer IPs) and by NodePort
/// (`proto . port`, any node address).
#[derive(Debug, Default)]
pub struct Targets {
    dests: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    node_ports: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// The address length of the family noted ([`Targets::add`]).
    addr: usize,
}

impl Targets {
    /// Notes what `sp`'s entries may lead to (nothing when it has no
    /// affinity or no endpoints).
    pub fn add<F: Addr>(&mut self, sp: &ServicePort<F>) {
        self.addr = 4 * usize::from(F::REGS);
        let (dests, node_port) = keys(sp);
        let local = sp.local_endpoints();
        let valid = |local_only: bool| -> HashSet<Vec<u8>> {
            let eps = if local_only { &local } else { &sp.endpoints };
            eps.iter().map(|e| to(e).0).collect()
        };
        let on = sp.affinity_seconds.is_some();
        for (i, d) in dests.into_iter().enumerate() {
            let eps = if !on {
                HashSet::new()
            } else if i == 0 {
                valid(sp.internal_local)
            } else {
                valid(sp.external_local)
            };
            self.dests.entry(d).or_default().extend(eps);
        }
        if let Some(p) = node_port {
            let eps = if on {
                valid(sp.external_local)
            } else {
                HashSet::new()
            };
            self.node_ports.entry(p).or_default().extend(eps);
        }
    }

    /// Whether no port is concerned.
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty() && self.node_ports.is_empty()
    }

    /// The entries (as dumped) that concern a noted port and lead to an
    /// endpoint it no longer has.
    pub fn stale(&self, dumped: &[Elem]) -> Vec<Elem> {
        dumped
            .iter()
            .filter(|e| {
                let Some(valid) = self.valid_for(e) else {
                    return false;
                };
                !data(e).is_some_and(|d| valid.contains(d))
            })
            .map(|e| Elem::key(e.key.clone()))
            .collect()
    }

    /// The entries (as dumped) that lead to an endpoint their port still
    /// has, with the time they had left: what a full sync puts back.
    pub fn carried(&self, dumped: &[Elem]) -> Vec<Elem> {
        dumped
            .iter()
            .filter_map(|e| {
                let valid = self.valid_for(e)?;
                let d = data(e)?;
                let left = e.expires.or(e.timeout).filter(|t| !t.is_zero())?;
                valid
                    .contains(d)
                    .then(|| Elem::map(e.key.clone(), Value(d.to_vec())).with_timeout(left))
            })
            .collect()
    }

    /// A destination's own record first; else its protocol and port as a
    /// NodePort (entries made through a node address).
    fn valid_for(&self, e: &Elem) -> Option<&HashSet<Vec<u8>>> {
        let k = &e.key.0;
        self.dests
            .get(k.get(dest(self.addr))?)
            .or_else(|| self.node_ports.get(k.get(port(self.addr))?))
    }
}

fn data(e: &Elem) -> Option<&[u8]> {
    match &e.data {
        Some(ElemData::Value(v)) => Some(&v.0),
        _ => None,
    }
}

/// `sp`'s destinations as entry key parts (the ClusterIP first), and its
/// NodePort's.
fn keys<F: Addr>(sp: &ServicePort<F>) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let proto = Field::Proto(sp.protocol.number());
    let dests = std::iter::once(sp.cluster_ip)
        .chain(sp.external_destinations())
        .map(|ip| Value::of(&[ip.field(), proto, Field::Port(sp.port)]).0)
        .collect();
    let node_port = sp
        .node_port
        .map(|np| Value::of(&[proto, Field::Port(np)]).0);
    (dests, node_port)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::view::test_port;

    fn entry(client: &str, sp: &ServicePort, ep: &str, left: u64) -> Elem {
        entry_to(client, sp.cluster_ip, sp.port, ep, left)
    }

    fn entry_to(client: &str, dest: Ipv4Addr, port: u16, ep: &str, left: u64) -> Elem {
        let c: Ipv4Addr = client.parse().expect("client");
        let key = Value::of(&[
            Field::Ipv4(c),
            Field::Ipv4(dest),
            Field::Proto(6),
            Field::Port(port),
        ]);
        let ep = Value::of(&[Field::Ipv4(ep.parse().expect("ep")), Field::Port(80)]);
        let mut e = Elem::map(key, ep);
        e.expires = Some(Duration::from_secs(left));
        e
    }

    #[test]
    fn entries_leading_to_a_removed_endpoint_are_stale_and_not_carried() {
        let mut web = test_port(
            "ns",
            "web",
            "",
            "10.96.0.10",
            &[("10.244.1.2", true), ("10.244.1.3", true)],
        );
        web.affinity_seconds = Some(60);
        let dumped = vec![
            entry("10.0.0.1", &web, "10.244.1.2", 50),
            entry("10.0.0.2", &web, "10.244.1.3", 40),
        ];
        web.endpoints.pop();
        let mut t = Targets::default();
        t.add(&web);
        let stale = t.stale(&dumped);
        assert_eq!(stale, vec![Elem::key(dumped[1].key.clone())]);
        let carried = t.carried(&dumped);
        assert_eq!(carried.len(), 1);
        assert_eq!(carried[0].timeout, Some(Duration::from_secs(50)));
    }

    #[test]
    fn node_port_entries_are_checked_whatever_node_address_they_came_through() {
        let mut web = test_port("ns", "web", "", "10.96.0.10", &[("10.244.1.2", true)]);
        web.affinity_seconds = Some(60);
        web.node_port = Some(30080);
        let node: Ipv4Addr = "192.0.2.1".parse().unwrap();
        let dumped = vec![
            entry_to("10.0.0.1", node, 30080, "10.244.1.2", 50),
            entry_to("10.0.0.2", node, 30080, "10.244.1.9", 50),
            entry_to("10.0.0.2", node, 30081, "10.244.1.9", 50),
        ];
        let mut t = Targets::default();
        t.add(&web);
        assert_eq!(t.stale(&dumped), vec![Elem::key(dumped[1].key.clone())]);
    }

    #[test]
    fn a_port_that_lost_affinity_loses_every_entry_and_others_keep_theirs() {
        let mut web = test_port("ns", "web", "", "10.96.0.10", &[("10.244.1.2", true)]);
        web.affinity_seconds = Some(60);
        let mut api = test_port("ns", "api", "", "10.96.0.11", &[("10.244.1.2", true)]);
        api.affinity_seconds = Some(60);
        let dumped = vec![
            entry("10.0.0.1", &web, "10.244.1.2", 50),
            entry("10.0.0.1", &api, "10.244.1.2", 50),
        ];
        web.affinity_seconds = None;
        let mut t = Targets::default();
        t.add(&web);
        assert_eq!(t.stale(&dumped), vec![Elem::key(dumped[0].key.clone())]);
    }
}
