//! The desired ruleset as a pure function of the service view and the
//! node: kube-proxy's chain structure (KUBE-SERVICES, KUBE-SVC/SVL/EXT/SEP,
//! KUBE-NODEPORTS, KUBE-MARK-MASQ, KUBE-POSTROUTING, KUBE-FORWARD and the
//! filter-table REJECTs). It renders rule lines; it never runs iptables.

pub mod names;
mod service;
mod shared;

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};

pub use service::{service_rules, ServiceRules, SharedRule};
pub use shared::{builtin_jumps, shared_chains, Jump};

use crate::view::ServicePort;

/// The tables the proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    /// Both, in the order they are written.
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    /// The table's name (`*nat`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// One user chain and its rules, each a full `-A CHAIN ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: Table,
    pub name: String,
    pub rules: Vec<String>,
}

/// What the node contributes to the rules, and the operator's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name: endpoints whose pod runs here are local.
    pub node_name: String,
    /// Addresses NodePorts answer on. Empty: every local address
    /// (`-m addrtype --dst-type LOCAL`), as kube-proxy without
    /// `--nodeport-addresses`.
    pub node_ips: Vec<Ipv4Addr>,
    /// The pod network; traffic from outside it to a ClusterIP is
    /// masqueraded. `None` (and no `masquerade_all`): no such rule.
    pub cluster_cidr: Option<Ipv4Net>,
    /// The IPv6 pod network of a dual-stack cluster (the nftables mode's
    /// `ip6 kube-proxy` table masquerades traffic from outside it).
    pub cluster_cidr_v6: Option<Ipv6Net>,
    /// Masquerade all traffic to ClusterIPs (`--masquerade-all`).
    pub masquerade_all: bool,
    /// Answer NodePorts on 127.0.0.0/8 too; needs `route_localnet=1` and
    /// brings kube-proxy's martian-packet guard (KUBE-FIREWALL).
    pub localhost_nodeports: bool,
}

/// A whole desired ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
}

impl Ruleset {
    /// The chain called `name` in `table`.
    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.table == table && c.name == name)
    }

    /// The rules of `name` in `table` (empty when it is not in the ruleset).
    pub fn rules(&self, table: Table, name: &str) -> &[String] {
        self.chain(table, name).map_or(&[], |c| &c.rules)
    }

    /// How many rules `table` holds.
    pub fn count(&self, table: Table) -> usize {
        self.chains
            .iter()
            .filter(|c| c.table == table)
            .map(|c| c.rules.len())
            .sum()
    }
}

/// Above this many endpoints in all, the per-endpoint rules carry no
/// comments (kube-proxy's `largeClusterEndpointsThreshold`): at 10k
/// Services x 5 endpoints the restore payload shrinks from 25.0 to 17.7 MB
/// and iptables-legacy-restore's memory from 216 to 129 MB (every
/// `-m comment` match is 256 bytes per rule in the table it builds).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1_000;

/// Whether `services` put the node in large-cluster mode.
pub fn large_cluster(services: &[ServicePort]) -> bool {
    services.iter().map(|s| s.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS
}

/// The desired ruleset for `services` on `node`: the shared chains first,
/// then each Service port's own chains, in input order.
pub fn ruleset(services: &[ServicePort], node: &NodeConfig) -> Ruleset {
    let large = large_cluster(services);
    let per_service: Vec<ServiceRules> = services
        .iter()
        .map(|s| service_rules(s, node, large))
        .collect();
    let mut chains = shared_chains(per_service.iter().flat_map(|s| &s.shared), node);
    chains.extend(per_service.into_iter().flat_map(|s| s.chains));
    Ruleset { chains }
}

#[cfg(test)]
mod tests;
