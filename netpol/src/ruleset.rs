//! Table `ip knode-policy` as pure functions: the static skeleton (two
//! base chains on `forward`, the shared sets), and per policy its own
//! chains and rules, which depend on its spec and on the numbers the
//! engine gave its peers. Which elements are in which set is the
//! engine's business; nothing here talks to the kernel.
//!
//! A packet is checked twice on `forward`: for its source's egress
//! (priority 0) and its destination's ingress (priority 1). An `accept`
//! ends only the base chain it is in, so a connection passes when both
//! accept; a `drop` is final. An isolated pod's packet goes through its
//! *group*: the pods selected by the same policies share a group number
//! (pod address -> number in a data map), and the number leads to the
//! policies' chains (a verdict map: straight to the one policy's chain,
//! or to a group chain that jumps to each). A new connection costs the
//! policies that select its pods, not the policies of the namespace.
//!
//! Pod peers are one shared set of `selector number . address`: a rule
//! puts its selector's number beside the address and looks the pair up,
//! so policies naming the same peers share elements and the table holds
//! a handful of sets whatever the number of policies (the kernel finds a
//! set by name in a list: thousands of sets cost a full sync seconds).

use std::net::IpAddr;

use hostnet::nftables::{
    ct_state, Batch, Chain, ChainType, CmpOp, DataType, Elem, Expr, Family, Field, Hook, KeyType,
    LookupDest, MapData, MetaKey, Reg, Set, SetFlags, Table, Value, Verdict,
};
use ipnet::IpNet;

use crate::compile::{Compiled, Direction, Rule};

/// The table's name.
pub const TABLE: &str = "knode-policy";

/// Shared sets and maps.
pub mod names {
    /// `ipv4_addr`: local pods whose policy state is programmed. A packet
    /// from or to the node's pod CIDR outside it is dropped (the guard).
    pub const READY: &str = "ready";
    /// `ipv4_addr`: local pods selected by at least one Ingress policy.
    pub const INGRESS_ISOLATED: &str = "ingress-isolated";
    /// `ipv4_addr`: local pods selected by at least one Egress policy.
    pub const EGRESS_ISOLATED: &str = "egress-isolated";
    /// `ipv4_addr : mark`: a local pod's address -> its group's number.
    pub const POD_GROUP: &str = "pod-group";
    /// `mark : verdict`: a group's number -> jump to its ingress chain.
    pub const INGRESS_GROUPS: &str = "ingress-groups";
    /// `mark : verdict`: the same for egress.
    pub const EGRESS_GROUPS: &str = "egress-groups";
    /// `mark . ipv4_addr`: a peer selector's number and a pod it matches.
    pub const PEERS: &str = "peers";
    /// `mark . ipv4_addr . inet_proto . inet_service`: a rule's number
    /// and a pod's port of the name the rule gives.
    pub const NAMED_PORTS: &str = "named-ports";
}

/// The comment of the guard's drop rules.
pub const NOT_PROGRAMMED: &str = "pod not programmed yet";
/// The comment of the drop rules that end the base chains.
pub const NOT_ALLOWED: &str = "no policy allows it";

/// The address family of a table: each has its own, alike but for the
/// addresses (`ip knode-policy`, `ip6 knode-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Whether `ip` is of this family.
    pub fn holds(self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// The nftables family of its table.
    pub fn nft(self) -> Family {
        match self {
            IpFamily::V4 => Family::Ip,
            IpFamily::V6 => Family::Ip6,
        }
    }

    fn addr(self) -> DataType {
        match self {
            IpFamily::V4 => DataType::Ipv4Addr,
            IpFamily::V6 => DataType::Ipv6Addr,
        }
    }

    fn saddr(self, dreg: Reg) -> Expr {
        match self {
            IpFamily::V4 => Expr::ip_saddr(dreg),
            IpFamily::V6 => Expr::ip6_saddr(dreg),
        }
    }

    fn daddr(self, dreg: Reg) -> Expr {
        match self {
            IpFamily::V4 => Expr::ip_daddr(dreg),
            IpFamily::V6 => Expr::ip6_daddr(dreg),
        }
    }
}

/// The table of family `f`.
pub fn table(f: IpFamily) -> Table {
    Table::new(f.nft(), TABLE)
}

/// What the node contributes to the skeleton.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConfig {
    pub node_name: String,
    /// The family this engine enforces.
    pub family: IpFamily,
    /// The node's pod CIDR of that family: the guard drops traffic of its
    /// addresses that are not [`names::READY`]. `None` turns the guard off.
    pub guard_cidr: Option<IpNet>,
}

/// The numbers the engine gave one rule's shared-set keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleRefs {
    /// One per pod peer (`peers.pods`, in order): its selector's number.
    pub selectors: Vec<u32>,
    /// The address-range set the rule's ipBlocks use.
    pub cidrs: Option<u32>,
    /// The rule's own number, when it names ports.
    pub named: Option<u32>,
}

/// A compiled policy with the numbers the engine gave its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The compiled policy's id, shared.
    pub id: std::sync::Arc<str>,
    pub compiled: Compiled,
    pub ingress: Vec<RuleRefs>,
    pub egress: Vec<RuleRefs>,
}

impl Policy {
    /// The numbers of the rules of direction `d` (empty when it has none).
    pub fn refs(&self, d: Direction) -> &[RuleRefs] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The policy's id (its chains' prefix).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The base chain of direction `d`.
pub fn base_chain(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "forward-ingress",
        Direction::Egress => "forward-egress",
    }
}

/// The chain of group `n` for direction `d` (a group of two policies or
/// more; one policy's group goes straight to its chain).
pub fn group_chain(n: u32, d: Direction) -> String {
    format!("group/{n}/{}", d.short())
}

/// The verdict map from group numbers to their chains.
fn groups_map(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => names::INGRESS_GROUPS,
        Direction::Egress => names::EGRESS_GROUPS,
    }
}

/// The key of group, selector or rule number `n` in the maps and sets.
pub fn number(n: u32) -> Value {
    Value::of(&[Field::Mark(n)])
}

fn isolated(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => names::INGRESS_ISOLATED,
        Direction::Egress => names::EGRESS_ISOLATED,
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

use DataType::{InetProto as P, InetService as S, Mark as M};

/// The shared sets and maps of family `f`'s table.
fn shared_sets(f: IpFamily) -> Vec<Set> {
    let a = f.addr();
    vec![
        Set::new(names::READY, &[a]),
        Set::new(names::INGRESS_ISOLATED, &[a]),
        Set::new(names::EGRESS_ISOLATED, &[a]),
        Set::map(names::POD_GROUP, &[a], MapData::Value(KeyType(vec![M]))),
        Set::map(names::INGRESS_GROUPS, &[M], MapData::Verdict),
        Set::map(names::EGRESS_GROUPS, &[M], MapData::Verdict),
        Set::new(names::PEERS, &[M, a]),
        Set::new(names::NAMED_PORTS, &[M, a, P, S]),
    ]
}

fn interval() -> SetFlags {
    SetFlags {
        interval: true,
        ..SetFlags::default()
    }
}

/// The set of address ranges number `n`.
pub fn cidr_set(n: u32) -> String {
    format!("cidrs/{n}")
}

/// The set `name` (shared, or address ranges) of family `f` as it is
/// declared.
pub fn set_named(f: IpFamily, name: &str) -> Set {
    if let Some(s) = shared_sets(f).into_iter().find(|s| s.name == name) {
        return s;
    }
    Set::new(name, &[f.addr()]).with_flags(interval())
}

/// The chain of policy `id` for direction `d`.
pub fn policy_chain(id: &str, d: Direction) -> String {
    format!("{id}/{}", d.short())
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

/// `saddr` (egress) or `daddr` (ingress): the local pod's address.
fn local_addr(f: IpFamily, d: Direction, dreg: Reg) -> Expr {
    match d {
        Direction::Ingress => f.daddr(dreg),
        Direction::Egress => f.saddr(dreg),
    }
}

/// The peer's address: the other end.
fn peer_addr(f: IpFamily, d: Direction, dreg: Reg) -> Expr {
    match d {
        Direction::Ingress => f.saddr(dreg),
        Direction::Egress => f.daddr(dreg),
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Verdict(v)
}

/// Recreates the table (add + delete + add: whether or not it exists)
/// with its shared sets and base chains, all in `b`. Address-range sets,
/// policy chains and groups go after it.
pub fn skeleton(b: &mut Batch, node: &NodeConfig) {
    let f = node.family;
    let t = table(f);
    b.add_table(&t).delete_table(&t).add_table(&t);
    for s in shared_sets(f) {
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
        if let Some(cidr) = node.guard_cidr {
            // The pod CIDR by mask and compare: cheaper on every new
            // connection than an interval set's tree.
            let octets = |a: IpAddr| match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            let mask = octets(cidr.netmask());
            let guard = vec![
                local_addr(f, d, r(0)),
                Expr::Bitwise {
                    sreg: r(0),
                    dreg: r(4),
                    xor: vec![0; mask.len()],
                    mask,
                },
                Expr::cmp_eq(r(4), &octets(cidr.network())),
                lookup(names::READY, r(0), true),
                Expr::Counter,
                verdict(Verdict::Drop),
            ];
            b.add_rule(&t, base, guard, Some(NOT_PROGRAMMED));
        }
        let open = vec![
            local_addr(f, d, r(0)),
            lookup(isolated(d), r(0), true),
            verdict(Verdict::Accept),
        ];
        b.add_rule(&t, base, open, Some("not isolated"));
        // The pod's group number, then that group's policies.
        let by_group = vec![
            local_addr(f, d, r(0)),
            Expr::Lookup {
                set: names::POD_GROUP.into(),
                sreg: r(0),
                dreg: Some(LookupDest::Data(r(0))),
                invert: false,
            },
            Expr::Lookup {
                set: groups_map(d).into(),
                sreg: r(0),
                dreg: Some(LookupDest::Verdict),
                invert: false,
            },
        ];
        b.add_rule(&t, base, by_group, None);
        b.add_rule(
            &t,
            base,
            vec![Expr::Counter, verdict(Verdict::Drop)],
            Some(NOT_ALLOWED),
        );
    }
}

/// How a group reaches its policies in one direction, as the kernel
/// holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupForm {
    /// No policy of the group has rules of this direction.
    None,
    /// One has: the map jumps straight to its chain.
    Direct,
    /// Several have: the map jumps to the group's chain, which jumps to
    /// each of theirs.
    Chain,
}

/// Writes group `n`'s way to `policies` (its policies with rules of
/// direction `d`, by id) into `b`: a map element, and a chain when there
/// are several. Returns what it wrote.
pub fn add_group(b: &mut Batch, f: IpFamily, n: u32, d: Direction, policies: &[&str]) -> GroupForm {
    let t = table(f);
    let map = set_named(f, groups_map(d));
    let (form, target) = match policies {
        [] => return GroupForm::None,
        [one] => (GroupForm::Direct, policy_chain(one, d)),
        several => {
            let chain = group_chain(n, d);
            b.add_chain(&t, Chain::regular(&chain));
            for id in several {
                let jump = vec![verdict(Verdict::Jump(policy_chain(id, d)))];
                b.add_rule(&t, &chain, jump, None);
            }
            (GroupForm::Chain, chain)
        }
    };
    b.add_elements(
        &t,
        &map,
        vec![Elem::verdict(number(n), Verdict::Jump(target))],
    );
    form
}

/// Removes group `n`'s map element and chain of direction `d` (before the
/// policy chains they jump to go).
pub fn delete_group(b: &mut Batch, f: IpFamily, n: u32, d: Direction, form: GroupForm) {
    let t = table(f);
    if form == GroupForm::None {
        return;
    }
    b.delete_elements(&t, &set_named(f, groups_map(d)), vec![Elem::key(number(n))]);
    if form == GroupForm::Chain {
        let chain = group_chain(n, d);
        b.flush_chain(&t, &chain);
        b.delete_chain(&t, &chain);
    }
}

fn field(ip: IpAddr) -> Field<'static> {
    match ip {
        IpAddr::V4(a) => Field::Ipv4(a),
        IpAddr::V6(a) => Field::Ipv6(a),
    }
}

/// An address as a set key.
pub fn addr(ip: IpAddr) -> Value {
    Value::of(&[field(ip)])
}

/// The element of [`names::PEERS`]: selector `n` matches the pod at `ip`.
pub fn peer_elem(n: u32, ip: IpAddr) -> Value {
    Value::of(&[Field::Mark(n), field(ip)])
}

/// The element of [`names::NAMED_PORTS`]: rule `n`'s port name resolves
/// to `proto`/`port` on the pod at `ip`.
pub fn named_elem(n: u32, ip: IpAddr, proto: u8, port: u16) -> Value {
    Value::of(&[
        Field::Mark(n),
        field(ip),
        Field::Proto(proto),
        Field::Port(port),
    ])
}

/// Address-range set `n` of family `f` with its ranges (inclusive).
pub fn add_cidr_set(b: &mut Batch, f: IpFamily, n: u32, ranges: &[(IpAddr, IpAddr)]) {
    let t = table(f);
    let set = set_named(f, &cidr_set(n));
    b.add_set(&t, set.clone());
    let elems = ranges
        .iter()
        .map(|(a, z)| Elem::range(addr(*a), addr(*z)))
        .collect();
    b.add_elements(&t, &set, elems);
}

/// Removes address-range set `n` (after the chains that use it).
pub fn delete_cidr_set(b: &mut Batch, f: IpFamily, n: u32) {
    b.delete_set(&table(f), &cidr_set(n));
}

/// The chains and rules of policy `p` (its address-range sets exist).
pub fn add_policy(b: &mut Batch, f: IpFamily, p: &Policy) {
    let t = table(f);
    for d in DIRECTIONS {
        let Some(rules) = p.compiled.rules(d) else {
            continue;
        };
        let chain = policy_chain(p.id(), d);
        b.add_chain(&t, Chain::regular(&chain));
        for (rule, refs) in rules.iter().zip(p.refs(d)) {
            for exprs in rule_exprs(f, d, rule, refs) {
                b.add_rule(&t, &chain, exprs, None);
            }
        }
    }
}

/// Removes policy `p`'s chains (after the groups that jumped to them).
pub fn delete_policy(b: &mut Batch, f: IpFamily, p: &Compiled) {
    let t = table(f);
    for d in DIRECTIONS {
        if p.rules(d).is_some() {
            let chain = policy_chain(&p.id, d);
            b.flush_chain(&t, &chain);
            b.delete_chain(&t, &chain);
        }
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

/// The rules that accept what a rule allows: one per combination of
/// peer kind (any, a pod selector, address ranges) and port kind (any,
/// numbers, names). A named port of an egress rule is resolved on the
/// peer, so its elements already hold only peers: that rule tests no
/// peer.
fn rule_exprs(f: IpFamily, d: Direction, rule: &Rule, refs: &RuleRefs) -> Vec<Vec<Expr>> {
    let a = f.addr();
    let peer_tests: Vec<Vec<Expr>> = match &rule.peers {
        None => vec![vec![]],
        Some(_) => {
            let mut v: Vec<Vec<Expr>> = refs
                .selectors
                .iter()
                .map(|n| {
                    let regs = KeyType(vec![M, a]).registers(r(0));
                    vec![
                        Expr::Immediate {
                            dreg: regs[0],
                            data: number(*n),
                        },
                        peer_addr(f, d, regs[1]),
                        lookup(names::PEERS, r(0), false),
                    ]
                })
                .collect();
            if let Some(n) = refs.cidrs {
                v.push(vec![
                    peer_addr(f, d, r(0)),
                    lookup(cidr_set(n), r(0), false),
                ]);
            }
            v
        }
    };
    let named_key = |n: u32| {
        let regs = KeyType(vec![M, a, P, S]).registers(r(0));
        vec![
            Expr::Immediate {
                dreg: regs[0],
                data: number(n),
            },
            f.daddr(regs[1]),
            Expr::meta(MetaKey::L4Proto, regs[2]),
            Expr::th_dport(regs[3]),
            lookup(names::NAMED_PORTS, r(0), false),
        ]
    };
    let mut port_tests: Vec<Vec<Expr>> = Vec::new();
    let mut named_alone = None;
    match &rule.ports {
        None => port_tests.push(vec![]),
        Some(ports) => {
            for (proto, first, last) in &ports.ranges {
                port_tests.push(port_range(*proto, *first, *last));
            }
            if let (false, Some(n)) = (ports.named.is_empty(), refs.named) {
                match d {
                    Direction::Ingress => port_tests.push(named_key(n)),
                    Direction::Egress => named_alone = Some(n),
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
    if let Some(n) = named_alone {
        let mut e = named_key(n);
        e.push(verdict(Verdict::Accept));
        out.push(e);
    }
    out
}
