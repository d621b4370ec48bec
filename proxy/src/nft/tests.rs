//! The nftables ruleset with plain data, and the engine against the
//! recording fake.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use hostnet::nftables::{Field, NfTables, Op, RecordingNfTables, Value};

use super::ruleset::{self, fill, names, service_elements, slots, EXACT_TIERS};
use super::*;
use crate::view::{test_port, Endpoint};

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "n1".into(),
        node_ips: Vec::new(),
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        cluster_cidr_v6: None,
        masquerade_all: false,
        localhost_nodeports: false,
    }
}

fn eps(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            ip: Ipv4Addr::from(0x0af4_0000 + i as u32),
            port: 8080,
            local: i % 2 == 0,
        })
        .collect()
}

fn by_set(elems: &[Element]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (s, _, _) in elems {
        *m.entry(s.clone()).or_default() += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[test]
fn a_cluster_ip_is_two_set_elements_and_one_map_element_per_endpoint() {
    let sp = test_port(
        "ns",
        "web",
        "http",
        "10.96.0.10",
        &[("10.244.1.2", true), ("10.244.2.2", false)],
    );
    let elems = service_elements(&sp);
    assert_eq!(
        by_set(&elems),
        counts(&[
            (names::SERVICE_IPS, 1),
            ("service-ips-2", 1),
            (names::SERVICE_ENDPOINTS, 2)
        ])
    );
    let vip = "10.96.0.10".parse().unwrap();
    // Slot 1 leads to the second endpoint.
    let slot1 = Value::of(&[
        Field::Ipv4(vip),
        Field::Proto(6),
        Field::Port(80),
        Field::Mark(1),
    ]);
    let to = Value::of(&[Field::Ipv4("10.244.2.2".parse().unwrap()), Field::Port(80)]);
    assert!(elems
        .iter()
        .any(|(_, k, v)| *k == slot1 && v.as_ref() == Some(&to)));
}

#[test]
fn no_endpoints_means_reject_sets_only() {
    let mut sp = test_port("ns", "web", "", "10.96.0.11", &[]);
    sp.node_port = Some(30080);
    assert_eq!(
        by_set(&service_elements(&sp)),
        counts(&[
            (names::NO_ENDPOINT_SERVICES, 1),
            (names::NO_ENDPOINT_NODEPORTS, 1)
        ])
    );
}

/// A port with one endpoint on this node and one elsewhere.
fn local_and_remote() -> ServicePort {
    test_port(
        "ns",
        "web",
        "",
        "10.96.0.12",
        &[("10.244.1.2", true), ("10.244.2.2", false)],
    )
}

#[test]
fn external_policy_local_balances_the_node_port_over_local_endpoints_unmasqueraded() {
    let mut sp = local_and_remote();
    sp.node_port = Some(30081);
    sp.external_local = true;
    let m = by_set(&service_elements(&sp));
    assert_eq!(m[names::NODEPORTS_LOCAL], 1);
    assert_eq!(m["service-nodeports-1"], 1);
    assert_eq!(m[names::NODEPORT_ENDPOINTS], 1);
    assert_eq!(m[names::SERVICE_ENDPOINTS], 2);
}

#[test]
fn a_local_node_port_balances_over_the_local_fallback_when_no_local_endpoint_is_ready() {
    let mut sp = test_port("ns", "web", "", "10.96.0.12", &[("10.244.2.2", false)]);
    sp.node_port = Some(30081);
    sp.external_local = true;
    let m = by_set(&service_elements(&sp));
    assert_eq!(
        m[names::NO_LOCAL_ENDPOINT_NODEPORTS],
        1,
        "nothing local: dropped"
    );
    sp.local_fallback = test_port("ns", "web", "", "10.96.0.12", &[("10.244.1.9", true)]).endpoints;
    let elems = service_elements(&sp);
    let m = by_set(&elems);
    assert!(!m.contains_key(names::NO_LOCAL_ENDPOINT_NODEPORTS));
    assert_eq!(m[names::NODEPORT_ENDPOINTS], 1);
    assert_eq!(
        m[names::SERVICE_ENDPOINTS],
        1,
        "the ClusterIP keeps the ready one"
    );
    let to_fallback = elems
        .iter()
        .filter(|(set, _, v)| {
            set == names::NODEPORT_ENDPOINTS
                && v.as_ref() == Some(&ruleset::to(&sp.local_fallback[0]))
        })
        .count();
    assert_eq!(to_fallback, 1);
}

#[test]
fn slots_are_exact_up_to_32_and_within_one_slot_beyond() {
    for n in 1..=EXACT_TIERS as usize {
        assert_eq!(fill(&eps(n)).len(), n, "one slot per endpoint at n={n}");
    }
    for (n, k) in [
        (33, 1024),
        (128, 1024),
        (129, 8192),
        (1000, 8192),
        (8192, 65536),
    ] {
        let e = eps(n);
        let f = fill(&e);
        assert_eq!(f.len(), k, "n={n}");
        let mut count: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        f.iter().for_each(|e| *count.entry(e.ip).or_default() += 1);
        let (lo, hi) = (count.values().min().unwrap(), count.values().max().unwrap());
        assert_eq!(count.len(), n);
        assert!(hi - lo <= 1, "n={n}: {lo}..{hi} slots");
        // At least 8 slots each: at most 1/8 over an even share.
        assert!(*lo >= 8, "n={n}: {lo} slots");
    }
    assert_eq!(fill(&eps(9000)).len(), 65536, "the first 8192 are used");
    assert_eq!(slots(0), 0);
}

#[test]
fn the_skeleton_holds_every_rule_and_no_service() {
    let b = ruleset::skeleton(&node());
    assert!(matches!(b.ops()[0], Op::AddTable(_)));
    assert!(matches!(b.ops()[1], Op::DeleteTable(_)));
    let rules = b
        .ops()
        .iter()
        .filter(|o| matches!(o, Op::AddRule { .. }))
        .count();
    let tiers = ruleset::tiers().len();
    // 5 jumps; services: masquerade (off-cluster, external IPs), the
    // pinned clients, a rule per tier, the NodePort jump; nodeports:
    // masquerade, the pinned clients and a rule per tier; the untracked
    // return, 2 rejects, 2 local returns and 2 drops; 2 jumps to the
    // affinity record, 2 postrouting; the short-circuit of Local external
    // IPs and NodePorts: 2 rules each (pods, this node) and a rule per tier
    // in each of their chains.
    assert_eq!(
        rules,
        5 + (4 + tiers) + (2 + tiers) + 7 + 2 + 2 + 2 * (2 + tiers)
    );
    assert!(!b.ops().iter().any(|o| matches!(o, Op::AddElements { .. })));
    // With localhost NodePorts: the martian guard on input and output.
    let localhost = NodeConfig {
        localhost_nodeports: true,
        ..node()
    };
    assert_eq!(rules_added(&ruleset::skeleton(&localhost)), rules + 2);
}

#[test]
fn external_and_load_balancer_ips_follow_the_external_policy() {
    let mut sp = local_and_remote();
    sp.external_ips = vec!["203.0.113.9".parse().unwrap()];
    sp.load_balancer_ips = vec!["198.51.100.7".parse().unwrap()];
    let m = by_set(&service_elements(&sp));
    // Policy Cluster: masqueraded, both endpoints, three destinations.
    assert_eq!(m[names::EXTERNAL_IPS], 2);
    assert_eq!(m["service-ips-2"], 3);
    assert_eq!(m[names::SERVICE_IPS], 1, "the ClusterIP only");
    assert_eq!(m[names::SERVICE_ENDPOINTS], 6);
    // Policy Local: the client's address kept, this node's endpoint only.
    sp.external_local = true;
    let m = by_set(&service_elements(&sp));
    assert!(!m.contains_key(names::EXTERNAL_IPS));
    assert_eq!(m["service-ips-1"], 2);
    assert_eq!(m[names::SERVICE_ENDPOINTS], 2 + 2);
    // ... and from pods and this node, every endpoint (short-circuit).
    assert_eq!(m[names::LOCAL_POLICY_IPS], 2);
    assert_eq!(m["cluster-ips-2"], 2);
    assert_eq!(m[names::CLUSTER_ENDPOINTS], 4);
    // Local with no endpoint here but some elsewhere: dropped, as
    // kube-proxy does; with none at all: refused.
    sp.endpoints.retain(|e| !e.local);
    let m = by_set(&service_elements(&sp));
    assert_eq!(m[names::NO_LOCAL_ENDPOINT_SERVICES], 2);
    assert!(!m.contains_key(names::NO_ENDPOINT_SERVICES));
    assert_eq!(
        m["cluster-ips-1"], 2,
        "pods and this node still get through"
    );
    sp.endpoints.clear();
    let m = by_set(&service_elements(&sp));
    assert_eq!(m[names::NO_ENDPOINT_SERVICES], 3);
    assert!(!m.contains_key(names::LOCAL_POLICY_IPS));
}

fn services(n: usize, eps_each: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| {
            let vip = Ipv4Addr::from(0x0a60_0000 + i as u32).to_string();
            let mut sp = test_port("ns", &format!("s{i}"), "", &vip, &[]);
            sp.endpoints = (0..eps_each)
                .map(|j| Endpoint {
                    ip: Ipv4Addr::from(0x0af4_0000 + (i * eps_each + j) as u32),
                    port: 8080,
                    local: false,
                })
                .collect();
            sp
        })
        .collect()
}

fn fake_syncer() -> (Arc<RecordingNfTables>, NftSyncer) {
    let fake = Arc::new(RecordingNfTables::new());
    let s = NftSyncer::new(fake.clone(), node());
    (fake, s)
}

#[test]
fn at_10000_services_one_endpoint_change_is_only_element_changes() {
    let (fake, mut s) = fake_syncer();
    let mut desired = services(10_000, 5);
    let o = s.sync(&desired).expect("full sync");
    assert!(o.full);
    let first = fake.batches();
    assert_eq!(first.len(), 1, "a full sync is one transaction");
    assert!(!first[0].only_elements());

    desired[4321].endpoints[2].ip = "10.250.0.1".parse().unwrap();
    let start = Instant::now();
    let o = s.sync(&desired).expect("partial sync");
    let took = start.elapsed();
    assert!(!o.full);
    let batches = fake.batches();
    assert_eq!(batches.len(), 2);
    let b = &batches[1];
    assert!(b.only_elements(), "{:?}", b.ops());
    // The slot's value changed (delete + add) and the hairpin set swapped
    // one address for another: four elements in four messages.
    assert_eq!(o.elements_changed, 4, "{:?}", b.ops());
    assert_eq!(b.ops().len(), 4, "{:?}", b.ops());
    eprintln!("partial sync at 10k Services against the fake: {took:?}");

    // Nothing changed: nothing sent.
    let o = s.sync(&desired).expect("idle sync");
    assert!(!o.restored);
    assert_eq!(fake.batches().len(), 2);
}

#[test]
fn a_reordered_view_with_one_change_sends_only_that_change() {
    let (fake, mut s) = fake_syncer();
    let mut desired = services(50, 2);
    s.sync(&desired).unwrap();
    desired.reverse();
    desired[7].endpoints[0].ip = "10.250.0.9".parse().unwrap();
    let o = s.sync(&desired).unwrap();
    // The slot's value (delete + add) and one hairpin address out, one in.
    assert_eq!(o.elements_changed, 4);
    // Back in order (the fast path), the same change undone.
    desired.reverse();
    desired[42].endpoints[0].ip = Ipv4Addr::from(0x0af4_0000 + 42 * 2);
    assert_eq!(s.sync(&desired).unwrap().elements_changed, 4);
    assert_eq!(fake.elements(&table(), names::HAIRPIN).unwrap().len(), 100);
    assert!(s.sync(&desired).unwrap().elements_changed == 0);
}

/// Each set's elements, sorted, as text (to compare two tables).
fn dump(fake: &RecordingNfTables, sets: &[&str]) -> Vec<(String, Vec<String>)> {
    sets.iter()
        .map(|set| {
            let mut v: Vec<String> = fake
                .elements(&table(), set)
                .unwrap()
                .iter()
                .map(|e| format!("{e:?}"))
                .collect();
            v.sort();
            (set.to_string(), v)
        })
        .collect()
}

#[test]
fn a_partial_sync_of_named_services_writes_what_a_full_one_would() {
    let ports = services(30, 1);
    let mut view = group(&ports);
    let (fake, mut s) = fake_syncer();
    assert!(s.sync_changed(&view, &BTreeSet::new()).unwrap().full);
    let key = |sp: &ServicePort| (sp.name.namespace.clone(), sp.name.name.clone());
    let mut changed = BTreeSet::new();
    // One Service goes, two come, one gets another endpoint and a second port.
    view.remove(&key(&ports[10]));
    changed.insert(key(&ports[10]));
    for (n, vip) in [("new-a", "10.96.9.1"), ("new-b", "10.96.9.2")] {
        let sp = test_port("ns", n, "", vip, &[("10.244.9.9", true)]);
        changed.insert(key(&sp));
        view.insert(key(&sp), vec![sp].into());
    }
    let mut more = ports[3].clone();
    more.endpoints.push(Endpoint {
        ip: "10.244.9.10".parse().unwrap(),
        port: 8080,
        local: false,
    });
    let mut second = more.clone();
    second.name.port = "metrics".into();
    second.port = 9090;
    changed.insert(key(&more));
    view.insert(key(&more), vec![more, second].into());
    let o = s.sync_changed(&view, &changed).unwrap();
    assert!(!o.full && fake.batches().last().unwrap().only_elements());

    let sets = [
        names::SERVICE_IPS,
        names::SERVICE_ENDPOINTS,
        names::HAIRPIN,
        names::NO_ENDPOINT_SERVICES,
        "service-ips-1",
        "service-ips-2",
    ];
    let (fresh, mut f) = fake_syncer();
    f.sync_changed(&view, &BTreeSet::new()).unwrap();
    assert_eq!(dump(&fake, &sets), dump(&fresh, &sets));
    assert_eq!(
        fake.elements(&table(), names::SERVICE_IPS).unwrap().len(),
        32
    );

    // Nothing changed: nothing sent, whatever the view holds.
    let before = fake.batches().len();
    let o = s.sync_changed(&view, &BTreeSet::new()).unwrap();
    assert_eq!(o.elements_changed, 0);
    assert!(fake.batches().len() <= before + 1);
}

#[test]
fn services_coming_and_going_are_elements_and_share_hairpin_entries() {
    let (fake, mut s) = fake_syncer();
    let a = test_port("ns", "a", "", "10.96.0.1", &[("10.244.1.2", true)]);
    let b = test_port("ns", "b", "", "10.96.0.2", &[("10.244.1.2", true)]);
    s.sync(std::slice::from_ref(&a)).unwrap();
    let o = s.sync(&[a.clone(), b.clone()]).unwrap();
    // b: in service-ips and its tier, one endpoint; the hairpin entry exists.
    assert_eq!(o.elements_changed, 3);
    let o = s.sync(std::slice::from_ref(&b)).unwrap();
    assert_eq!(o.elements_changed, 3, "a's go, the hairpin stays");
    let o = s.sync(&[]).unwrap();
    assert_eq!(o.elements_changed, 4);
    assert!(fake.batches()[1..].iter().all(|b| b.only_elements()));
    let left = fake.elements(&table(), names::HAIRPIN).unwrap();
    assert!(left.is_empty());
    assert!(fake
        .elements(&table(), names::SERVICE_IPS)
        .unwrap()
        .is_empty());
}

fn rules_added(b: &hostnet::nftables::Batch) -> usize {
    b.ops()
        .iter()
        .filter(|o| matches!(o, Op::AddRule { .. }))
        .count()
}

#[test]
fn a_new_affinity_timeout_adds_its_rules_once_and_services_using_it_are_elements() {
    let (fake, mut s) = fake_syncer();
    let mut desired = services(3, 2);
    s.sync(&desired).unwrap();
    desired[0].affinity_seconds = Some(600);
    desired[0].node_port = Some(30080);
    let o = s.sync(&desired).unwrap();
    assert!(!o.full);
    let b = fake.batches().pop().unwrap();
    assert_eq!(rules_added(&b), 2, "a ClusterIP and a NodePort record rule");
    let m = |set: &str| fake.elements(&table(), set).unwrap().len();
    assert_eq!(m(names::SERVICE_AFFINITY), 1);
    assert_eq!(m("service-affinity-600"), 1);
    assert_eq!(m("nodeport-affinity-600"), 1);

    // A second Service with the same timeout: elements only.
    desired[1].affinity_seconds = Some(600);
    s.sync(&desired).unwrap();
    assert!(fake.batches().pop().unwrap().only_elements());
    assert_eq!(m("service-affinity-600"), 2);

    // A full sync writes the rules of the timeouts in use only.
    desired[0].affinity_seconds = Some(60);
    desired[1].affinity_seconds = None;
    s.table.set_need_full();
    assert!(s.sync(&desired).unwrap().full);
    let b = fake.batches().pop().unwrap();
    let base = rules_added(&ruleset::skeleton(&node()));
    assert_eq!(rules_added(&b), base + 2);
    assert_eq!(m("service-affinity-60"), 1);
}

#[test]
fn a_deleted_table_is_noticed_and_rebuilt_by_the_next_sync() {
    let (fake, mut s) = fake_syncer();
    let desired = services(3, 2);
    s.sync(&desired).unwrap();
    assert!(s.check_canary());
    fake.remove_table(&table());
    assert!(!s.check_canary());
    assert!(s.next_is_full());
    let o = s.sync(&desired).unwrap();
    assert!(o.full);
    assert!(s.check_canary());
    assert_eq!(
        fake.elements(&table(), names::SERVICE_IPS).unwrap().len(),
        3
    );
}

#[test]
fn a_failed_transaction_makes_the_next_sync_full() {
    let (fake, mut s) = fake_syncer();
    let mut desired = services(2, 1);
    s.sync(&desired).unwrap();
    desired[0].endpoints.clear();
    fake.state.lock().unwrap().fail_next = Some(libc::ENOMEM);
    assert!(s.sync(&desired).is_err());
    assert!(s.next_is_full());
    assert!(s.sync(&desired).unwrap().full);
    assert_eq!(
        fake.elements(&table(), names::NO_ENDPOINT_SERVICES)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn cleanup_deletes_the_table_once() {
    let (fake, mut s) = fake_syncer();
    s.sync(&services(1, 1)).unwrap();
    assert!(cleanup(fake.as_ref()).unwrap());
    assert!(!cleanup(fake.as_ref()).unwrap());
    assert!(fake.table(&table()).unwrap().is_none());
}

// IPv6: table `ip6 kube-proxy`, the same design.

fn node6() -> NodeConfig {
    NodeConfig {
        cluster_cidr_v6: Some("fd00:10:244::/56".parse().expect("cidr")),
        ..node()
    }
}

fn port6(vip: &str, eps: &[&str]) -> ServicePort<Ipv6Addr> {
    let name = crate::rules::names::ServicePortName {
        namespace: "ns".into(),
        name: "web".into(),
        port: "http".into(),
    };
    let mut sp = ServicePort::new(name, Protocol::Tcp, vip.parse().expect("vip"), 80);
    sp.endpoints = eps
        .iter()
        .map(|ip| Endpoint {
            ip: ip.parse().expect("ip"),
            port: 8080,
            local: false,
        })
        .collect();
    sp
}

#[test]
fn an_ipv6_cluster_ip_is_the_same_elements_keyed_by_ipv6_addresses() {
    let mut sp = port6("fd00:96::10", &["fd00:10:244:1::2", "fd00:10:244:2::2"]);
    sp.node_port = Some(30080);
    let elems = service_elements(&sp);
    assert_eq!(
        by_set(&elems),
        counts(&[
            (names::SERVICE_IPS, 1),
            ("service-ips-2", 1),
            (names::SERVICE_ENDPOINTS, 2),
            (names::SERVICE_NODEPORTS, 1),
            ("service-nodeports-2", 1),
            (names::NODEPORT_ENDPOINTS, 2),
        ])
    );
    let slot1 = Value::of(&[
        Field::Ipv6("fd00:96::10".parse().unwrap()),
        Field::Proto(6),
        Field::Port(80),
        Field::Mark(1),
    ]);
    let to = Value::of(&[
        Field::Ipv6("fd00:10:244:2::2".parse().unwrap()),
        Field::Port(8080),
    ]);
    assert!(elems
        .iter()
        .any(|(_, k, v)| *k == slot1 && v.as_ref() == Some(&to)));
    // No endpoints: rejected, as for IPv4.
    let none = port6("fd00:96::11", &[]);
    assert_eq!(
        by_set(&service_elements(&none)),
        counts(&[(names::NO_ENDPOINT_SERVICES, 1)])
    );
}

#[test]
fn the_ipv6_skeleton_has_the_ipv4_rules_in_table_ip6_with_ipv6_keys() {
    use hostnet::nftables::{DataType, Expr, Family, Reject};
    let b = ruleset::skeleton_for::<Ipv6Addr>(&node6());
    let Op::AddTable(t) = &b.ops()[0] else {
        panic!("{:?}", b.ops()[0])
    };
    assert_eq!((t.family, t.name.as_str()), (Family::Ip6, "kube-proxy"));
    assert_eq!(
        rules_added(&b),
        rules_added(&ruleset::skeleton(&node())) + 2,
        "the IPv4 rules and a TCP reset for ClusterIPs and NodePorts without endpoints"
    );
    let key = |name: &str| ruleset::set_named_for::<Ipv6Addr>(name).key.0;
    assert_eq!(
        key(names::SERVICE_IPS),
        [
            DataType::Ipv6Addr,
            DataType::InetProto,
            DataType::InetService
        ]
    );
    assert_eq!(
        key(names::HAIRPIN),
        [DataType::Ipv6Addr, DataType::Ipv6Addr]
    );
    let exprs: Vec<&Expr> = b
        .ops()
        .iter()
        .filter_map(|o| match o {
            Op::AddRule { exprs, .. } => Some(exprs),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(exprs
        .iter()
        .any(|e| matches!(e, Expr::Reject(Reject::Icmp6PortUnreachable))));
    assert!(!exprs
        .iter()
        .any(|e| matches!(e, Expr::Reject(Reject::Icmp4PortUnreachable))));
    // Every DNAT reads a 16-byte address and the port right after it.
    let mut affinity = hostnet::nftables::Batch::new();
    ruleset::affinity_rules_for::<Ipv6Addr>(&mut affinity, 60);
    let dnats: Vec<(u8, u8)> = exprs
        .iter()
        .filter_map(|e| match e {
            Expr::Nat {
                family,
                addr: Some(a),
                port: Some(p),
                ..
            } => {
                assert_eq!(*family, Family::Ip6);
                Some((a.slot(), p.slot()))
            }
            _ => None,
        })
        .collect();
    assert!(!dnats.is_empty());
    assert!(
        dnats.iter().all(|(a, p)| *p == a + 4 && *p <= 15),
        "{dnats:?}"
    );
    // With localhost NodePorts (IPv4 only) no martian guard in ip6.
    let localhost = NodeConfig {
        localhost_nodeports: true,
        ..node6()
    };
    assert_eq!(
        rules_added(&ruleset::skeleton_for::<Ipv6Addr>(&localhost)),
        rules_added(&b)
    );
}

#[test]
fn the_ipv6_engine_syncs_element_changes_only_and_cleanup_removes_both_tables() {
    let fake = Arc::new(RecordingNfTables::new());
    let mut s6 = NftSyncer::<Ipv6Addr>::new(fake.clone(), node6());
    let mut desired = vec![port6("fd00:96::10", &["fd00:10:244:1::2"])];
    assert!(s6.sync(&desired).unwrap().full);
    desired[0].endpoints[0].ip = "fd00:10:244:1::3".parse().unwrap();
    let o = s6.sync(&desired).unwrap();
    assert!(!o.full);
    let batches = fake.batches();
    assert!(batches[1].only_elements(), "{:?}", batches[1].ops());
    // The slot's value and the hairpin address changed.
    assert_eq!(o.elements_changed, 4);
    assert!(fake
        .table(&ruleset::table_for::<Ipv6Addr>())
        .unwrap()
        .is_some());
    let mut s4 = NftSyncer::new(fake.clone(), node6());
    s4.sync(&services(1, 1)).unwrap();
    assert!(cleanup(fake.as_ref()).unwrap());
    assert!(fake
        .table(&ruleset::table_for::<Ipv6Addr>())
        .unwrap()
        .is_none());
    assert!(fake.table(&table()).unwrap().is_none());
}
