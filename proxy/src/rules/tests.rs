//! The ruleset against kube-proxy's own golden output (lines copied from
//! its proxier tests, which use the same fixtures), plus affinity, traffic
//! policies, probabilities and hostile names.

use super::names::ServicePortName;
use super::*;
use crate::view::Protocol;

fn sp(ns: &str, name: &str, vip: &str, eps: &[(&str, bool)]) -> ServicePort {
    crate::view::test_port(ns, name, "p80", vip, eps)
}

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "node-1".into(),
        node_ips: vec![],
        cluster_cidr: Some("10.0.0.0/8".parse().expect("cidr")),
        cluster_cidr_v6: None,
        masquerade_all: false,
        localhost_nodeports: true,
    }
}

/// kube-proxy's TestOverallIPTablesRules services, less external and LB IPs.
fn fixture() -> Vec<ServicePort> {
    let svc1 = sp("ns1", "svc1", "172.30.0.41", &[("10.180.0.1", false)]);
    let svc2 = ServicePort {
        node_port: Some(3001),
        external_local: true,
        ..sp("ns2", "svc2", "172.30.0.42", &[("10.180.0.2", false)])
    };
    let svc3 = ServicePort {
        node_port: Some(3003),
        ..sp("ns3", "svc3", "172.30.0.43", &[("10.180.0.3", false)])
    };
    let svc4 = sp(
        "ns4",
        "svc4",
        "172.30.0.44",
        &[("10.180.0.4", false), ("10.180.0.5", true)],
    );
    let svc6 = sp("ns6", "svc6", "172.30.0.46", &[]);
    vec![svc1, svc2, svc3, svc4, svc6]
}

fn lines(r: &Ruleset, table: Table, chain: &str) -> Vec<String> {
    r.rules(table, chain).to_vec()
}

#[test]
fn matches_kube_proxy_golden_rules() {
    let r = ruleset(&fixture(), &node());
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-SERVICES"),
        [
            r#"-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O"#,
            r#"-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"#,
            r#"-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK"#,
            r#"-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK"#,
            r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"#,
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-NODEPORTS"),
        [
            "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT",
            "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-EXT-GNZBNJ2PO5MGZ6GT"),
        [
            r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"#,
            r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"#,
            r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"#,
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-EXT-X27LE4BHSL4DOUIK"),
        [
            r#"-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ"#,
            "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK",
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-SVC-4SW47YFZTEDKD3PK"),
        [
            r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#,
            r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC"#,
            r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ"#,
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        [
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-POSTROUTING"),
        [
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE"#,
        ]
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-MARK-MASQ"),
        ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    );
    assert_eq!(
        lines(&r, Table::Filter, "KUBE-SERVICES"),
        [
            r#"-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT"#
        ]
    );
    assert_eq!(
        lines(&r, Table::Filter, "KUBE-EXTERNAL-SERVICES"),
        [
            r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"#
        ]
    );
    assert_eq!(
        lines(&r, Table::Filter, "KUBE-FORWARD"),
        [
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT"#,
            r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"#,
        ]
    );
    assert_eq!(
        lines(&r, Table::Filter, "KUBE-FIREWALL"),
        [
            r#"-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"#
        ]
    );
    // No nat chains at all for the Service without endpoints; no SVL for
    // ns2 (its only endpoint is remote).
    let svc6 = ServicePortName {
        namespace: "ns6".into(),
        name: "svc6".into(),
        port: "p80".into(),
    };
    let hash = names::port_proto_hash(&svc6.to_string(), Protocol::Tcp);
    assert!(r.chains.iter().all(|c| !c.name.ends_with(&hash)));
    assert!(r.chain(Table::Nat, "KUBE-SVL-GNZBNJ2PO5MGZ6GT").is_none());
}

#[test]
fn probabilities_are_one_over_the_remaining_endpoints() {
    let eps: Vec<(String, bool)> = (1..=4).map(|i| (format!("10.1.0.{i}"), false)).collect();
    let eps: Vec<(&str, bool)> = eps.iter().map(|(ip, l)| (ip.as_str(), *l)).collect();
    let s = sp("ns", "web", "10.96.0.5", &eps);
    let r = ruleset(std::slice::from_ref(&s), &node());
    let hash = names::port_proto_hash("ns/web:p80", Protocol::Tcp);
    let probs: Vec<Option<String>> = lines(&r, Table::Nat, &format!("KUBE-SVC-{hash}"))
        .iter()
        .skip(1)
        .map(|l| {
            l.split("--probability ")
                .nth(1)
                .map(|p| p.split(' ').next().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(
        probs,
        [
            Some("0.2500000000".to_string()),
            Some("0.3333333333".to_string()),
            Some("0.5000000000".to_string()),
            None
        ]
    );
}

#[test]
fn client_ip_affinity_checks_then_records_per_endpoint() {
    let s = ServicePort {
        affinity_seconds: Some(10_800),
        ..sp("ns1", "svc1", "172.30.0.41", &[("10.180.0.1", false)])
    };
    let r = ruleset(&[s], &node());
    let svc = lines(&r, Table::Nat, "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        svc[1],
        r#"-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --rcheck --seconds 10800 --reap -j KUBE-SEP-SXIVWICOYRO3J4NJ"#
    );
    assert_eq!(
        lines(&r, Table::Nat, "KUBE-SEP-SXIVWICOYRO3J4NJ")[1],
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80"
    );
}

#[test]
fn external_local_balances_only_local_endpoints_without_masquerade() {
    let s = ServicePort {
        node_port: Some(30080),
        external_local: true,
        ..sp(
            "ns",
            "web",
            "10.96.0.7",
            &[("10.244.1.5", true), ("10.244.2.5", false)],
        )
    };
    let r = ruleset(&[s], &node());
    let h = names::port_proto_hash("ns/web:p80", Protocol::Tcp);
    let ext = lines(&r, Table::Nat, &format!("KUBE-EXT-{h}"));
    assert_eq!(
        ext.last().map(String::as_str),
        Some(format!("-A KUBE-EXT-{h} -j KUBE-SVL-{h}").as_str())
    );
    assert!(ext.iter().all(|l| !l.contains("masquerade traffic for")));
    let svl = lines(&r, Table::Nat, &format!("KUBE-SVL-{h}"));
    assert_eq!(svl.len(), 1, "{svl:?}");
    assert!(svl[0].contains("10.244.1.5:80"));
    // Cluster traffic still balances over both.
    assert_eq!(lines(&r, Table::Nat, &format!("KUBE-SVC-{h}")).len(), 3);
    assert!(r.rules(Table::Filter, "KUBE-EXTERNAL-SERVICES").is_empty());
}

#[test]
fn internal_local_without_local_endpoints_drops_cluster_ip_traffic() {
    let s = ServicePort {
        internal_local: true,
        ..sp("ns", "web", "10.96.0.8", &[("10.244.2.5", false)])
    };
    let r = ruleset(&[s], &node());
    assert_eq!(
        lines(&r, Table::Filter, "KUBE-SERVICES"),
        [
            r#"-A KUBE-SERVICES -m comment --comment "ns/web:p80 has no local endpoints" -m tcp -p tcp -d 10.96.0.8 --dport 80 -j DROP"#
        ]
    );
    assert!(lines(&r, Table::Nat, "KUBE-SERVICES")
        .iter()
        .all(|l| !l.contains("10.96.0.8")));

    let local = ServicePort {
        internal_local: true,
        ..sp(
            "ns",
            "web",
            "10.96.0.8",
            &[("10.244.1.5", true), ("10.244.2.5", false)],
        )
    };
    let r = ruleset(&[local], &node());
    let h = names::port_proto_hash("ns/web:p80", Protocol::Tcp);
    assert!(lines(&r, Table::Nat, "KUBE-SERVICES")[0].ends_with(&format!("-j KUBE-SVL-{h}")));
    assert!(r.chain(Table::Nat, &format!("KUBE-SVC-{h}")).is_none());
}

#[test]
fn internal_local_uses_this_nodes_terminating_endpoint_when_none_here_is_ready() {
    let draining = ServicePort {
        internal_local: true,
        local_fallback: sp("ns", "web", "10.96.0.8", &[("10.244.1.7", true)]).endpoints,
        ..sp("ns", "web", "10.96.0.8", &[("10.244.2.5", false)])
    };
    let r = ruleset(&[draining], &node());
    assert!(
        lines(&r, Table::Filter, "KUBE-SERVICES").is_empty(),
        "not dropped"
    );
    let h = names::port_proto_hash("ns/web:p80", Protocol::Tcp);
    let svl = lines(&r, Table::Nat, &format!("KUBE-SVL-{h}"));
    let sep = svl.last().and_then(|l| l.rsplit(' ').next()).expect("jump");
    let ep = lines(&r, Table::Nat, sep);
    assert!(
        ep.iter()
            .any(|l| l.contains("--to-destination 10.244.1.7:80")),
        "{ep:?}"
    );
}

#[test]
fn udp_sctp_and_masquerade_all_and_node_ips() {
    let mut udp = sp(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        &[("10.244.1.9", true)],
    );
    udp.name.port = "dns".into();
    udp.protocol = Protocol::Udp;
    udp.port = 53;
    let mut sctp = udp.clone();
    sctp.protocol = Protocol::Sctp;
    let n = NodeConfig {
        node_ips: vec!["192.0.2.1".parse().expect("ip")],
        masquerade_all: true,
        localhost_nodeports: false,
        ..node()
    };
    let r = ruleset(&[udp, sctp], &n);
    let nat = lines(&r, Table::Nat, "KUBE-SERVICES");
    assert!(
        nat[0].ends_with("-m udp -p udp -d 10.96.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU"),
        "{}",
        nat[0]
    );
    assert!(nat[1].contains("-m sctp -p sctp"));
    assert!(
        nat[2].ends_with("-d 192.0.2.1 -j KUBE-NODEPORTS"),
        "{}",
        nat[2]
    );
    assert_eq!(
        nat.len(),
        3,
        "no 127/8 dispatch without localhost NodePorts"
    );
    assert!(lines(&r, Table::Nat, "KUBE-SVC-TCOU7JCQXEZGVUNU")[0]
        .ends_with("--dport 53 -j KUBE-MARK-MASQ"));
    assert!(r.chain(Table::Filter, "KUBE-FIREWALL").is_none());
    assert!(builtin_jumps(&n)
        .iter()
        .all(|j| j.target != "KUBE-FIREWALL"));
}

/// iptables-restore's argument splitter (xshared.c `add_param_to_argv`):
/// whitespace separates, double quotes group, `\` escapes inside quotes.
fn restore_argv(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped, mut any) =
        (vec![], String::new(), false, false, false);
    for c in line.chars() {
        if quoted {
            if escaped {
                cur.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                any = true;
            }
            ' ' | '\t' => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            _ => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn hostile_names_stay_inside_one_comment_argument() {
    let evil_ns = "x\" -j ACCEPT -A INPUT -j ACCEPT \"\n-A INPUT -j ACCEPT\n#";
    let evil_port = "p\\\" -j DROP";
    let benign = sp("ns", "web", "10.96.0.9", &[("10.244.1.5", false)]);
    let mut evil = benign.clone();
    evil.name.namespace = evil_ns.into();
    evil.name.port = evil_port.into();
    let good = ruleset(&[benign], &node());
    let bad = ruleset(&[evil.clone()], &node());
    for (g, b) in good.chains.iter().zip(&bad.chains) {
        assert_eq!(g.rules.len(), b.rules.len());
        for (gl, bl) in g.rules.iter().zip(&b.rules) {
            assert!(!bl.contains('\n') && !bl.contains('\r'), "{bl:?}");
            let (ga, ba) = (restore_argv(gl), restore_argv(bl));
            assert_eq!(ga.len(), ba.len(), "{bl}");
            for (x, y) in ga.iter().zip(&ba) {
                if x.contains("ns/web") {
                    assert!(
                        y.contains("x\" -j ACCEPT -A INPUT -j ACCEPT \"?-A INPUT -j ACCEPT?#"),
                        "{y:?}"
                    );
                    assert!(y.contains("p\\\" -j DROP"), "{y:?}");
                } else if !x.starts_with("KUBE-SVC-") && !x.starts_with("KUBE-SEP-") {
                    assert_eq!(x, y, "only comments and hashed names differ: {bl}");
                }
            }
        }
    }
    // The evil name still hashes to ordinary chain names.
    let h = names::port_proto_hash(&evil.name.to_string(), Protocol::Tcp);
    assert!(h
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
}

#[test]
fn large_cluster_mode_drops_only_the_per_endpoint_comments() {
    let ep = |i: usize| {
        let ip =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0)) + i as u32);
        (ip.to_string(), false)
    };
    let per_service = 5;
    let make = |n: usize| -> Vec<ServicePort> {
        (0..n)
            .map(|s| {
                let eps: Vec<(String, bool)> =
                    (0..per_service).map(|e| ep(s * per_service + e)).collect();
                let eps: Vec<(&str, bool)> = eps.iter().map(|(ip, l)| (ip.as_str(), *l)).collect();
                let vip = format!("172.30.{}.{}", s / 250, s % 250 + 1);
                sp("ns", &format!("svc{s}"), &vip, &eps)
            })
            .collect()
    };
    // 1,000 endpoints is the last count with comments, as in kube-proxy.
    assert!(!large_cluster(&make(LARGE_CLUSTER_ENDPOINTS / per_service)));
    let services = make(LARGE_CLUSTER_ENDPOINTS / per_service + 1);
    assert!(large_cluster(&services));

    let svc = &services[0];
    let small = ruleset(std::slice::from_ref(svc), &node());
    let large = ruleset(&services, &node());
    let svc_chain = format!(
        "KUBE-SVC-{}",
        names::port_proto_hash("ns/svc0:p80", Protocol::Tcp)
    );
    let sep_chain = names::endpoint_chain("ns/svc0:p80", Protocol::Tcp, "10.1.0.0:80");
    // The same rules, less the comments on the endpoint rules.
    let uncommented = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                l.replace(r#" -m comment --comment "ns/svc0:p80 -> 10.1.0.0:80""#, "")
                    .replace(" -m comment --comment ns/svc0:p80", "")
            })
            .collect()
    };
    let small_svc = lines(&small, Table::Nat, &svc_chain);
    let large_svc = lines(&large, Table::Nat, &svc_chain);
    assert!(
        small_svc.iter().any(|l| l.contains("-> 10.1.0.0:80")),
        "{small_svc:?}"
    );
    assert!(
        large_svc[0].contains("cluster IP"),
        "service-level comment kept: {large_svc:?}"
    );
    assert!(
        large_svc[1..].iter().all(|l| !l.contains("--comment")),
        "{large_svc:?}"
    );
    let small_sep = lines(&small, Table::Nat, &sep_chain);
    let large_sep = lines(&large, Table::Nat, &sep_chain);
    assert_eq!(large_sep, uncommented(&small_sep));
    assert!(
        large_sep.iter().all(|l| !l.contains("--comment")),
        "{large_sep:?}"
    );
    // Shared chains keep theirs.
    let dispatch = lines(&large, Table::Nat, names::KUBE_SERVICES);
    assert!(
        dispatch[0].contains("ns/svc0:p80 cluster IP"),
        "{dispatch:?}"
    );
}
