//! The nftables mode's ruleset as pure functions: the static skeleton of
//! table `ip kube-proxy` or `ip6 kube-proxy` (chains, sets, maps, rules; it depends on the
//! node only) and the set/map elements one Service port contributes. A
//! Service, an endpoint or a NodePort is elements only, never a rule.
//! Nothing here talks to the kernel.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hostnet::nftables::{
    ct_state, ct_status, Batch, Chain, ChainType, CmpOp, CtKey, DataType, Elem, Expr, Family,
    Field, Hook, LookupDest, MapData, MetaKey, NatKind, Reg, Reject, Set, SetFlags, Table, Value,
    Verdict, RTN_LOCAL,
};

use crate::family::Addr;
use crate::rules::names::Protocol;
use crate::rules::NodeConfig;
use crate::view::{Endpoint, ServicePort};

/// The proxy's table (one per family: `ip` and, dual-stack, `ip6`).
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
    /// `ipv4_addr . inet_proto . inet_service`: external IP and
    /// load-balancer IP ports with externalTrafficPolicy Cluster (their
    /// traffic is masqueraded). All external IP ports are otherwise in the
    /// same sets and maps as ClusterIP ports, keyed by the external IP.
    pub const EXTERNAL_IPS: &str = "external-ips";
    /// `ipv4_addr . inet_proto . inet_service`: ClusterIP, external IP and
    /// load-balancer IP ports without endpoints.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// `inet_proto . inet_service`: NodePorts without endpoints.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// `ipv4_addr . inet_proto . inet_service`: ports whose traffic policy
    /// is Local and whose endpoints all run on other nodes (dropped).
    pub const NO_LOCAL_ENDPOINT_SERVICES: &str = "no-local-endpoint-services";
    /// `inet_proto . inet_service`: the same for NodePorts.
    pub const NO_LOCAL_ENDPOINT_NODEPORTS: &str = "no-local-endpoint-nodeports";
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
    /// `ipv4_addr . inet_proto . inet_service`: ClusterIP ports with
    /// session affinity ClientIP (any timeout).
    pub const SERVICE_AFFINITY: &str = "service-affinity";
    /// `inet_proto . inet_service`: NodePorts with session affinity.
    pub const NODEPORT_AFFINITY: &str = "nodeport-affinity";
    /// Prefix of the sets of ClusterIP ports by affinity timeout in seconds:
    /// `service-affinity-<seconds>`.
    pub const SERVICE_AFFINITY_TIMEOUT: &str = "service-affinity-";
    /// Prefix of the sets of NodePorts by affinity timeout.
    pub const NODEPORT_AFFINITY_TIMEOUT: &str = "nodeport-affinity-";
    /// `ipv4_addr . ipv4_addr . inet_proto . inet_service : ipv4_addr .
    /// inet_service`, filled by the packet path: client and destination
    /// (ClusterIP, external IP or node address, protocol, port) → the
    /// endpoint the client is pinned to, each with its timeout.
    pub const AFFINITY_CLIENTS: &str = "affinity-clients";
    /// `ipv4_addr . inet_proto . inet_service`: external IP and
    /// load-balancer IP ports with externalTrafficPolicy Local and some
    /// endpoint: their traffic from pods (the cluster CIDR) and from this
    /// node goes to every endpoint, as kube-proxy short-circuits it; the
    /// rest to this node's.
    pub const LOCAL_POLICY_IPS: &str = "local-policy-ips";
    /// Prefix of the per-tier sets of those ports, by the slot count of
    /// all their endpoints: `cluster-ips-<slots>`.
    pub const CLUSTER_IPS_TIER: &str = "cluster-ips-";
    /// Prefix of the same for NodePorts with policy Local:
    /// `cluster-nodeports-<slots>`.
    pub const CLUSTER_NODEPORTS_TIER: &str = "cluster-nodeports-";
    /// `ipv4_addr . inet_proto . inet_service . mark : ipv4_addr .
    /// inet_service`: a `local-policy-ips` port and slot → endpoint among all.
    pub const CLUSTER_ENDPOINTS: &str = "cluster-endpoints";
    /// `inet_proto . inet_service . mark : ipv4_addr . inet_service`:
    /// a NodePort with policy Local and slot → endpoint among all.
    pub const CLUSTER_NODEPORT_ENDPOINTS: &str = "cluster-nodeport-endpoints";
}

/// The chains that balance pods' and this node's traffic to a Local
/// external IP port or NodePort over every endpoint.
pub const EXTERNAL_CLUSTER: &str = "external-cluster";
pub const NODEPORT_CLUSTER: &str = "nodeport-cluster";

/// The chain that records which endpoint a client was sent to (one rule
/// per affinity timeout), jumped to from the NAT chains that see a
/// connection's first packet after its DNAT.
pub const AFFINITY_RECORD: &str = "affinity-record";

/// The most client entries each affinity map holds.
pub const AFFINITY_CLIENTS_MAX: u32 = 1 << 20;

/// The IPv4 table, `ip kube-proxy`.
pub fn table() -> Table {
    table_for::<Ipv4Addr>()
}

/// The table of family `F`: `ip kube-proxy` or `ip6 kube-proxy`.
pub fn table_for<F: Addr>() -> Table {
    Table::new(F::NFT_FAMILY, TABLE)
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
pub fn fill<F: Addr>(endpoints: &[Endpoint<F>]) -> Vec<&Endpoint<F>> {
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

use DataType::{InetProto as P, InetService as S, Mark as M};

/// Every set and map of the IPv4 table.
pub fn sets() -> Vec<Set> {
    sets_for::<Ipv4Addr>()
}

/// Every set and map of the table of family `F`.
pub fn sets_for<F: Addr>() -> Vec<Set> {
    let mut v: Vec<Set> = [
        names::SERVICE_IPS,
        names::SERVICE_NODEPORTS,
        names::NO_ENDPOINT_SERVICES,
        names::NO_ENDPOINT_NODEPORTS,
        names::NO_LOCAL_ENDPOINT_SERVICES,
        names::NO_LOCAL_ENDPOINT_NODEPORTS,
        names::NODEPORTS_LOCAL,
        names::SERVICE_ENDPOINTS,
        names::NODEPORT_ENDPOINTS,
        names::HAIRPIN,
        names::NODEPORT_IPS,
        names::EXTERNAL_IPS,
        names::SERVICE_AFFINITY,
        names::NODEPORT_AFFINITY,
        names::AFFINITY_CLIENTS,
        names::LOCAL_POLICY_IPS,
        names::CLUSTER_ENDPOINTS,
        names::CLUSTER_NODEPORT_ENDPOINTS,
    ]
    .into_iter()
    .map(set_named_for::<F>)
    .collect();
    for k in tiers() {
        v.push(set_named_for::<F>(&vip_tier(k)));
        v.push(set_named_for::<F>(&nodeport_tier(k)));
        v.push(set_named_for::<F>(&cluster_tier(k)));
        v.push(set_named_for::<F>(&cluster_nodeport_tier(k)));
    }
    v
}

/// The set or map `name` of the IPv4 table, as [`sets`] declares it.
pub fn set_named(name: &str) -> Set {
    set_named_for::<Ipv4Addr>(name)
}

/// The set or map `name` of the table of family `F`.
pub fn set_named_for<F: Addr>(name: &str) -> Set {
    #[allow(non_snake_case)]
    let A = F::NFT_TYPE;
    let key: &[DataType] = match name {
        names::SERVICE_ENDPOINTS => return map(name, &[A, P, S, M], &[A, S]),
        names::NODEPORT_ENDPOINTS | names::CLUSTER_NODEPORT_ENDPOINTS => {
            return map(name, &[P, S, M], &[A, S])
        }
        names::CLUSTER_ENDPOINTS => return map(name, &[A, P, S, M], &[A, S]),
        names::AFFINITY_CLIENTS => return clients(map(name, &[A, A, P, S], &[A, S])),
        names::HAIRPIN => &[A, A],
        n if n.starts_with(names::NODEPORT_AFFINITY) => &[P, S],
        names::NODEPORT_IPS => &[A],
        n if n.starts_with(names::SERVICE_NODEPORTS) => &[P, S],
        n if n.starts_with(names::CLUSTER_NODEPORTS_TIER) => &[P, S],
        names::NO_ENDPOINT_NODEPORTS
        | names::NO_LOCAL_ENDPOINT_NODEPORTS
        | names::NODEPORTS_LOCAL => &[P, S],
        _ => &[A, P, S],
    };
    set(name, key)
}

/// A map the packet path fills, its elements expiring.
fn clients(map: Set) -> Set {
    let mut m = map.with_flags(SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    });
    m.size = Some(AFFINITY_CLIENTS_MAX);
    m
}

/// The set of ClusterIP ports with affinity timeout `seconds`.
pub fn vip_affinity(seconds: u32) -> String {
    format!("{}{seconds}", names::SERVICE_AFFINITY_TIMEOUT)
}

/// The set of NodePorts with affinity timeout `seconds`.
pub fn nodeport_affinity(seconds: u32) -> String {
    format!("{}{seconds}", names::NODEPORT_AFFINITY_TIMEOUT)
}

/// The set of ClusterIP ports balanced over `slots` slots.
pub fn vip_tier(slots: u32) -> String {
    format!("{}{slots}", names::SERVICE_IPS_TIER)
}

/// The set of NodePorts balanced over `slots` slots.
pub fn nodeport_tier(slots: u32) -> String {
    format!("{}{slots}", names::SERVICE_NODEPORTS_TIER)
}

/// The set of Local external IP ports whose pod and node traffic is
/// balanced over `slots` slots of all their endpoints.
pub fn cluster_tier(slots: u32) -> String {
    format!("{}{slots}", names::CLUSTER_IPS_TIER)
}

/// The same for NodePorts with policy Local.
pub fn cluster_nodeport_tier(slots: u32) -> String {
    format!("{}{slots}", names::CLUSTER_NODEPORTS_TIER)
}

// Expression helpers.

fn r(slot: u8) -> Reg {
    Reg::new(slot)
}

/// `ip daddr . meta l4proto . th dport` into R1..R3.
fn vip_key<F: Addr>() -> Vec<Expr> {
    vec![
        F::daddr(r(0)),
        Expr::meta(MetaKey::L4Proto, r(F::REGS)),
        Expr::th_dport(r(F::REGS + 1)),
    ]
}

/// `meta l4proto . th dport` into R1..R2.
fn port_key() -> Vec<Expr> {
    vec![Expr::meta(MetaKey::L4Proto, r(0)), Expr::th_dport(r(1))]
}

/// The destination is an address NodePorts answer on.
fn nodeport_addr<F: Addr>(node: &NodeConfig) -> Vec<Expr> {
    if F::nodeports_restricted(node) {
        return vec![F::daddr(r(0)), Expr::lookup(names::NODEPORT_IPS, r(0))];
    }
    let mut v = vec![
        Expr::FibDaddrType { dreg: r(0) },
        Expr::cmp_eq(r(0), &RTN_LOCAL.to_ne_bytes()),
    ];
    v.extend(F::not_loopback_daddr(node));
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
fn pick<F: Addr>(key: Vec<Expr>, key_regs: u8, slots: u32, map: &str) -> Vec<Expr> {
    let mut v = key;
    v.push(Expr::NumgenRandom {
        dreg: r(key_regs),
        modulus: slots,
        offset: 0,
    });
    v.push(lookup_into(map, r(0)));
    v.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: F::NFT_FAMILY,
        addr: Some(r(0)),
        port: Some(r(F::REGS)),
        fully_random: false,
    });
    v
}

/// One rule per tier in `chain`: when `key()` is in the tier's set
/// (`tier_set(k)`), DNAT to `key . numgen random mod k` looked up in `map`.
/// Each expression of `key` loads one field into one register.
/// `regs` is how many registers the key fills.
fn balance<F: Addr>(
    b: &mut Batch,
    chain: &str,
    (key, regs): (fn() -> Vec<Expr>, u8),
    tier_set: fn(u32) -> String,
    map: &str,
) {
    for k in tiers() {
        let rule = cat(vec![
            key(),
            vec![Expr::lookup(tier_set(k), r(0))],
            pick::<F>(key(), regs, k, map),
        ]);
        b.add_rule(&table_for::<F>(), chain, rule, None);
    }
}

/// [`vip_key`] and the registers it fills.
fn vip_key_regs<F: Addr>() -> (fn() -> Vec<Expr>, u8) {
    (vip_key::<F>, F::REGS + 2)
}

/// [`port_key`] and the registers it fills.
fn port_key_regs() -> (fn() -> Vec<Expr>, u8) {
    (port_key, 2)
}

fn cat(parts: Vec<Vec<Expr>>) -> Vec<Expr> {
    parts.into_iter().flatten().collect()
}

/// The whole static part of the table as one batch: recreate the table
/// (add + delete + add, so it works whether or not it exists), its sets,
/// chains and rules, and the NodePort addresses when the node names them.
/// Service elements follow in the same batch (see the sync).
pub fn skeleton(node: &NodeConfig) -> Batch {
    skeleton_for::<Ipv4Addr>(node)
}

/// [`skeleton`] of the table of family `F`.
pub fn skeleton_for<F: Addr>(node: &NodeConfig) -> Batch {
    let t = table_for::<F>();
    let mut b = Batch::new();
    b.add_table(&t).delete_table(&t).add_table(&t);
    for s in sets_for::<F>() {
        b.add_set(&t, s);
    }
    let base = [
        ("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100),
        ("nat-output", ChainType::Nat, Hook::Output, -100),
        ("nat-postrouting", ChainType::Nat, Hook::Postrouting, 100),
        ("nat-input", ChainType::Nat, Hook::Input, 100),
        ("filter-input", ChainType::Filter, Hook::Input, -110),
        ("filter-forward", ChainType::Filter, Hook::Forward, -110),
        ("filter-output", ChainType::Filter, Hook::Output, -110),
    ];
    for (name, ty, hook, prio) in base {
        b.add_chain(&t, Chain::base(name, ty, hook, prio));
    }
    for c in [
        "services",
        "nodeports",
        "service-endpoints-check",
        AFFINITY_RECORD,
        EXTERNAL_CLUSTER,
        NODEPORT_CLUSTER,
    ] {
        b.add_chain(&t, Chain::regular(c));
    }

    let jump = |c: &str| vec![Expr::Verdict(Verdict::Jump(c.into()))];
    if node.localhost_nodeports && F::NFT_FAMILY == Family::Ip {
        // kube-proxy's KUBE-FIREWALL: with route_localnet on, drop packets
        // to 127.0.0.0/8 from elsewhere unless they are a NodePort's
        // (DNATed) or belong to a connection.
        for c in ["filter-input", "filter-output"] {
            b.add_rule(
                &t,
                c,
                martian_guard(),
                Some("block incoming localnet connections"),
            );
        }
    }
    b.add_rule(&t, "nat-prerouting", jump("services"), None);
    b.add_rule(&t, "nat-output", jump("services"), None);
    for c in ["filter-input", "filter-forward", "filter-output"] {
        b.add_rule(&t, c, jump("service-endpoints-check"), None);
    }

    // services: masquerade marks, then per tier: is the ClusterIP port in
    // the tier's set? Then DNAT to the endpoint of a random slot.
    let to_vip = cat(vec![
        vip_key::<F>(),
        vec![Expr::lookup(names::SERVICE_IPS, r(0))],
    ]);
    if node.masquerade_all {
        let rule = cat(vec![to_vip, mark_masq()]);
        b.add_rule(&t, "services", rule, Some("masquerade all"));
    } else if let Some((net, mask)) = F::cluster_prefix(node) {
        let rule = cat(vec![
            to_vip,
            prefix_match::<F>(net, mask, CmpOp::Neq),
            mark_masq(),
        ]);
        b.add_rule(&t, "services", rule, Some("cluster IP from off-cluster"));
    }
    // External IPs with policy Cluster: masquerade, whoever the client.
    let to_external = cat(vec![
        vip_key::<F>(),
        vec![Expr::lookup(names::EXTERNAL_IPS, r(0))],
        mark_masq(),
    ]);
    b.add_rule(
        &t,
        "services",
        to_external,
        Some("external IP, policy Cluster"),
    );
    // External IPs with policy Local: pods and this node reach every
    // endpoint (this node's traffic masqueraded), as kube-proxy
    // short-circuits them.
    short_circuit::<F>(
        &mut b,
        node,
        "services",
        vip_key::<F>,
        names::LOCAL_POLICY_IPS,
        EXTERNAL_CLUSTER,
    );
    balance::<F>(
        &mut b,
        EXTERNAL_CLUSTER,
        vip_key_regs::<F>(),
        cluster_tier,
        names::CLUSTER_ENDPOINTS,
    );
    // Session affinity: a client with an entry goes where it went before
    // (entries are written by `affinity-record`); the others are balanced.
    let pinned = cat(vec![
        vip_key::<F>(),
        vec![Expr::lookup(names::SERVICE_AFFINITY, r(0))],
        to_pinned::<F>(),
    ]);
    b.add_rule(&t, "services", pinned, Some("session affinity"));
    balance::<F>(
        &mut b,
        "services",
        vip_key_regs::<F>(),
        vip_tier,
        names::SERVICE_ENDPOINTS,
    );
    let to_nodeports = cat(vec![nodeport_addr::<F>(node), jump("nodeports")]);
    b.add_rule(&t, "services", to_nodeports, None);

    // nodeports: the same by protocol and port, on the node's addresses.
    short_circuit::<F>(
        &mut b,
        node,
        "nodeports",
        port_key,
        names::NODEPORTS_LOCAL,
        NODEPORT_CLUSTER,
    );
    balance::<F>(
        &mut b,
        NODEPORT_CLUSTER,
        port_key_regs(),
        cluster_nodeport_tier,
        names::CLUSTER_NODEPORT_ENDPOINTS,
    );
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
    let pinned = cat(vec![
        port_key(),
        vec![Expr::lookup(names::NODEPORT_AFFINITY, r(0))],
        to_pinned::<F>(),
    ]);
    b.add_rule(&t, "nodeports", pinned, Some("session affinity"));
    balance::<F>(
        &mut b,
        "nodeports",
        port_key_regs(),
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
    // Refuse Services without endpoints at once; drop what a Local policy
    // leaves this node no endpoint for (as kube-proxy does: the client may
    // try another node).
    let reject = Expr::Reject(F::reject());
    let drop = Expr::Verdict(Verdict::Drop);
    for (i, (vips, node_ports, end)) in [
        (
            names::NO_ENDPOINT_SERVICES,
            names::NO_ENDPOINT_NODEPORTS,
            reject,
        ),
        (
            names::NO_LOCAL_ENDPOINT_SERVICES,
            names::NO_LOCAL_ENDPOINT_NODEPORTS,
            drop,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        if i == 1 {
            // Before the drops: this node's own traffic to a Local external
            // IP port or NodePort is short-circuited (its DNAT comes after
            // this chain in the output hook), so it is not dropped here.
            let ret = vec![Expr::Verdict(Verdict::Return)];
            let vip = cat(vec![
                from_this_node(),
                vip_key::<F>(),
                vec![Expr::lookup(names::LOCAL_POLICY_IPS, r(0))],
                ret.clone(),
            ]);
            b.add_rule(
                &t,
                "service-endpoints-check",
                vip,
                Some("short-circuit local traffic"),
            );
            let np = cat(vec![
                from_this_node(),
                nodeport_addr::<F>(node),
                port_key(),
                vec![Expr::lookup(names::NODEPORTS_LOCAL, r(0))],
                ret,
            ]);
            b.add_rule(
                &t,
                "service-endpoints-check",
                np,
                Some("short-circuit local traffic"),
            );
        }
        if i == 0 && F::TCP_RESET {
            // TCP first, with a reset (see `Addr::TCP_RESET`).
            let tcp = || {
                vec![
                    Expr::meta(MetaKey::L4Proto, r(0)),
                    Expr::cmp_eq(r(0), &[Protocol::Tcp.number()]),
                    Expr::Reject(Reject::TcpReset),
                ]
            };
            let vip = cat(vec![vip_key::<F>(), vec![Expr::lookup(vips, r(0))], tcp()]);
            b.add_rule(&t, "service-endpoints-check", vip, None);
            let np = cat(vec![
                nodeport_addr::<F>(node),
                port_key(),
                vec![Expr::lookup(node_ports, r(0))],
                tcp(),
            ]);
            b.add_rule(&t, "service-endpoints-check", np, None);
        }
        let vip = cat(vec![
            vip_key::<F>(),
            vec![Expr::lookup(vips, r(0)), end.clone()],
        ]);
        b.add_rule(&t, "service-endpoints-check", vip, None);
        let np = cat(vec![
            nodeport_addr::<F>(node),
            port_key(),
            vec![Expr::lookup(node_ports, r(0)), end],
        ]);
        b.add_rule(&t, "service-endpoints-check", np, None);
    }

    // The first packet of a DNATed connection, on its way to the endpoint
    // (postrouting) or to this host (input): record the client's endpoint
    // before anything masquerades it.
    for c in ["nat-postrouting", "nat-input"] {
        let dnat = cat(vec![
            ct_bits(CtKey::Status, ct_status::DNAT, CmpOp::Neq),
            jump(AFFINITY_RECORD),
        ]);
        b.add_rule(&t, c, dnat, None);
    }
    // nat-postrouting: hairpin, then what was marked.
    let hairpin = vec![
        F::saddr(r(0)),
        F::daddr(r(F::REGS)),
        Expr::lookup(names::HAIRPIN, r(0)),
        Expr::Masquerade { fully_random: true },
    ];
    b.add_rule(&t, "nat-postrouting", hairpin, Some("hairpin"));
    let mut marked = masked(
        Expr::meta(MetaKey::Mark, r(0)),
        MASQ_MARK.to_ne_bytes().to_vec(),
        CmpOp::Neq,
        vec![0; 4],
    );
    marked.extend([
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
    ]);
    b.add_rule(&t, "nat-postrouting", marked, Some("marked for masquerade"));

    // Static elements.
    if F::nodeports_restricted(node) {
        let mut ips = F::nodeport_ips(node);
        if node.localhost_nodeports {
            ips.extend(F::of(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        let elems = ips
            .iter()
            .map(|ip| Elem::key(Value::of(&[ip.field()])))
            .collect();
        b.add_elements(&t, &set_named_for::<F>(names::NODEPORT_IPS), elems);
    }
    b
}

/// The sets and rules of affinity timeout `seconds`, added to the table
/// the first time a Service port uses that timeout: in `affinity-record`,
///
/// ```text
/// ct original ip daddr . meta l4proto . ct original proto-dst @service-affinity-<seconds>
///     update @affinity-clients { ip saddr . ct original ip daddr . meta l4proto
///     . ct original proto-dst timeout <seconds>s : ip daddr . th dport }
/// meta l4proto . ct original proto-dst @nodeport-affinity-<seconds>
///     update @affinity-clients { (the same) }
/// ```
///
/// A client already pinned keeps its entry (only its timeout restarts);
/// a new one's entry holds the endpoint its connection was sent to. No
/// rule jumps, so adding them makes the kernel re-validate only this
/// small table.
pub fn affinity_rules(b: &mut Batch, seconds: u32) {
    affinity_rules_for::<Ipv4Addr>(b, seconds)
}

/// [`affinity_rules`] in the table of family `F`.
pub fn affinity_rules_for<F: Addr>(b: &mut Batch, seconds: u32) {
    let t = table_for::<F>();
    let w = F::REGS;
    b.add_set(&t, set_named_for::<F>(&vip_affinity(seconds)));
    b.add_set(&t, set_named_for::<F>(&nodeport_affinity(seconds)));
    let timeout = Some(Duration::from_secs(seconds.into()));
    let original = |key: CtKey, slot: u8| Expr::CtOriginal { key, dreg: r(slot) };
    let ports = [
        (
            vec![
                F::ct_original_daddr(r(0)),
                Expr::meta(MetaKey::L4Proto, r(w)),
                original(CtKey::ProtoDst, w + 1),
            ],
            vip_affinity(seconds),
        ),
        (
            vec![
                Expr::meta(MetaKey::L4Proto, r(0)),
                original(CtKey::ProtoDst, 1),
            ],
            nodeport_affinity(seconds),
        ),
    ];
    for (key, set) in ports {
        // R0 client, R1..R3 what it asked for, R4..R5 where it went (IPv4;
        // an IPv6 address takes four registers).
        let rule = cat(vec![
            key,
            vec![
                Expr::lookup(set, r(0)),
                F::saddr(r(0)),
                F::ct_original_daddr(r(w)),
                Expr::meta(MetaKey::L4Proto, r(2 * w)),
                original(CtKey::ProtoDst, 2 * w + 1),
                F::daddr(r(2 * w + 2)),
                Expr::th_dport(r(3 * w + 2)),
                Expr::Dynset {
                    set: names::AFFINITY_CLIENTS.into(),
                    sreg_key: r(0),
                    sreg_data: Some(r(2 * w + 2)),
                    timeout,
                },
            ],
        ]);
        b.add_rule(&t, AFFINITY_RECORD, rule, None);
    }
}

/// `dnat ip to ip saddr . ip daddr . meta l4proto . th dport map
/// @affinity-clients`: where the client went before, if it has an entry.
fn to_pinned<F: Addr>() -> Vec<Expr> {
    let w = F::REGS;
    let mut v = vec![F::saddr(r(0))];
    v.extend(vip_key::<F>().into_iter().map(|e| shift(e, w)));
    v.push(lookup_into(names::AFFINITY_CLIENTS, r(2 * w + 2)));
    v.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: F::NFT_FAMILY,
        addr: Some(r(2 * w + 2)),
        port: Some(r(3 * w + 2)),
        fully_random: false,
    });
    v
}

/// `ct <key> & bits <op> 0`.
fn ct_bits(key: CtKey, bits: u32, op: CmpOp) -> Vec<Expr> {
    let load = Expr::Ct { key, dreg: r(0) };
    masked(load, bits.to_ne_bytes().to_vec(), op, vec![0; 4])
}

/// `load` into R0, then `R0 & mask <op> data`.
fn masked(load: Expr, mask: Vec<u8>, op: CmpOp, data: Vec<u8>) -> Vec<Expr> {
    let xor = vec![0; mask.len()];
    vec![
        load,
        Expr::Bitwise {
            sreg: r(0),
            dreg: r(0),
            mask,
            xor,
        },
        Expr::Cmp {
            sreg: r(0),
            op,
            data,
        },
    ]
}

/// A load of `e` one register further.
fn shift(e: Expr, by: u8) -> Expr {
    match e {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => Expr::Payload {
            base,
            offset,
            len,
            dreg: r(dreg.slot() + by),
        },
        Expr::Meta { key, dreg } => Expr::Meta {
            key,
            dreg: r(dreg.slot() + by),
        },
        other => other,
    }
}

/// `ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state !=
/// established,related ct status != dnat drop`.
fn martian_guard() -> Vec<Expr> {
    let eighth = |load: Expr, op: CmpOp| masked(load, vec![255, 0, 0, 0], op, vec![127, 0, 0, 0]);
    cat(vec![
        eighth(Expr::ip_daddr(r(0)), CmpOp::Eq),
        eighth(Expr::ip_saddr(r(0)), CmpOp::Neq),
        ct_bits(
            CtKey::State,
            ct_state::ESTABLISHED | ct_state::RELATED,
            CmpOp::Eq,
        ),
        ct_bits(CtKey::Status, ct_status::DNAT, CmpOp::Eq),
        vec![Expr::Verdict(Verdict::Drop)],
    ])
}

/// `ip saddr` (`ip6 saddr`) in `net/mask` (`op` Eq) or not (Neq).
fn prefix_match<F: Addr>(net: Vec<u8>, mask: Vec<u8>, op: CmpOp) -> Vec<Expr> {
    masked(F::saddr(r(0)), mask, op, net)
}

/// `fib saddr type local`: the packet comes from this node.
fn from_this_node() -> Vec<Expr> {
    vec![
        Expr::FibSaddrType { dreg: r(0) },
        Expr::cmp_eq(r(0), &RTN_LOCAL.to_ne_bytes()),
    ]
}

/// kube-proxy's short-circuit of a Local policy, in `chain`: when `key()`
/// is in `set`, traffic from pods (the cluster CIDR, when known) goes to
/// `to`, and so does this node's own, marked for masquerade.
fn short_circuit<F: Addr>(
    b: &mut Batch,
    node: &NodeConfig,
    chain: &str,
    key: fn() -> Vec<Expr>,
    set: &str,
    to: &str,
) {
    let goto = || vec![Expr::Verdict(Verdict::Goto(to.into()))];
    let member = || cat(vec![key(), vec![Expr::lookup(set, r(0))]]);
    if let Some((net, mask)) = F::cluster_prefix(node) {
        let rule = cat(vec![
            member(),
            prefix_match::<F>(net, mask, CmpOp::Eq),
            goto(),
        ]);
        b.add_rule(
            &table_for::<F>(),
            chain,
            rule,
            Some("short-circuit pod traffic"),
        );
    }
    let rule = cat(vec![member(), from_this_node(), mark_masq(), goto()]);
    b.add_rule(
        &table_for::<F>(),
        chain,
        rule,
        Some("short-circuit local traffic"),
    );
}

/// One element: set name, key, value (for maps).
pub type Element = (String, Value, Option<Value>);

/// The elements one Service port contributes. Hairpin elements are not
/// included: Service ports share endpoint IPs, so the sync counts them
/// (see [`hairpin_elem`]).
pub fn service_elements<F: Addr>(sp: &ServicePort<F>) -> Vec<Element> {
    let proto = Field::Proto(sp.protocol.number());
    let mut out: Vec<Element> = Vec::new();
    let local = sp.local_endpoints();
    let group = |local_only: bool| if local_only { &local } else { &sp.endpoints };
    let vip = [sp.cluster_ip.field(), proto, Field::Port(sp.port)];
    destination(&mut out, sp, &vip, true, group(sp.internal_local));
    // Pods and this node reach a Local port's every endpoint.
    let short_circuit = sp.external_local && !sp.endpoints.is_empty();
    for ip in sp.external_destinations() {
        let dest = [ip.field(), proto, Field::Port(sp.port)];
        let eps = group(sp.external_local);
        if !eps.is_empty() && !sp.external_local {
            out.push((names::EXTERNAL_IPS.into(), Value::of(&dest), None));
        }
        if short_circuit {
            out.push((names::LOCAL_POLICY_IPS.into(), Value::of(&dest), None));
            balanced(
                &mut out,
                &dest,
                cluster_tier,
                names::CLUSTER_ENDPOINTS,
                &sp.endpoints,
            );
        }
        destination(&mut out, sp, &dest, false, eps);
    }
    let Some(np) = sp.node_port else { return out };
    let port = [proto, Field::Port(np)];
    if sp.external_local {
        out.push((names::NODEPORTS_LOCAL.into(), Value::of(&port), None));
    }
    if short_circuit {
        let tier = cluster_nodeport_tier;
        balanced(
            &mut out,
            &port,
            tier,
            names::CLUSTER_NODEPORT_ENDPOINTS,
            &sp.endpoints,
        );
    }
    let eps = group(sp.external_local);
    if eps.is_empty() {
        let set = if sp.endpoints.is_empty() {
            names::NO_ENDPOINT_NODEPORTS
        } else {
            names::NO_LOCAL_ENDPOINT_NODEPORTS
        };
        out.push((set.into(), Value::of(&port), None));
        return out;
    }
    out.push((names::SERVICE_NODEPORTS.into(), Value::of(&port), None));
    out.push((nodeport_tier(slots(eps.len())), Value::of(&port), None));
    if let Some(t) = sp.affinity_seconds {
        out.push((names::NODEPORT_AFFINITY.into(), Value::of(&port), None));
        out.push((nodeport_affinity(t), Value::of(&port), None));
    }
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

/// The elements of one destination `ip . proto . port` (a ClusterIP, an
/// external IP or a load-balancer IP port) balanced over `eps`: in
/// `service-ips` (ClusterIPs only) and its tier, one map element per
/// slot, the affinity sets; or in `no-endpoint-services`.
fn destination<F: Addr>(
    out: &mut Vec<Element>,
    sp: &ServicePort<F>,
    dest: &[Field<'_>; 3],
    cluster_ip: bool,
    eps: &[Endpoint<F>],
) {
    let key = Value::of(dest);
    if eps.is_empty() {
        let set = if sp.endpoints.is_empty() {
            names::NO_ENDPOINT_SERVICES
        } else {
            names::NO_LOCAL_ENDPOINT_SERVICES
        };
        out.push((set.into(), key, None));
        return;
    }
    if cluster_ip {
        out.push((names::SERVICE_IPS.into(), key.clone(), None));
    }
    out.push((vip_tier(slots(eps.len())), key.clone(), None));
    if let Some(t) = sp.affinity_seconds {
        out.push((names::SERVICE_AFFINITY.into(), key.clone(), None));
        out.push((vip_affinity(t), key, None));
    }
    for (slot, e) in fill(eps).into_iter().enumerate() {
        let k = [dest[0], dest[1], dest[2], Field::Mark(slot as u32)];
        out.push((names::SERVICE_ENDPOINTS.into(), Value::of(&k), Some(to(e))));
    }
}

/// `key` in its tier (`tier_set` of its slot count) and one element of
/// `map` per slot over `eps` (not empty).
fn balanced<F: Addr>(
    out: &mut Vec<Element>,
    key: &[Field<'_>],
    tier_set: fn(u32) -> String,
    map: &str,
    eps: &[Endpoint<F>],
) {
    out.push((tier_set(slots(eps.len())), Value::of(key), None));
    for (slot, e) in fill(eps).into_iter().enumerate() {
        let mut k = key.to_vec();
        k.push(Field::Mark(slot as u32));
        out.push((map.into(), Value::of(&k), Some(to(e))));
    }
}

/// An endpoint as a map value: `ipv4_addr . inet_service` (or `ipv6_addr`).
pub fn to<F: Addr>(e: &Endpoint<F>) -> Value {
    Value::of(&[e.ip.field(), Field::Port(e.port)])
}

/// The hairpin element of endpoint address `ip`: `ip . ip`.
pub fn hairpin_elem<F: Addr>(ip: F) -> Value {
    Value::of(&[ip.field(), ip.field()])
}
