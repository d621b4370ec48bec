//! The nftables mode's ruleset as pure functions: the static skeleton of
//! table `ip kube-proxy` (chains, sets, maps, rules; it depends on the
//! node only) and the set/map elements one Service port contributes. A
//! Service, an endpoint or a NodePort is elements only, never a rule.
//! Nothing here talks to the kernel.

use std::net::Ipv4Addr;

use hostnet::nftables::{
    Batch, Chain, ChainType, CmpOp, DataType, Elem, Expr, Family, Field, Hook, LookupDest, MapData,
    MetaKey, NatKind, Reg, Reject, Set, Table, Value, Verdict, RTN_LOCAL,
};

use crate::rules::NodeConfig;
use crate::view::{Endpoint, ServicePort};

/// The proxy's table (one per family; IPv4 only for now).
pub const TABLE: &str = "kube-proxy";

/// Endpoint counts up to this get a tier of their own (`numgen random mod
/// n`: exactly even shares, n map elements per Service port).
pub const EXACT_TIERS: u32 = 32;

/// Tiers beyond the exact ones: (most endpoints, slots). Endpoints fill
/// the slots in turn, so shares differ by at most one slot, and a tier
/// has at least 8 slots per endpoint: no endpoint gets more than 1/8 over
/// its share. Endpoints beyond the last tier's count are not used.
pub const LARGE_TIERS: [(u32, u32); 3] = [(128, 1024), (1024, 8192), (8192, 65536)];

/// The bit that asks `nat-postrouting` to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

/// Set and map names (kube-proxy's nftables names where it has the same set).
pub mod names {
    /// `ipv4_addr . inet_proto . inet_service`: ClusterIP ports with endpoints.
    pub const SERVICE_IPS: &str = "service-ips";
    /// `inet_proto . inet_service`: NodePorts with endpoints.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// `ipv4_addr . inet_proto . inet_service`: ClusterIPs without endpoints.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// `inet_proto . inet_service`: NodePorts without endpoints.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// `inet_proto . inet_service`: NodePorts with externalTrafficPolicy
    /// Local (not masqueraded: the client's address is kept).
    pub const NODEPORTS_LOCAL: &str = "nodeports-local";
    /// `ipv4_addr . inet_proto . inet_service . mark : ipv4_addr .
    /// inet_service`: ClusterIP port and slot → endpoint.
    pub const SERVICE_ENDPOINTS: &str = "service-endpoints";
    /// `inet_proto . inet_service . mark : ipv4_addr . inet_service`:
    /// NodePort and slot → endpoint.
    pub const NODEPORT_ENDPOINTS: &str = "nodeport-endpoints";
    /// `ipv4_addr . ipv4_addr`: (ip, ip) per endpoint IP, for hairpin.
    pub const HAIRPIN: &str = "hairpin";
    /// `ipv4_addr`, static: the addresses NodePorts answer on, when the
    /// node restricts them (else `fib daddr type local`).
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// Prefix of the per-tier sets of ClusterIP ports: `service-ips-<slots>`.
    pub const SERVICE_IPS_TIER: &str = "service-ips-";
    /// Prefix of the per-tier sets of NodePorts: `service-nodeports-<slots>`.
    pub const SERVICE_NODEPORTS_TIER: &str = "service-nodeports-";
}

/// The table.
pub fn table() -> Table {
    Table::new(Family::Ip, TABLE)
}

/// Every tier, as its slot count (the numgen modulus), in rule order.
pub fn tiers() -> Vec<u32> {
    (1..=EXACT_TIERS)
        .chain(LARGE_TIERS.iter().map(|(_, k)| *k))
        .collect()
}

/// The slot count of `n` endpoints (0 for none), after the cap of the
/// last tier.
pub fn slots(n: usize) -> u32 {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if n <= EXACT_TIERS {
        return n;
    }
    LARGE_TIERS
        .iter()
        .find(|(most, _)| n <= *most)
        .or(LARGE_TIERS.last())
        .map_or(n, |(_, k)| *k)
}

/// Which endpoint each slot leads to: endpoint `s % n` for slot `s`.
pub fn fill(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let cap = LARGE_TIERS
        .last()
        .map_or(usize::MAX, |(most, _)| *most as usize);
    let used = &endpoints[..endpoints.len().min(cap)];
    if used.is_empty() {
        return Vec::new();
    }
    (0..slots(used.len()) as usize)
        .map(|s| &used[s % used.len()])
        .collect()
}

fn set(name: &str, key: &[DataType]) -> Set {
    Set::new(name, key)
}

fn map(name: &str, key: &[DataType], value: &[DataType]) -> Set {
    Set::map(
        name,
        key,
        MapData::Value(hostnet::nftables::KeyType(value.to_vec())),
    )
}

use DataType::{InetProto as P, InetService as S, Ipv4Addr as A, Mark as M};

/// Every set and map of the table.
pub fn sets() -> Vec<Set> {
    let mut v: Vec<Set> = [
        names::SERVICE_IPS,
        names::SERVICE_NODEPORTS,
        names::NO_ENDPOINT_SERVICES,
        names::NO_ENDPOINT_NODEPORTS,
        names::NODEPORTS_LOCAL,
        names::SERVICE_ENDPOINTS,
        names::NODEPORT_ENDPOINTS,
        names::HAIRPIN,
        names::NODEPORT_IPS,
    ]
    .into_iter()
    .map(set_named)
    .collect();
    for k in tiers() {
        v.push(set_named(&vip_tier(k)));
        v.push(set_named(&nodeport_tier(k)));
    }
    v
}

/// The set or map `name` as [`sets`] declares it.
pub fn set_named(name: &str) -> Set {
    let key: &[DataType] = match name {
        names::SERVICE_ENDPOINTS => return map(name, &[A, P, S, M], &[A, S]),
        names::NODEPORT_ENDPOINTS => return map(name, &[P, S, M], &[A, S]),
        names::HAIRPIN => &[A, A],
        names::NODEPORT_IPS => &[A],
        n if n.starts_with(names::SERVICE_NODEPORTS) => &[P, S],
        names::NO_ENDPOINT_NODEPORTS | names::NODEPORTS_LOCAL => &[P, S],
        _ => &[A, P, S],
    };
    set(name, key)
}

/// The set of ClusterIP ports balanced over `slots` slots.
pub fn vip_tier(slots: u32) -> String {
    format!("{}{slots}", names::SERVICE_IPS_TIER)
}

/// The set of NodePorts balanced over `slots` slots.
pub fn nodeport_tier(slots: u32) -> String {
    format!("{}{slots}", names::SERVICE_NODEPORTS_TIER)
}

// Expression helpers.

fn r(slot: u8) -> Reg {
    Reg::new(slot)
}

/// `ip daddr . meta l4proto . th dport` into R1..R3.
fn vip_key() -> Vec<Expr> {
    vec![
        Expr::ip_daddr(r(0)),
        Expr::meta(MetaKey::L4Proto, r(1)),
        Expr::th_dport(r(2)),
    ]
}

/// `meta l4proto . th dport` into R1..R2.
fn port_key() -> Vec<Expr> {
    vec![Expr::meta(MetaKey::L4Proto, r(0)), Expr::th_dport(r(1))]
}

/// The destination is an address NodePorts answer on.
fn nodeport_addr(node: &NodeConfig) -> Vec<Expr> {
    if !node.node_ips.is_empty() {
        return vec![
            Expr::ip_daddr(r(0)),
            Expr::lookup(names::NODEPORT_IPS, r(0)),
        ];
    }
    let mut v = vec![
        Expr::FibDaddrType { dreg: r(0) },
        Expr::cmp_eq(r(0), &RTN_LOCAL.to_ne_bytes()),
    ];
    if !node.localhost_nodeports {
        // ip daddr != 127.0.0.0/8
        v.push(Expr::ip_daddr(r(0)));
        v.push(Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask: vec![255, 0, 0, 0],
            xor: vec![0; 4],
        });
        v.push(Expr::Cmp {
            sreg: r(0),
            op: CmpOp::Neq,
            data: vec![127, 0, 0, 0],
        });
    }
    v
}

fn lookup_into(set: &str, dreg: Reg) -> Expr {
    Expr::Lookup {
        set: set.into(),
        sreg: r(0),
        dreg: Some(LookupDest::Data(dreg)),
        invert: false,
    }
}

/// `meta mark set meta mark | 0x4000`.
fn mark_masq() -> Vec<Expr> {
    vec![
        Expr::meta(MetaKey::Mark, r(0)),
        Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask: (!MASQ_MARK).to_ne_bytes().to_vec(),
            xor: MASQ_MARK.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: r(0),
        },
    ]
}

/// `dnat to <key> . numgen random mod slots map @map`: `key` loads the
/// first `key_regs` registers; the slot goes in the next one.
fn pick(key: Vec<Expr>, key_regs: u8, slots: u32, map: &str) -> Vec<Expr> {
    let mut v = key;
    v.push(Expr::NumgenRandom {
        dreg: r(key_regs),
        modulus: slots,
        offset: 0,
    });
    v.push(lookup_into(map, r(0)));
    v.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: Family::Ip,
        addr: Some(r(0)),
        port: Some(r(1)),
        fully_random: false,
    });
    v
}

/// One rule per tier in `chain`: when `key()` is in the tier's set
/// (`tier_set(k)`), DNAT to `key . numgen random mod k` looked up in `map`.
/// Each expression of `key` loads one field into one register.
fn balance(
    b: &mut Batch,
    chain: &str,
    key: fn() -> Vec<Expr>,
    tier_set: fn(u32) -> String,
    map: &str,
) {
    let regs = key().len() as u8;
    for k in tiers() {
        let rule = cat(vec![
            key(),
            vec![Expr::lookup(tier_set(k), r(0))],
            pick(key(), regs, k, map),
        ]);
        b.add_rule(&table(), chain, rule, None);
    }
}

fn cat(parts: Vec<Vec<Expr>>) -> Vec<Expr> {
    parts.into_iter().flatten().collect()
}

/// The whole static part of the table as one batch: recreate the table
/// (add + delete + add, so it works whether or not it exists), its sets,
/// chains and rules, and the NodePort addresses when the node names them.
/// Service elements follow in the same batch (see the sync).
pub fn skeleton(node: &NodeConfig) -> Batch {
    let t = table();
    let mut b = Batch::new();
    b.add_table(&t).delete_table(&t).add_table(&t);
    for s in sets() {
        b.add_set(&t, s);
    }
    let base = [
        ("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100),
        ("nat-output", ChainType::Nat, Hook::Output, -100),
        ("nat-postrouting", ChainType::Nat, Hook::Postrouting, 100),
        ("filter-input", ChainType::Filter, Hook::Input, -110),
        ("filter-forward", ChainType::Filter, Hook::Forward, -110),
        ("filter-output", ChainType::Filter, Hook::Output, -110),
    ];
    for (name, ty, hook, prio) in base {
        b.add_chain(&t, Chain::base(name, ty, hook, prio));
    }
    for c in ["services", "nodeports", "service-endpoints-check"] {
        b.add_chain(&t, Chain::regular(c));
    }

    let jump = |c: &str| vec![Expr::Verdict(Verdict::Jump(c.into()))];
    b.add_rule(&t, "nat-prerouting", jump("services"), None);
    b.add_rule(&t, "nat-output", jump("services"), None);
    for c in ["filter-input", "filter-forward", "filter-output"] {
        b.add_rule(&t, c, jump("service-endpoints-check"), None);
    }

    // services: masquerade marks, then per tier: is the ClusterIP port in
    // the tier's set? Then DNAT to the endpoint of a random slot.
    let to_vip = cat(vec![
        vip_key(),
        vec![Expr::lookup(names::SERVICE_IPS, r(0))],
    ]);
    if node.masquerade_all {
        let rule = cat(vec![to_vip, mark_masq()]);
        b.add_rule(&t, "services", rule, Some("masquerade all"));
    } else if let Some(cidr) = node.cluster_cidr {
        let rule = cat(vec![
            to_vip,
            not_in_prefix(cidr.network(), cidr.netmask()),
            mark_masq(),
        ]);
        b.add_rule(&t, "services", rule, Some("cluster IP from off-cluster"));
    }
    balance(
        &mut b,
        "services",
        vip_key,
        vip_tier,
        names::SERVICE_ENDPOINTS,
    );
    let to_nodeports = cat(vec![nodeport_addr(node), jump("nodeports")]);
    b.add_rule(&t, "services", to_nodeports, None);

    // nodeports: the same by protocol and port, on the node's addresses.
    let np_masq = cat(vec![
        port_key(),
        vec![
            Expr::lookup(names::SERVICE_NODEPORTS, r(0)),
            Expr::Lookup {
                set: names::NODEPORTS_LOCAL.into(),
                sreg: r(0),
                dreg: None,
                invert: true,
            },
        ],
        mark_masq(),
    ]);
    b.add_rule(&t, "nodeports", np_masq, Some("policy Cluster"));
    balance(
        &mut b,
        "nodeports",
        port_key,
        nodeport_tier,
        names::NODEPORT_ENDPOINTS,
    );

    // Traffic exempted from connection tracking (NOTRACK: the node-local
    // DNS addresses, which are also kube-dns's ClusterIP) is not proxied,
    // so it is not refused either.
    let untracked = cat(vec![
        Expr::ct_state_in(hostnet::nftables::ct_state::UNTRACKED).to_vec(),
        vec![Expr::Verdict(Verdict::Return)],
    ]);
    b.add_rule(&t, "service-endpoints-check", untracked, Some("untracked"));
    // Refuse Services without endpoints at once.
    let reject = vec![Expr::Reject(Reject::Icmp4PortUnreachable)];
    let no_vip = cat(vec![
        vip_key(),
        vec![Expr::lookup(names::NO_ENDPOINT_SERVICES, r(0))],
        reject.clone(),
    ]);
    b.add_rule(&t, "service-endpoints-check", no_vip, None);
    let no_np = cat(vec![
        nodeport_addr(node),
        port_key(),
        vec![Expr::lookup(names::NO_ENDPOINT_NODEPORTS, r(0))],
        reject,
    ]);
    b.add_rule(&t, "service-endpoints-check", no_np, None);

    // nat-postrouting: hairpin, then what was marked.
    let hairpin = vec![
        Expr::ip_saddr(r(0)),
        Expr::ip_daddr(r(1)),
        Expr::lookup(names::HAIRPIN, r(0)),
        Expr::Masquerade { fully_random: true },
    ];
    b.add_rule(&t, "nat-postrouting", hairpin, Some("hairpin"));
    let marked = vec![
        Expr::meta(MetaKey::Mark, r(0)),
        Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask: MASQ_MARK.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: r(0),
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
        Expr::meta(MetaKey::Mark, r(0)),
        Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask: (!MASQ_MARK).to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: r(0),
        },
        Expr::Masquerade { fully_random: true },
    ];
    b.add_rule(&t, "nat-postrouting", marked, Some("marked for masquerade"));

    // Static elements.
    if !node.node_ips.is_empty() {
        let mut ips = node.node_ips.clone();
        if node.localhost_nodeports {
            ips.push(Ipv4Addr::LOCALHOST);
        }
        let elems = ips
            .iter()
            .map(|ip| Elem::key(Value::of(&[Field::Ipv4(*ip)])))
            .collect();
        b.add_elements(&t, &set_named(names::NODEPORT_IPS), elems);
    }
    b
}

/// `ip saddr` not in `net/mask`.
fn not_in_prefix(net: Ipv4Addr, mask: Ipv4Addr) -> Vec<Expr> {
    vec![
        Expr::ip_saddr(r(0)),
        Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask: mask.octets().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: r(0),
            op: CmpOp::Neq,
            data: net.octets().to_vec(),
        },
    ]
}

/// One element: set name, key, value (for maps).
pub type Element = (String, Value, Option<Value>);

/// The elements one Service port contributes. Hairpin elements are not
/// included: Service ports share endpoint IPs, so the sync counts them
/// (see [`hairpin_elem`]).
pub fn service_elements(sp: &ServicePort) -> Vec<Element> {
    let proto = Field::Proto(sp.protocol.number());
    let mut out: Vec<Element> = Vec::new();
    let local: Vec<Endpoint> = sp.endpoints.iter().filter(|e| e.local).cloned().collect();
    let group = |local_only: bool| if local_only { &local } else { &sp.endpoints };
    let vip = [Field::Ipv4(sp.cluster_ip), proto, Field::Port(sp.port)];
    let eps = group(sp.internal_local);
    if eps.is_empty() {
        out.push((names::NO_ENDPOINT_SERVICES.into(), Value::of(&vip), None));
    } else {
        out.push((names::SERVICE_IPS.into(), Value::of(&vip), None));
        out.push((vip_tier(slots(eps.len())), Value::of(&vip), None));
        for (slot, e) in fill(eps).into_iter().enumerate() {
            let key = [vip[0], vip[1], vip[2], Field::Mark(slot as u32)];
            out.push((
                names::SERVICE_ENDPOINTS.into(),
                Value::of(&key),
                Some(to(e)),
            ));
        }
    }
    let Some(np) = sp.node_port else { return out };
    let port = [proto, Field::Port(np)];
    if sp.external_local {
        out.push((names::NODEPORTS_LOCAL.into(), Value::of(&port), None));
    }
    let eps = group(sp.external_local);
    if eps.is_empty() {
        out.push((names::NO_ENDPOINT_NODEPORTS.into(), Value::of(&port), None));
        return out;
    }
    out.push((names::SERVICE_NODEPORTS.into(), Value::of(&port), None));
    out.push((nodeport_tier(slots(eps.len())), Value::of(&port), None));
    for (slot, e) in fill(eps).into_iter().enumerate() {
        let key = [port[0], port[1], Field::Mark(slot as u32)];
        out.push((
            names::NODEPORT_ENDPOINTS.into(),
            Value::of(&key),
            Some(to(e)),
        ));
    }
    out
}

/// An endpoint as a map value: `ipv4_addr . inet_service`.
fn to(e: &Endpoint) -> Value {
    Value::of(&[Field::Ipv4(e.ip), Field::Port(e.port)])
}

/// The hairpin element of endpoint address `ip`: `ip . ip`.
pub fn hairpin_elem(ip: Ipv4Addr) -> Value {
    Value::of(&[Field::Ipv4(ip), Field::Ipv4(ip)])
}
