//! The sync engine against the recording fake: full then partial syncs,
//! the diff, stale chains, the canary, failures and UDP conntrack cleanup.

use super::*;
use crate::conntrack::{FakeConntrack, Flow};
use crate::iptables::{Call, FakeIptables};
use crate::rules::{ruleset, Table};

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "n1".into(),
        node_ips: vec!["192.0.2.1".parse().expect("ip")],
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        cluster_cidr_v6: None,
        masquerade_all: false,
        localhost_nodeports: false,
    }
}

fn port(name: &str, vip: &str, proto: Protocol, eps: &[&str]) -> ServicePort {
    let eps: Vec<(&str, bool)> = eps.iter().map(|ip| (*ip, true)).collect();
    ServicePort {
        protocol: proto,
        ..crate::view::test_port("default", name, "", vip, &eps)
    }
}

fn setup() -> (Arc<FakeIptables>, Syncer) {
    let fake = Arc::new(FakeIptables::new());
    let syncer = Syncer::new(fake.clone(), node());
    (fake, syncer)
}

/// The fake's tables hold exactly the desired chains (plus built-ins) with
/// exactly the desired rules.
fn assert_state(fake: &FakeIptables, desired: &[ServicePort]) {
    let want = ruleset(desired, &node());
    for c in &want.chains {
        assert_eq!(
            fake.chain(c.table, &c.name).as_ref(),
            Some(&c.rules),
            "chain {}",
            c.name
        );
    }
    for table in Table::ALL {
        for name in fake.chains(table) {
            let builtin = name.chars().all(|c| c.is_ascii_uppercase()) && !name.contains('-');
            assert!(
                builtin || want.chain(table, &name).is_some(),
                "stale chain {name} left in {table:?}"
            );
        }
    }
}

fn restores(fake: &FakeIptables) -> Vec<String> {
    fake.take_calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Restore(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn first_sync_is_full_then_only_changed_chains_are_written() {
    let (fake, mut s) = setup();
    let mut desired = vec![
        port(
            "a",
            "10.96.0.1",
            Protocol::Tcp,
            &["10.244.1.2", "10.244.1.3"],
        ),
        port("b", "10.96.0.2", Protocol::Tcp, &["10.244.1.4"]),
    ];
    let o = s.sync(&desired).expect("first sync");
    assert!(o.full && o.restored);
    assert_state(&fake, &desired);
    let first = restores(&fake);
    assert_eq!(first.len(), 1, "one restore per sync");
    assert!(first[0].contains(
        "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));

    // Nothing changed: no restore at all.
    let o = s.sync(&desired).expect("idle sync");
    assert!(!o.full && !o.restored);
    assert!(restores(&fake).is_empty());

    // One endpoint of `a` replaced: only a's SVC chain, the new SEP chain
    // and the deletion of the old one; KUBE-SERVICES is untouched.
    desired[0].endpoints[1].ip = "10.244.1.9".parse().expect("ip");
    let o = s.sync(&desired).expect("partial sync");
    assert!(!o.full);
    assert_eq!((o.chains_written, o.chains_deleted), (2, 1));
    let p = restores(&fake).remove(0);
    let svc_a = format!(
        "KUBE-SVC-{}",
        crate::rules::names::port_proto_hash("default/a", Protocol::Tcp)
    );
    assert!(p.contains(&format!(":{svc_a} - [0:0]")), "{p}");
    assert!(!p.contains(":KUBE-SERVICES"), "{p}");
    assert!(!p.contains("*filter"), "{p}");
    assert_eq!(p.matches("-X KUBE-SEP-").count(), 1, "{p}");
    assert_state(&fake, &desired);

    // `b` loses its endpoints: its chains go, KUBE-SERVICES (both tables)
    // is rewritten with a REJECT instead of the jump.
    desired[1].endpoints.clear();
    s.sync(&desired).expect("partial sync");
    let p = restores(&fake).remove(0);
    assert!(p.contains("*filter\n:KUBE-SERVICES - [0:0]"), "{p}");
    assert!(p.contains("has no endpoints"), "{p}");
    assert_state(&fake, &desired);

    // `a` deleted.
    desired.remove(0);
    s.sync(&desired).expect("partial sync");
    assert_state(&fake, &desired);
}

#[test]
fn a_flushed_table_is_noticed_by_the_canary_and_fully_restored() {
    let (fake, mut s) = setup();
    let desired = vec![port("a", "10.96.0.1", Protocol::Tcp, &["10.244.1.2"])];
    s.sync(&desired).expect("sync");
    assert!(s.check_canary());
    assert!(!s.next_is_full());
    // Nothing changed since: the stamps say so, no chain is listed.
    fake.take_calls();
    assert!(s.check_canary());
    assert_eq!(fake.take_calls(), []);

    fake.flush_table(Table::Nat); // iptables -t nat -F
    assert!(!s.check_canary());
    let o = s.sync(&desired).expect("resync");
    assert!(o.full);
    assert_state(&fake, &desired);
    let prerouting = fake.chain(Table::Nat, "PREROUTING").expect("PREROUTING");
    assert_eq!(prerouting.len(), 1, "jump re-inserted once: {prerouting:?}");
    assert!(s.check_canary());

    // A second full sync finds the jumps and does not insert them again.
    s.request_full();
    s.sync(&desired).expect("full");
    assert_eq!(
        fake.chain(Table::Nat, "PREROUTING").map(|r| r.len()),
        Some(1)
    );
}

#[test]
fn a_full_sync_deletes_stale_service_chains_it_never_wrote() {
    let (fake, mut s) = setup();
    fake.restore("*nat\n:KUBE-SVC-LEFTOVER0000000 - [0:0]\n:KUBE-SEP-LEFTOVER0000000 - [0:0]\n-A KUBE-SVC-LEFTOVER0000000 -j KUBE-SEP-LEFTOVER0000000\n:OTHER-CHAIN - [0:0]\nCOMMIT\n")
        .expect("seed");
    let desired = vec![port("a", "10.96.0.1", Protocol::Tcp, &["10.244.1.2"])];
    let o = s.sync(&desired).expect("sync");
    assert_eq!(o.chains_deleted, 2);
    assert!(fake.chain(Table::Nat, "KUBE-SVC-LEFTOVER0000000").is_none());
    assert!(
        fake.chain(Table::Nat, "OTHER-CHAIN").is_some(),
        "not ours: kept"
    );
}

#[test]
fn a_failed_restore_is_retried_as_a_full_sync() {
    let (fake, mut s) = setup();
    let mut desired = vec![port("a", "10.96.0.1", Protocol::Tcp, &["10.244.1.2"])];
    s.sync(&desired).expect("sync");
    fake.fail_restores(1);
    desired[0].endpoints[0].ip = "10.244.1.3".parse().expect("ip");
    assert!(s.sync(&desired).is_err());
    assert!(s.next_is_full());
    let o = s.sync(&desired).expect("retry");
    assert!(o.full);
    assert_state(&fake, &desired);
}

#[test]
fn a_zero_full_sync_period_makes_every_sync_full() {
    let fake = Arc::new(FakeIptables::new());
    let mut s = Syncer::new(fake.clone(), node()).with_full_sync_period(Duration::ZERO);
    let desired = vec![port("a", "10.96.0.1", Protocol::Tcp, &["10.244.1.2"])];
    assert!(s.sync(&desired).expect("sync").full);
    assert!(s.sync(&desired).expect("sync").full);
    assert_eq!(fake.restores().len(), 2);
}

#[test]
fn replacing_a_udp_endpoint_deletes_flows_to_the_old_one() {
    let flow = |reply: &str| Flow {
        proto: 17,
        orig_src: "10.244.1.50".parse().expect("ip"),
        orig_dst: "10.96.0.10".parse().expect("ip"),
        orig_sport: 5000,
        orig_dport: 80,
        reply_src: reply.parse().expect("ip"),
        reply_sport: 80,
        id: None,
        zone: None,
    };
    // Partial syncs, then every sync full (a periodic full sync must not
    // forget the flows of what it removes).
    for full_period in [DEFAULT_FULL_SYNC_PERIOD, Duration::ZERO] {
        let ct = Arc::new(FakeConntrack::with(vec![
            flow("10.244.1.2"),
            flow("10.244.1.3"),
        ]));
        let fake = Arc::new(FakeIptables::new());
        let mut s = Syncer::new(fake, node())
            .with_conntrack(ct.clone())
            .with_full_sync_period(full_period);
        let mut desired = vec![port(
            "dns",
            "10.96.0.10",
            Protocol::Udp,
            &["10.244.1.2", "10.244.1.3"],
        )];
        assert_eq!(s.sync(&desired).expect("sync").conntrack_deleted, 0);
        desired[0].endpoints.remove(0);
        let o = s.sync(&desired).expect("sync");
        assert_eq!(o.full, full_period.is_zero());
        assert_eq!(o.conntrack_deleted, 1);
        assert_eq!(ct.deleted(), vec![flow("10.244.1.2")]);
        // The Service deleted: the rest of its flows go too.
        let o = s.sync(&[]).expect("sync");
        assert_eq!(o.conntrack_deleted, 1, "full period {full_period:?}");
    }
}

#[test]
fn crossing_the_large_cluster_threshold_rewrites_everything_once() {
    let (fake, mut s) = setup();
    // 200 Services x 5 endpoints: exactly the threshold, comments kept.
    let mut desired: Vec<ServicePort> = (0..200u32)
        .map(|i| {
            let eps: Vec<String> = (0..5u32)
                .map(|e| std::net::Ipv4Addr::from(0x0af4_0000 + i * 5 + e).to_string())
                .collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            let vip = std::net::Ipv4Addr::from(0x0a60_0001 + i).to_string();
            port(&format!("s{i}"), &vip, Protocol::Tcp, &eps)
        })
        .collect();
    s.sync(&desired).expect("first sync");
    assert!(restores(&fake)[0].contains("--comment \"default/s0 -> "));

    // One more endpoint: large-cluster mode, so every endpoint rule
    // changes form and the sync is full.
    desired[0].endpoints.push(crate::view::Endpoint {
        ip: "10.245.0.1".parse().expect("ip"),
        port: 80,
        local: true,
    });
    let o = s.sync(&desired).expect("sync into large mode");
    assert!(o.full, "{o:?}");
    let p = restores(&fake).remove(0);
    assert!(!p.contains(" -> "), "no endpoint comments left");
    assert_state(&fake, &desired);

    // Steady in large mode: partial again.
    desired[1].endpoints[0].ip = "10.245.0.2".parse().expect("ip");
    let o = s.sync(&desired).expect("partial");
    assert!(!o.full);
    assert!(!restores(&fake)[0].contains(" -> "));
    assert_state(&fake, &desired);

    // Back under the threshold: full again, comments back.
    desired[0].endpoints.pop();
    desired[2].endpoints.pop();
    let o = s.sync(&desired).expect("sync out of large mode");
    assert!(o.full);
    assert!(restores(&fake)[0].contains("--comment \"default/s0 -> "));
    assert_state(&fake, &desired);
}
