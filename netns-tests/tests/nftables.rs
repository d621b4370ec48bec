//! hostnet's nf_tables writer against the real kernel, each test in fresh
//! namespaces it creates: a table with chains, a set, a data map and a
//! verdict map in one transaction, read back with `nft -j list ruleset`
//! inside the namespace and with our own reads; element changes; a refused
//! transaction that leaves nothing behind; and a dnat through a
//! `numgen random mod 2` map that reaches listeners in another namespace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostnet::nftables::{
    ct_state, Batch, Chain, ChainType, DataType, Elem, Expr, Family, Field, Hook, KeyType,
    LookupDest, MapData, MetaKey, NatKind, NfTables, NfTablesSocket, Reg, Set, Table, Value,
    Verdict,
};
use netns_tests::{require_root, TestNs};
use serde_json::Value as Json;

fn table() -> Table {
    Table::new(Family::Inet, "knode-test")
}

fn services() -> Set {
    Set::new(
        "services",
        &[
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
    )
}

fn endpoints() -> Set {
    Set::map(
        "endpoints",
        &[DataType::Ipv4Addr, DataType::InetService, DataType::Mark],
        MapData::Value(KeyType(vec![DataType::Ipv4Addr, DataType::InetService])),
    )
}

fn dispatch() -> Set {
    Set::map("dispatch", &[DataType::Ipv4Addr], MapData::Verdict)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

fn svc(addr: &str, port: u16) -> Value {
    Value::of(&[Field::Ipv4(ip(addr)), Field::Proto(6), Field::Port(port)])
}

/// `ip daddr . th dport . numgen random mod k` → endpoint map key.
fn slot(addr: &str, port: u16, n: u32) -> Value {
    Value::of(&[Field::Ipv4(ip(addr)), Field::Port(port), Field::Mark(n)])
}

fn endpoint(addr: &str, port: u16) -> Value {
    Value::of(&[Field::Ipv4(ip(addr)), Field::Port(port)])
}

/// The proxy's shape in miniature: a dnat chain in `hook` that sends
/// `ip daddr . th dport` with a random slot (mod `k`) through @endpoints.
fn ruleset(hook: Hook, k: u32) -> Batch {
    let t = table();
    let key = endpoints().key;
    let regs = key.registers(Reg::R1);
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&t, Chain::base("nat-out", ChainType::Nat, hook, -100))
        .add_chain(&t, Chain::regular("mark-masq"))
        .add_set(&t, services())
        .add_set(&t, endpoints())
        .add_set(&t, dispatch());
    let mut exprs = Expr::nfproto(Family::Ip).to_vec();
    exprs.extend([
        Expr::meta(MetaKey::L4Proto, Reg::R1),
        Expr::cmp_eq(Reg::R1, &[6]),
        Expr::ip_daddr(regs[0]),
        Expr::th_dport(regs[1]),
        Expr::NumgenRandom {
            dreg: regs[2],
            modulus: k,
            offset: 0,
        },
        Expr::Lookup {
            set: "endpoints".into(),
            sreg: Reg::R1,
            dreg: Some(LookupDest::Data(Reg::R1)),
            invert: false,
        },
        Expr::Counter,
        Expr::Nat {
            kind: NatKind::Dnat,
            family: Family::Ip,
            addr: Some(Reg::R1),
            port: Some(Reg::new(1)),
            fully_random: false,
        },
    ]);
    b.add_rule(&t, "nat-out", exprs, Some("services"));
    let mut est = Expr::ct_state_in(ct_state::ESTABLISHED | ct_state::RELATED).to_vec();
    est.push(Expr::Verdict(Verdict::Accept));
    b.add_rule(&t, "mark-masq", est, None);
    b.add_rule(
        &t,
        "mark-masq",
        vec![
            Expr::Immediate {
                dreg: Reg::R1,
                data: Value::of(&[Field::Mark(0x4000)]),
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: Reg::R1,
            },
            Expr::Verdict(Verdict::Return),
        ],
        None,
    );
    b
}

/// `nft -j list ruleset` in `ns`, as the list under "nftables".
fn nft_json(ns: &TestNs) -> Result<Vec<Json>> {
    let out = ns.sh(&["nft", "-j", "list", "ruleset"])?;
    let v: Json = serde_json::from_str(&out).context("nft -j output")?;
    Ok(v["nftables"].as_array().cloned().unwrap_or_default())
}

/// The objects of kind `kind` ("set", "map", "chain", "rule") in the listing.
fn objects<'a>(list: &'a [Json], kind: &str) -> Vec<&'a Json> {
    list.iter().filter_map(|o| o.get(kind)).collect()
}

fn named<'a>(list: &'a [Json], kind: &str, name: &str) -> Result<&'a Json> {
    objects(list, kind)
        .into_iter()
        .find(|o| o["name"] == name)
        .with_context(|| format!("{kind} {name} not in nft's listing"))
}

fn nft_present() -> bool {
    netns_tests::require(
        "nftables",
        std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "nft",
        "scripts/bootstrap.sh installs nftables",
    )
}

#[test]
fn one_transaction_creates_what_nft_lists() -> Result<()> {
    if !require_root("one_transaction_creates_what_nft_lists") || !nft_present() {
        return Ok(());
    }
    let ns = TestNs::new("nft")?;
    let nft = ns.run(NfTablesSocket::open)??;
    let t = table();
    let mut b = ruleset(Hook::Prerouting, 2);
    b.add_elements(&t, &services(), vec![Elem::key(svc("10.96.0.10", 80))])
        .add_elements(
            &t,
            &endpoints(),
            vec![
                Elem::map(slot("10.96.0.10", 80, 0), endpoint("10.244.1.5", 8080)),
                Elem::map(slot("10.96.0.10", 80, 1), endpoint("10.244.2.7", 8080)),
            ],
        )
        .add_elements(
            &t,
            &dispatch(),
            vec![Elem::verdict(
                Value::of(&[Field::Ipv4(ip("10.96.0.10"))]),
                Verdict::Jump("mark-masq".into()),
            )],
        );
    nft.apply(&b)?;

    let list = nft_json(&ns)?;
    let set = named(&list, "set", "services")?;
    assert_eq!(
        set["type"],
        serde_json::json!(["ipv4_addr", "inet_proto", "inet_service"])
    );
    assert_eq!(
        set["elem"],
        serde_json::json!([{"concat": ["10.96.0.10", "tcp", 80]}]),
        "{set}"
    );
    let map = named(&list, "map", "endpoints")?;
    assert_eq!(
        map["type"],
        serde_json::json!(["ipv4_addr", "inet_service", "mark"])
    );
    assert_eq!(map["map"], "ipv4_addr . inet_service");
    assert_eq!(
        map["elem"],
        serde_json::json!([
            [{"concat": ["10.96.0.10", 80, 0]}, {"concat": ["10.244.1.5", 8080]}],
            [{"concat": ["10.96.0.10", 80, 1]}, {"concat": ["10.244.2.7", 8080]}],
        ]),
        "{map}"
    );
    let vmap = named(&list, "map", "dispatch")?;
    assert_eq!(vmap["map"], "verdict");
    assert_eq!(
        vmap["elem"],
        serde_json::json!([["10.96.0.10", {"jump": {"target": "mark-masq"}}]])
    );
    let chain = named(&list, "chain", "nat-out")?;
    assert_eq!(
        (
            &chain["type"],
            &chain["hook"],
            &chain["prio"],
            &chain["policy"]
        ),
        (
            &Json::from("nat"),
            &Json::from("prerouting"),
            &Json::from(-100),
            &Json::from("accept")
        )
    );
    let rules = objects(&list, "rule");
    assert_eq!(rules.len(), 3, "{rules:?}");
    let dnat = rules
        .iter()
        .find(|r| r["chain"] == "nat-out")
        .context("dnat rule")?;
    assert_eq!(dnat["comment"], "services");
    let exprs = dnat["expr"].to_string();
    for want in [
        r#""numgen":{"mod":2"#,
        r#""dnat":{"#,
        r#""@endpoints""#,
        r#""counter""#,
    ] {
        assert!(exprs.contains(want), "{want} not in {exprs}");
    }
    let masq = rules
        .iter()
        .filter(|r| r["chain"] == "mark-masq")
        .map(|r| r["expr"].to_string())
        .collect::<Vec<_>>();
    assert!(masq[0].contains(r#"["established","related"]"#), "{masq:?}");
    assert!(masq[1].contains(r#""mangle":{"key":{"meta":{"key":"mark"}},"value":16384}"#));

    // Our own reads see the same.
    let info = nft.table(&t)?.context("table exists")?;
    assert!(info.use_count >= 5, "{info:?}");
    let chains: BTreeSet<String> = nft.chains(&t)?.into_iter().map(|c| c.name).collect();
    assert_eq!(
        chains,
        BTreeSet::from(["mark-masq".into(), "nat-out".into()])
    );
    let mut got = nft.elements(&t, "endpoints")?;
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        got,
        vec![
            Elem::map(slot("10.96.0.10", 80, 0), endpoint("10.244.1.5", 8080)),
            Elem::map(slot("10.96.0.10", 80, 1), endpoint("10.244.2.7", 8080)),
        ]
    );
    assert_eq!(
        nft.elements(&t, "dispatch")?,
        vec![Elem::verdict(
            Value::of(&[Field::Ipv4(ip("10.96.0.10"))]),
            Verdict::Jump("mark-masq".into())
        )]
    );

    // A full sync: delete + recreate in one transaction gives a new table.
    let mut again = Batch::new();
    again.delete_table(&t);
    for op in ruleset(Hook::Prerouting, 2).ops() {
        again.push(op.clone());
    }
    nft.apply(&again)?;
    let after = nft.table(&t)?.context("table recreated")?;
    assert_ne!(
        after.handle, info.handle,
        "a recreated table has a new handle"
    );
    assert!(nft.elements(&t, "endpoints")?.is_empty());
    nft.apply(Batch::new().delete_table(&t))?;
    assert_eq!(nft.table(&t)?, None);
    Ok(())
}

#[test]
fn elements_come_and_go_and_a_refused_transaction_leaves_nothing() -> Result<()> {
    let test = "elements_come_and_go_and_a_refused_transaction_leaves_nothing";
    if !require_root(test) || !nft_present() {
        return Ok(());
    }
    let ns = TestNs::new("nft")?;
    let nft = ns.run(NfTablesSocket::open)??;
    let t = table();
    nft.apply(&ruleset(Hook::Output, 2))?;
    let a = Elem::map(slot("10.96.0.1", 443, 0), endpoint("10.244.0.2", 6443));
    let b = Elem::map(slot("10.96.0.1", 443, 1), endpoint("10.244.0.3", 6443));
    let mut add = Batch::new();
    add.create_elements(&t, &endpoints(), vec![a.clone()]);
    assert!(add.only_elements());
    nft.apply(&add)?;

    // b is fine, a exists: the kernel refuses the whole transaction and
    // the error names the message it refused.
    let mut both = Batch::new();
    both.create_elements(&t, &endpoints(), vec![b.clone()])
        .create_elements(&t, &endpoints(), vec![a.clone()]);
    let err = nft.apply(&both).expect_err("a duplicate with create");
    assert_eq!(err.errno(), Some(libc::EEXIST));
    let msg = err.to_string();
    assert!(
        msg.starts_with("add element to map knode-test/endpoints: EEXIST"),
        "{msg}"
    );
    assert_eq!(
        nft.elements(&t, "endpoints")?,
        vec![a.clone()],
        "b was not added"
    );

    // add (not create) is idempotent; delete removes.
    nft.apply(Batch::new().add_elements(&t, &endpoints(), vec![a.clone(), b.clone()]))?;
    assert_eq!(nft.elements(&t, "endpoints")?.len(), 2);
    nft.apply(Batch::new().delete_elements(&t, &endpoints(), vec![a.clone()]))?;
    let list = nft_json(&ns)?;
    assert_eq!(
        named(&list, "map", "endpoints")?["elem"],
        serde_json::json!([[{"concat": ["10.96.0.1", 443, 1]}, {"concat": ["10.244.0.3", 6443]}]])
    );
    // Deleting what is gone is refused, naming the set.
    let err = nft
        .apply(Batch::new().delete_elements(&t, &endpoints(), vec![a]))
        .expect_err("delete a missing element");
    assert!(
        err.to_string()
            .starts_with("delete element from map knode-test/endpoints: ENOENT"),
        "{err}"
    );
    // A rule in a missing chain names the rule's chain.
    let err = nft
        .apply(Batch::new().add_rule(&t, "nope", vec![Expr::Counter], None))
        .expect_err("a rule in a missing chain");
    assert!(
        err.to_string()
            .starts_with("add rule to chain knode-test/nope: ENOENT"),
        "{err}"
    );
    Ok(())
}

/// Accepts connections on `port` of `addr` inside `ns` until `stop`
/// closes, answering each with the port; returns how many it served.
fn serve(ns: &TestNs, addr: Ipv4Addr, port: u16, ready: mpsc::Sender<()>) -> Result<usize> {
    ns.run(move || -> Result<usize> {
        let l = TcpListener::bind((addr, port))?;
        l.set_nonblocking(true)?;
        ready.send(()).ok();
        let mut served = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false)?;
                    let mut b = [0u8; 4];
                    if c.read(&mut b)? == 4 && &b == b"quit" {
                        return Ok(served);
                    }
                    c.write_all(port.to_string().as_bytes())?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(served)
    })?
}

#[test]
fn dnat_through_a_numgen_map_reaches_both_endpoints() -> Result<()> {
    if !require_root("dnat_through_a_numgen_map_reaches_both_endpoints") {
        return Ok(());
    }
    // client (10.99.0.1) --veth-- server (10.99.0.2, ports 8080 and 8081)
    let client = TestNs::new("nftc")?;
    let server = TestNs::new("nfts")?;
    client.sh(&[
        "ip", "link", "add", "c0", "type", "veth", "peer", "name", "s0",
    ])?;
    client.sh(&["ip", "link", "set", "s0", "netns", server.name()])?;
    client.sh(&["ip", "addr", "add", "10.99.0.1/24", "dev", "c0"])?;
    client.sh(&["ip", "link", "set", "c0", "up"])?;
    // The service range routes to the server's link: only test namespaces.
    client.sh(&["ip", "route", "add", "10.96.0.0/12", "dev", "c0"])?;
    server.sh(&["ip", "addr", "add", "10.99.0.2/24", "dev", "s0"])?;
    server.sh(&["ip", "link", "set", "s0", "up"])?;

    let nft = client.run(NfTablesSocket::open)??;
    let t = table();
    let mut b = ruleset(Hook::Output, 2);
    b.add_elements(
        &t,
        &endpoints(),
        vec![
            Elem::map(slot("10.96.0.10", 80, 0), endpoint("10.99.0.2", 8080)),
            Elem::map(slot("10.96.0.10", 80, 1), endpoint("10.99.0.2", 8081)),
        ],
    );
    nft.apply(&b)?;

    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| -> Result<()> {
        let servers: Vec<_> = [8080, 8081]
            .map(|port| {
                let tx = tx.clone();
                let server = &server;
                s.spawn(move || serve(server, ip("10.99.0.2"), port, tx))
            })
            .into();
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5))?;
        }
        let answers = client.run(|| -> Result<Vec<String>> {
            let vip: SocketAddr = "10.96.0.10:80".parse()?;
            (0..40)
                .map(|_| {
                    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                    c.write_all(b"ping")?;
                    let mut s = String::new();
                    c.read_to_string(&mut s)?;
                    Ok(s)
                })
                .collect()
        })??;
        // Stop the listeners (directly, not through the service).
        client.run(|| {
            for port in [8080, 8081] {
                if let Ok(mut c) = TcpStream::connect(("10.99.0.2", port)) {
                    let _ = c.write_all(b"quit");
                }
            }
        })?;
        let served: Vec<usize> = servers
            .into_iter()
            .map(|h| h.join().expect("server thread"))
            .collect::<Result<_>>()?;
        let distinct: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
        assert_eq!(distinct, BTreeSet::from(["8080", "8081"]), "{answers:?}");
        assert_eq!(served.iter().sum::<usize>(), 40, "{served:?}");
        Ok(())
    })?;

    // An endpoint removed is an element removed: the slot now misses and
    // the other endpoint keeps answering.
    nft.apply(Batch::new().delete_elements(
        &t,
        &endpoints(),
        vec![Elem::key(slot("10.96.0.10", 80, 1))],
    ))?;
    let remaining = nft.elements(&t, "endpoints")?;
    assert_eq!(remaining.len(), 1);
    Ok(())
}

/// Median and worst of `runs` timings of `apply(i)`, in milliseconds.
fn timed(runs: u32, mut apply: impl FnMut(u32) -> Result<()>) -> Result<(f64, f64)> {
    let mut ms = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        apply(i)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[ms.len() - 1]))
}

/// A dispatch rule: `ip daddr <n> th dport 80 counter jump target`.
fn dispatch_rule(n: u32) -> Vec<Expr> {
    let mut e = Expr::nfproto(Family::Ip).to_vec();
    e.extend([
        Expr::ip_daddr(Reg::R1),
        Expr::cmp_eq(Reg::R1, &Ipv4Addr::from(0x0a60_0000 + n).octets()),
        Expr::th_dport(Reg::R1),
        Expr::cmp_eq(Reg::R1, &80u16.to_be_bytes()),
        Expr::Counter,
        Expr::Verdict(Verdict::Jump("target".into())),
    ]);
    e
}

/// The figures behind docs/services.md "nftables writer": one element
/// added to a map of 50,000 versus one rule added to a table of 10,000
/// rules (and both at a small size). A measurement, not a check: run with
/// `cargo test -p netns-tests --test nftables -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it by name with --ignored --nocapture"]
fn measure_one_element_vs_one_rule() -> Result<()> {
    if !require_root("measure_one_element_vs_one_rule") {
        return Ok(());
    }
    for (elements, rules) in [(100, 10), (50_000, 10_000)] {
        let ns = TestNs::new("nftm")?;
        let nft = ns.run(NfTablesSocket::open)??;
        let t = table();
        let mut b = ruleset(Hook::Prerouting, 1);
        b.add_chain(
            &t,
            Chain::base("dispatch", ChainType::Nat, Hook::Output, -100),
        )
        .add_chain(&t, Chain::regular("target"))
        .add_rule(&t, "target", vec![Expr::Counter], None);
        let fill = (0..elements)
            .map(|i| {
                let a = Ipv4Addr::from(0x0a60_0000 + i);
                Elem::map(
                    Value::of(&[Field::Ipv4(a), Field::Port(80), Field::Mark(0)]),
                    Value::of(&[Field::Ipv4(a), Field::Port(8080)]),
                )
            })
            .collect();
        b.add_elements(&t, &endpoints(), fill);
        for n in 0..rules {
            b.add_rule(&t, "dispatch", dispatch_rule(n), None);
        }
        let start = Instant::now();
        nft.apply(&b)?;
        let fill_ms = start.elapsed().as_secs_f64() * 1e3;

        let (elem_p50, elem_max) = timed(50, |i| {
            let a = Ipv4Addr::from(0x0b00_0000 + i);
            let e = Elem::map(
                Value::of(&[Field::Ipv4(a), Field::Port(80), Field::Mark(0)]),
                Value::of(&[Field::Ipv4(a), Field::Port(8080)]),
            );
            Ok(nft.apply(Batch::new().add_elements(&t, &endpoints(), vec![e]))?)
        })?;
        let (rule_p50, rule_max) = timed(50, |i| {
            let rule = dispatch_rule(rules + i);
            Ok(nft.apply(Batch::new().add_rule(&t, "dispatch", rule, None))?)
        })?;
        assert_eq!(nft.elements(&t, "endpoints")?.len(), elements as usize + 50);
        println!(
            "map of {elements} elements, table of {rules} rules (built in {fill_ms:.0} ms): \
             add 1 element p50 {elem_p50:.2} ms (max {elem_max:.2}); \
             add 1 rule p50 {rule_p50:.2} ms (max {rule_max:.2})"
        );
    }
    Ok(())
}

#[test]
fn every_expression_kind_is_accepted_and_listed() -> Result<()> {
    if !require_root("every_expression_kind_is_accepted_and_listed") || !nft_present() {
        return Ok(());
    }
    use hostnet::nftables::{CmpOp, CtKey, Reject, SetFlags};
    let ns = TestNs::new("nftx")?;
    let nft = ns.run(NfTablesSocket::open)??;
    let t = Table::new(Family::Inet, "knode-exprs");
    let allowed = Set::new("allowed", &[DataType::Ipv4Addr]).with_flags(SetFlags {
        interval: true,
        ..SetFlags::default()
    });
    let recent =
        Set::new("recent", &[DataType::Ipv4Addr, DataType::InetService]).with_flags(SetFlags {
            timeout: true,
            ..SetFlags::default()
        });
    let mut pinned =
        Set::new("pinned", &[DataType::Ipv4Addr, DataType::InetService]).with_flags(SetFlags {
            timeout: true,
            dynamic: true,
            ..SetFlags::default()
        });
    pinned.size = Some(1024);
    let v4 = |s: &str| Value::of(&[Field::Ipv4(ip(s))]);
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&t, Chain::base("input", ChainType::Filter, Hook::Input, 0))
        .add_chain(
            &t,
            Chain::base("raw", ChainType::Filter, Hook::Prerouting, -300),
        )
        .add_chain(
            &t,
            Chain::base("post", ChainType::Nat, Hook::Postrouting, 100),
        )
        .add_chain(&t, Chain::regular("policy"))
        .add_set(&t, allowed.clone())
        .add_set(&t, recent.clone())
        .add_set(&t, pinned)
        .add_elements(
            &t,
            &allowed,
            vec![Elem::range(v4("10.244.0.0"), v4("10.244.255.255"))],
        )
        .add_elements(
            &t,
            &recent,
            vec![
                Elem::key(Value::of(&[Field::Ipv4(ip("10.0.0.9")), Field::Port(53)]))
                    .with_timeout(Duration::from_secs(600)),
            ],
        );
    let lo = Value::of(&[Field::IfName("lo")]);
    let rules: Vec<(&str, Vec<Expr>)> = vec![
        (
            "input",
            vec![
                Expr::meta(MetaKey::IifName, Reg::R1),
                Expr::cmp_eq(Reg::R1, &lo.0),
                Expr::Verdict(Verdict::Accept),
            ],
        ),
        ("input", vec![Expr::Verdict(Verdict::Goto("policy".into()))]),
        ("policy", {
            let mut e = Expr::nfproto(Family::Ip).to_vec();
            e.extend([
                Expr::ip_saddr(Reg::R1),
                Expr::Lookup {
                    set: "allowed".into(),
                    sreg: Reg::R1,
                    dreg: None,
                    invert: true,
                },
                Expr::meta(MetaKey::L4Proto, Reg::R1),
                Expr::cmp_eq(Reg::R1, &[6]),
                Expr::Reject(Reject::TcpReset),
            ]);
            e
        }),
        (
            "policy",
            [
                Expr::nfproto(Family::Ip6).to_vec(),
                vec![
                    Expr::ip6_daddr(Reg::R1),
                    Expr::cmp_eq(Reg::R1, &"fd00::a".parse::<std::net::Ipv6Addr>()?.octets()),
                    Expr::Verdict(Verdict::Drop),
                ],
            ]
            .concat(),
        ),
        ("policy", vec![Expr::Reject(Reject::PortUnreachable)]),
        (
            "raw",
            [
                Expr::nfproto(Family::Ip).to_vec(),
                vec![
                    Expr::ip_daddr(Reg::R1),
                    Expr::Cmp {
                        sreg: Reg::R1,
                        op: CmpOp::Eq,
                        data: ip("169.254.20.10").octets().to_vec(),
                    },
                    Expr::Notrack,
                    Expr::Verdict(Verdict::Continue),
                ],
            ]
            .concat(),
        ),
        (
            "post",
            vec![
                Expr::Ct {
                    key: CtKey::Mark,
                    dreg: Reg::R1,
                },
                Expr::cmp_eq(Reg::R1, &0x4000u32.to_ne_bytes()),
                Expr::Masquerade { fully_random: true },
            ],
        ),
        (
            "post",
            vec![
                Expr::Immediate {
                    dreg: Reg::R1,
                    data: Value::of(&[Field::Mark(1)]),
                },
                Expr::CtSet {
                    key: CtKey::Mark,
                    sreg: Reg::R1,
                },
                Expr::Immediate {
                    dreg: Reg::R1,
                    data: v4("10.99.0.1"),
                },
                Expr::Nat {
                    kind: NatKind::Snat,
                    family: Family::Ip,
                    addr: Some(Reg::R1),
                    port: None,
                    fully_random: false,
                },
            ],
        ),
        (
            "post",
            vec![
                Expr::ip_saddr(Reg::R1),
                Expr::CtOriginal {
                    key: CtKey::ProtoDst,
                    dreg: Reg::new(1),
                },
                Expr::Dynset {
                    set: "pinned".into(),
                    sreg_key: Reg::R1,
                    sreg_data: None,
                    timeout: Some(Duration::from_secs(60)),
                },
            ],
        ),
    ];
    for (chain, exprs) in rules {
        b.add_rule(&t, chain, exprs, None);
    }
    nft.apply(&b)?;

    let list = nft_json(&ns)?;
    let rules = objects(&list, "rule")
        .iter()
        .map(|r| r["expr"].to_string())
        .collect::<Vec<_>>()
        .join("\n");
    // serde_json prints object keys sorted.
    for want in [
        r#"{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"lo"}}"#,
        r#"{"goto":{"target":"policy"}}"#,
        r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":"@allowed"}}"#,
        r#"{"reject":{"type":"tcp reset"}}"#,
        r#"{"match":{"left":{"payload":{"field":"daddr","protocol":"ip6"}},"op":"==","right":"fd00::a"}},{"drop":null}"#,
        r#"{"reject":{"expr":"port-unreachable","type":"icmpx"}}"#,
        r#"{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"169.254.20.10"}}"#,
        r#"{"notrack":null}"#,
        r#"{"continue":null}"#,
        r#"{"match":{"left":{"ct":{"key":"mark"}},"op":"==","right":16384}}"#,
        r#"{"masquerade":{"flags":"fully-random"}}"#,
        r#"{"mangle":{"key":{"ct":{"key":"mark"}},"value":1}}"#,
        r#"{"snat":{"addr":"10.99.0.1","family":"ip"}}"#,
        r#"{"ct":{"dir":"original","key":"proto-dst"}}"#,
        r#""op":"update""#,
        r#""set":"@pinned""#,
    ] {
        assert!(rules.contains(want), "{want} not in\n{rules}");
    }
    let allowed = named(&list, "set", "allowed")?;
    assert_eq!(
        allowed["elem"],
        serde_json::json!([{"prefix": {"addr": "10.244.0.0", "len": 16}}])
    );
    let recent = named(&list, "set", "recent")?;
    assert_eq!(recent["elem"][0]["elem"]["timeout"], 600, "{recent}");
    Ok(())
}
