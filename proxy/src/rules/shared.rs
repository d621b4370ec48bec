//! The chains every Service shares (KUBE-SERVICES, KUBE-NODEPORTS,
//! KUBE-EXTERNAL-SERVICES, KUBE-FORWARD, KUBE-MARK-MASQ, KUBE-POSTROUTING,
//! KUBE-FIREWALL, the canary) and the jumps into them from the built-in
//! chains. Pure: the caller decides when a jump is missing.

use super::names::{
    comment_arg, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ,
    KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_PROXY_CANARY, KUBE_SERVICES, MASQ_MARK,
};
use super::{Chain, NodeConfig, SharedRule, Table};

/// The canary chain's only rule. Its absence (the chain deleted, or the
/// table flushed) tells the proxy that someone else rewrote the table.
pub const CANARY_RULE: &str =
    "-A KUBE-PROXY-CANARY -m comment --comment \"knode canary: gone means this table was flushed\" -j RETURN";

/// A rule in a built-in chain that jumps to one of ours; kube-proxy
/// inserts these at the top (`-I CHAIN 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    /// PREROUTING, OUTPUT, POSTROUTING, INPUT or FORWARD.
    pub builtin: &'static str,
    /// Everything after `-I CHAIN 1 `, ending in `-j TARGET`.
    pub args: String,
    pub target: &'static str,
}

fn jump(
    table: Table,
    builtin: &'static str,
    extra: &str,
    comment: &str,
    target: &'static str,
) -> Jump {
    let comment = if comment.is_empty() {
        String::new()
    } else {
        format!("-m comment --comment {} ", comment_arg(comment))
    };
    Jump {
        table,
        builtin,
        args: format!("{extra}{comment}-j {target}"),
        target,
    }
}

/// The jumps from built-in chains, as kube-proxy's `iptablesJumpChains`
/// (less the load-balancer firewall, which needs LoadBalancer support).
pub fn builtin_jumps(node: &NodeConfig) -> Vec<Jump> {
    const NEW: &str = "-m conntrack --ctstate NEW ";
    const PORTALS: &str = "kubernetes service portals";
    const EXTERNAL: &str = "kubernetes externally-visible service portals";
    let mut v = vec![
        jump(
            Table::Filter,
            "INPUT",
            NEW,
            EXTERNAL,
            KUBE_EXTERNAL_SERVICES,
        ),
        jump(
            Table::Filter,
            "FORWARD",
            NEW,
            EXTERNAL,
            KUBE_EXTERNAL_SERVICES,
        ),
        jump(
            Table::Filter,
            "INPUT",
            "",
            "kubernetes health check service ports",
            KUBE_NODEPORTS,
        ),
        jump(Table::Filter, "FORWARD", NEW, PORTALS, KUBE_SERVICES),
        jump(Table::Filter, "OUTPUT", NEW, PORTALS, KUBE_SERVICES),
        jump(
            Table::Filter,
            "FORWARD",
            "",
            "kubernetes forwarding rules",
            KUBE_FORWARD,
        ),
        jump(Table::Nat, "OUTPUT", "", PORTALS, KUBE_SERVICES),
        jump(Table::Nat, "PREROUTING", "", PORTALS, KUBE_SERVICES),
        jump(
            Table::Nat,
            "POSTROUTING",
            "",
            "kubernetes postrouting rules",
            KUBE_POSTROUTING,
        ),
    ];
    if node.localhost_nodeports {
        v.push(jump(Table::Filter, "INPUT", "", "", KUBE_FIREWALL));
        v.push(jump(Table::Filter, "OUTPUT", "", "", KUBE_FIREWALL));
    }
    v
}

/// The shared chains filled with the Services' `lines` (in order) and the
/// fixed rules.
pub fn shared_chains<'a>(
    lines: impl Iterator<Item = &'a SharedRule>,
    node: &NodeConfig,
) -> Vec<Chain> {
    let mut filter_services = Vec::new();
    let mut filter_external = Vec::new();
    let mut nat_services = Vec::new();
    let mut nat_nodeports = Vec::new();
    for l in lines {
        let dest = match (l.table, l.chain) {
            (Table::Filter, KUBE_SERVICES) => &mut filter_services,
            (Table::Filter, KUBE_EXTERNAL_SERVICES) => &mut filter_external,
            (Table::Nat, KUBE_SERVICES) => &mut nat_services,
            (Table::Nat, KUBE_NODEPORTS) => &mut nat_nodeports,
            _ => continue,
        };
        dest.push(l.line.clone());
    }
    nat_services.extend(nodeport_dispatch(node));

    let chain = |table, name: &str, rules: Vec<String>| Chain {
        table,
        name: name.to_string(),
        rules,
    };
    let canary = || vec![CANARY_RULE.to_string()];
    let mut chains = vec![
        chain(Table::Filter, KUBE_SERVICES, filter_services),
        chain(Table::Filter, KUBE_EXTERNAL_SERVICES, filter_external),
        chain(Table::Filter, KUBE_NODEPORTS, Vec::new()),
        chain(
            Table::Filter,
            KUBE_FORWARD,
            vec![
                format!("-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP"),
                format!("-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"),
                format!("-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ],
        ),
        chain(Table::Filter, KUBE_PROXY_CANARY, canary()),
    ];
    if node.localhost_nodeports {
        // Once route_localnet is on, packets to 127/8 from elsewhere would be
        // routed; drop all but replies and DNATed ones (kube-proxy's guard).
        chains.push(chain(
            Table::Filter,
            KUBE_FIREWALL,
            vec![format!("-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")],
        ));
    }
    chains.extend([
        chain(Table::Nat, KUBE_SERVICES, nat_services),
        chain(Table::Nat, KUBE_NODEPORTS, nat_nodeports),
        chain(
            Table::Nat,
            KUBE_MARK_MASQ,
            vec![format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQ_MARK}")],
        ),
        chain(
            Table::Nat,
            KUBE_POSTROUTING,
            vec![
                format!("-A {KUBE_POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
                format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQ_MARK}"),
                format!("-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"),
            ],
        ),
        chain(Table::Nat, KUBE_PROXY_CANARY, canary()),
    ]);
    chains
}

/// The last rules of nat KUBE-SERVICES: traffic to a node address goes on
/// to KUBE-NODEPORTS.
fn nodeport_dispatch(node: &NodeConfig) -> Vec<String> {
    let comment =
        comment_arg("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
    let head = format!("-A {KUBE_SERVICES} -m comment --comment {comment}");
    if node.node_ips.is_empty() {
        let no_lo = if node.localhost_nodeports {
            ""
        } else {
            " ! -d 127.0.0.0/8"
        };
        return vec![format!(
            "{head} -m addrtype --dst-type LOCAL{no_lo} -j {KUBE_NODEPORTS}"
        )];
    }
    let mut v: Vec<String> = node
        .node_ips
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| format!("{head} -d {ip} -j {KUBE_NODEPORTS}"))
        .collect();
    if node.localhost_nodeports {
        v.push(format!("{head} -d 127.0.0.0/8 -j {KUBE_NODEPORTS}"));
    }
    v
}
