//! Table `ip knode-policy` as pure functions: the static skeleton (two
//! base chains on `forward`, the shared sets), and per policy its own
//! chains, sets and rules, which depend on the policy's spec only. Which
//! pod IPs are in which set is the engine's business; nothing here talks
//! to the kernel.
//!
//! A packet is checked twice on `forward`: for its source's egress
//! (priority 0) and its destination's ingress (priority 1). An `accept`
//! ends only the base chain it is in, so a connection passes when both
//! accept; a `drop` is final. An isolated pod's packet goes to its
//! namespace's chain (pod address -> namespace number in a data map, the
//! number -> chain in a verdict map that changes only when a namespace
//! gets its first policy or loses its last), which jumps to the chain of
//! each policy of the namespace that selects the pod: a new connection
//! costs the policies of its pod's namespace, not every policy.

use std::net::Ipv4Addr;

use hostnet::nftables::{
    ct_state, Batch, Chain, ChainType, CmpOp, DataType, Elem, Expr, Family, Field, Hook, KeyType,
    LookupDest, MapData, MetaKey, Reg, Set, SetFlags, Table, Value, Verdict,
};
use ipnet::Ipv4Net;

use crate::compile::{Compiled, Direction, Rule};

/// The table's name.
pub const TABLE: &str = "knode-policy";

/// Shared sets and chains.
pub mod names {
    /// `ipv4_addr`: local pods whose policy state is programmed. A packet
    /// from or to the node's pod CIDR outside it is dropped (the guard).
    pub const READY: &str = "ready";
    /// `ipv4_addr` interval: the node's pod CIDR (the guard's scope).
    pub const POD_CIDR: &str = "pod-cidr";
    /// `ipv4_addr`: local pods selected by at least one Ingress policy.
    pub const INGRESS_ISOLATED: &str = "ingress-isolated";
    /// `ipv4_addr`: local pods selected by at least one Egress policy.
    pub const EGRESS_ISOLATED: &str = "egress-isolated";
    /// `ipv4_addr : mark`: a local pod's address -> its namespace's number.
    pub const POD_NAMESPACE: &str = "pod-namespace";
    /// `mark : verdict`: a namespace's number -> jump to its ingress chain.
    pub const INGRESS_NAMESPACES: &str = "ingress-namespaces";
    /// `mark : verdict`: the same for egress.
    pub const EGRESS_NAMESPACES: &str = "egress-namespaces";
}

/// The comment of the guard's drop rules.
pub const NOT_PROGRAMMED: &str = "pod not programmed yet";
/// The comment of the drop rules that end the base chains.
pub const NOT_ALLOWED: &str = "no policy allows it";

/// The table.
pub fn table() -> Table {
    Table::new(Family::Ip, TABLE)
}

/// What the node contributes to the skeleton.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConfig {
    pub node_name: String,
    /// The node's pod CIDR: the guard drops traffic of its addresses that
    /// are not [`names::READY`]. `None` turns the guard off.
    pub guard_cidr: Option<Ipv4Net>,
}

/// The base chain of direction `d`.
pub fn base_chain(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "forward-ingress",
        Direction::Egress => "forward-egress",
    }
}

/// The chain of namespace `ns` for direction `d`: a jump to each of its
/// policies' chains, taken only when the policy selects the pod.
pub fn namespace_chain(ns: &str, d: Direction) -> String {
    format!("ns/{ns}/{}", d.short())
}

/// The verdict map from namespace numbers to their chains.
fn namespaces_map(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => names::INGRESS_NAMESPACES,
        Direction::Egress => names::EGRESS_NAMESPACES,
    }
}

/// The key of namespace number `n` in the maps.
pub fn namespace_key(n: u32) -> Value {
    Value::of(&[Field::Mark(n)])
}

fn isolated(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => names::INGRESS_ISOLATED,
        Direction::Egress => names::EGRESS_ISOLATED,
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

use DataType::{InetProto as P, InetService as S, Ipv4Addr as A, Mark as M};

/// The shared sets and maps.
fn shared_sets() -> Vec<Set> {
    vec![
        Set::new(names::READY, &[A]),
        Set::new(names::POD_CIDR, &[A]).with_flags(interval()),
        Set::new(names::INGRESS_ISOLATED, &[A]),
        Set::new(names::EGRESS_ISOLATED, &[A]),
        Set::map(names::POD_NAMESPACE, &[A], MapData::Value(KeyType(vec![M]))),
        Set::map(names::INGRESS_NAMESPACES, &[M], MapData::Verdict),
        Set::map(names::EGRESS_NAMESPACES, &[M], MapData::Verdict),
    ]
}

fn interval() -> SetFlags {
    SetFlags {
        interval: true,
        ..SetFlags::default()
    }
}

/// The set `name` (shared or a policy's) as it is declared, from its name.
pub fn set_named(name: &str) -> Set {
    if let Some(s) = shared_sets().into_iter().find(|s| s.name == name) {
        return s;
    }
    match name.rsplit('/').next().unwrap_or_default() {
        "cidrs" => Set::new(name, &[A]).with_flags(interval()),
        "named" => Set::new(name, &[A, P, S]),
        _ => Set::new(name, &[A]),
    }
}

/// The chain of policy `id` for direction `d`.
pub fn policy_chain(id: &str, d: Direction) -> String {
    format!("{id}/{}", d.short())
}

/// The set of local pods policy `id` selects.
pub fn selected_set(id: &str) -> String {
    format!("{id}/sel")
}

/// The set `kind` (`pods`, `cidrs`, `ports`, `named`) of rule `i` of
/// direction `d` of policy `id`.
pub fn rule_set(id: &str, d: Direction, i: usize, kind: &str) -> String {
    format!("{id}/{}{i}/{kind}", d.short())
}

fn r(slot: u8) -> Reg {
    Reg::new(slot)
}

fn lookup(set: impl Into<String>, sreg: Reg, invert: bool) -> Expr {
    Expr::Lookup {
        set: set.into(),
        sreg,
        dreg: None,
        invert,
    }
}

/// `ip saddr` (egress) or `ip daddr` (ingress): the local pod's address.
fn local_addr(d: Direction, dreg: Reg) -> Expr {
    match d {
        Direction::Ingress => Expr::ip_daddr(dreg),
        Direction::Egress => Expr::ip_saddr(dreg),
    }
}

/// The peer's address: the other end.
fn peer_addr(d: Direction, dreg: Reg) -> Expr {
    match d {
        Direction::Ingress => Expr::ip_saddr(dreg),
        Direction::Egress => Expr::ip_daddr(dreg),
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Verdict(v)
}

/// Recreates the table (add + delete + add: whether or not it exists)
/// with its shared sets and base chains, all in `b`. Policy chains go
/// after it ([`add_policy`]), then the namespaces' ([`namespace`]).
pub fn skeleton(b: &mut Batch, node: &NodeConfig) {
    let t = table();
    b.add_table(&t).delete_table(&t).add_table(&t);
    for s in shared_sets() {
        b.add_set(&t, s);
    }
    for (i, d) in DIRECTIONS.into_iter().enumerate() {
        let base = base_chain(d);
        b.add_chain(
            &t,
            Chain::base(base, ChainType::Filter, Hook::Forward, i as i32),
        );
        let mut established = Expr::ct_state_in(ct_state::ESTABLISHED | ct_state::RELATED).to_vec();
        established.push(verdict(Verdict::Accept));
        b.add_rule(&t, base, established, Some("replies and related"));
        if node.guard_cidr.is_some() {
            let guard = vec![
                local_addr(d, r(0)),
                lookup(names::POD_CIDR, r(0), false),
                lookup(names::READY, r(0), true),
                Expr::Counter,
                verdict(Verdict::Drop),
            ];
            b.add_rule(&t, base, guard, Some(NOT_PROGRAMMED));
        }
        let open = vec![
            local_addr(d, r(0)),
            lookup(isolated(d), r(0), true),
            verdict(Verdict::Accept),
        ];
        b.add_rule(&t, base, open, Some("not isolated"));
        // The pod's namespace number, then that namespace's chain.
        let by_namespace = vec![
            local_addr(d, r(0)),
            Expr::Lookup {
                set: names::POD_NAMESPACE.into(),
                sreg: r(0),
                dreg: Some(LookupDest::Data(r(0))),
                invert: false,
            },
            Expr::Lookup {
                set: namespaces_map(d).into(),
                sreg: r(0),
                dreg: Some(LookupDest::Verdict),
                invert: false,
            },
        ];
        b.add_rule(&t, base, by_namespace, None);
        b.add_rule(
            &t,
            base,
            vec![Expr::Counter, verdict(Verdict::Drop)],
            Some(NOT_ALLOWED),
        );
    }
    if let Some(cidr) = node.guard_cidr {
        let elem = Elem::range(ipv4(cidr.network()), ipv4(cidr.broadcast()));
        b.add_elements(&t, &set_named(names::POD_CIDR), vec![elem]);
    }
}

/// How namespace `ns` (number `n`) dispatches direction `d`: its chain
/// and map element are created (`existed` false) or rewritten, with a
/// jump to each of `policies`' chains taken when the policy selects the
/// pod; with no policies left both are deleted.
pub fn namespace<'a>(
    b: &mut Batch,
    ns: &str,
    n: u32,
    d: Direction,
    existed: bool,
    policies: impl Iterator<Item = &'a Compiled>,
) {
    let t = table();
    let chain = namespace_chain(ns, d);
    let map = set_named(namespaces_map(d));
    let jumps: Vec<Vec<Expr>> = policies
        .filter(|p| p.rules(d).is_some())
        .map(|p| {
            vec![
                local_addr(d, r(0)),
                lookup(selected_set(&p.id), r(0), false),
                verdict(Verdict::Jump(policy_chain(&p.id, d))),
            ]
        })
        .collect();
    if jumps.is_empty() {
        if existed {
            b.delete_elements(&t, &map, vec![Elem::key(namespace_key(n))]);
            b.flush_chain(&t, &chain);
            b.delete_chain(&t, &chain);
        }
        return;
    }
    if existed {
        b.flush_chain(&t, &chain);
    } else {
        b.add_chain(&t, Chain::regular(&chain));
    }
    for jump in jumps {
        b.add_rule(&t, &chain, jump, None);
    }
    if !existed {
        let elem = Elem::verdict(namespace_key(n), Verdict::Jump(chain.clone()));
        b.add_elements(&t, &map, vec![elem]);
    }
}

/// An address as a set key.
pub fn ipv4(ip: Ipv4Addr) -> Value {
    Value::of(&[Field::Ipv4(ip)])
}

/// The sets, chains, rules and static elements (address ranges, ports)
/// of policy `p`.
pub fn add_policy(b: &mut Batch, p: &Compiled) {
    let t = table();
    b.add_set(&t, set_named(&selected_set(&p.id)));
    for d in DIRECTIONS {
        let Some(rules) = p.rules(d) else { continue };
        for (i, rule) in rules.iter().enumerate() {
            for kind in rule_sets(rule) {
                b.add_set(&t, set_named(&rule_set(&p.id, d, i, kind)));
            }
            add_static_elements(b, &p.id, d, i, rule);
        }
        let chain = policy_chain(&p.id, d);
        b.add_chain(&t, Chain::regular(&chain));
        for (i, rule) in rules.iter().enumerate() {
            for exprs in rule_exprs(&p.id, d, i, rule) {
                b.add_rule(&t, &chain, exprs, None);
            }
        }
    }
}

/// Removes policy `p`'s chains and sets (after the namespace chains that
/// jumped to them were rewritten in the same batch).
pub fn delete_policy(b: &mut Batch, p: &Compiled) {
    let t = table();
    for d in DIRECTIONS {
        if p.rules(d).is_some() {
            let chain = policy_chain(&p.id, d);
            b.flush_chain(&t, &chain);
            b.delete_chain(&t, &chain);
        }
    }
    for name in policy_sets(p) {
        b.delete_set(&t, &name);
    }
}

/// Every set of policy `p`.
pub fn policy_sets(p: &Compiled) -> Vec<String> {
    let mut v = vec![selected_set(&p.id)];
    for d in DIRECTIONS {
        for (i, rule) in p.rules(d).into_iter().flatten().enumerate() {
            for kind in rule_sets(rule) {
                v.push(rule_set(&p.id, d, i, kind));
            }
        }
    }
    v
}

/// The kinds of set a rule needs.
fn rule_sets(rule: &Rule) -> Vec<&'static str> {
    let mut v = Vec::new();
    if let Some(peers) = &rule.peers {
        if !peers.pods.is_empty() {
            v.push("pods");
        }
        if !peers.cidrs.is_empty() {
            v.push("cidrs");
        }
    }
    if rule.ports.as_ref().is_some_and(|p| !p.named.is_empty()) {
        v.push("named");
    }
    v
}

fn add_static_elements(b: &mut Batch, id: &str, d: Direction, i: usize, rule: &Rule) {
    let t = table();
    if let Some(peers) = rule.peers.as_ref().filter(|p| !p.cidrs.is_empty()) {
        let elems = peers
            .cidrs
            .iter()
            .map(|(a, z)| Elem::range(ipv4(*a), ipv4(*z)))
            .collect();
        b.add_elements(&t, &set_named(&rule_set(id, d, i, "cidrs")), elems);
    }
}

/// `meta l4proto == proto` and `th dport` within `first..=last`, as
/// expressions of the rule: policies name few ports, and an interval
/// set per rule (pipapo) is the costliest thing a full sync creates.
fn port_range(proto: u8, first: u16, last: u16) -> Vec<Expr> {
    let mut v = vec![
        Expr::meta(MetaKey::L4Proto, r(0)),
        Expr::cmp_eq(r(0), &[proto]),
    ];
    if (first, last) == (0, u16::MAX) {
        return v;
    }
    v.push(Expr::th_dport(r(0)));
    if first == last {
        v.push(Expr::cmp_eq(r(0), &first.to_be_bytes()));
        return v;
    }
    // Ports are big-endian: the kernel compares their bytes in order.
    v.push(Expr::Cmp {
        sreg: r(0),
        op: CmpOp::Gte,
        data: first.to_be_bytes().to_vec(),
    });
    v.push(Expr::Cmp {
        sreg: r(0),
        op: CmpOp::Lte,
        data: last.to_be_bytes().to_vec(),
    });
    v
}

/// The rules that accept what rule `i` allows: one per combination of
/// peer kind (any, pods, address ranges) and port kind (any, numbers,
/// names). A named port of an egress rule is resolved on the peer, so
/// its set already holds only peers: that rule tests no peer set.
fn rule_exprs(id: &str, d: Direction, i: usize, rule: &Rule) -> Vec<Vec<Expr>> {
    let set = |kind| rule_set(id, d, i, kind);
    let peer_tests: Vec<Vec<Expr>> = match &rule.peers {
        None => vec![vec![]],
        Some(p) => {
            let mut v = Vec::new();
            if !p.pods.is_empty() {
                v.push(vec![peer_addr(d, r(0)), lookup(set("pods"), r(0), false)]);
            }
            if !p.cidrs.is_empty() {
                v.push(vec![peer_addr(d, r(0)), lookup(set("cidrs"), r(0), false)]);
            }
            v
        }
    };
    let named_key = || {
        let regs = KeyType(vec![A, P, S]).registers(r(0));
        vec![
            Expr::ip_daddr(regs[0]),
            Expr::meta(MetaKey::L4Proto, regs[1]),
            Expr::th_dport(regs[2]),
            lookup(set("named"), r(0), false),
        ]
    };
    let mut port_tests: Vec<Vec<Expr>> = Vec::new();
    let mut named_alone = false;
    match &rule.ports {
        None => port_tests.push(vec![]),
        Some(ports) => {
            for (proto, first, last) in &ports.ranges {
                port_tests.push(port_range(*proto, *first, *last));
            }
            if !ports.named.is_empty() {
                match d {
                    Direction::Ingress => port_tests.push(named_key()),
                    Direction::Egress => named_alone = true,
                }
            }
        }
    }
    let mut out = Vec::new();
    for peer in &peer_tests {
        for port in &port_tests {
            let mut e = peer.clone();
            e.extend(port.iter().cloned());
            e.push(verdict(Verdict::Accept));
            out.push(e);
        }
    }
    if named_alone {
        let mut e = named_key();
        e.push(verdict(Verdict::Accept));
        out.push(e);
    }
    out
}

/// The element of a named-port set: address, protocol, port.
pub fn named_elem(ip: Ipv4Addr, proto: u8, port: u16) -> Value {
    Value::of(&[Field::Ipv4(ip), Field::Proto(proto), Field::Port(port)])
}
