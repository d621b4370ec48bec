//! Wire tests: queries as bytes in, responses out; the fuzz loop checks the
//! query path never panics on random or mangled packets.

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::*;
use crate::zone::tests::sample;

fn query_bytes(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 77;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn reply(d: Decision) -> Message {
    match d {
        Decision::Reply(m) => m,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn zone_names_are_answered_authoritatively() {
    let z = sample();
    let m = reply(decide(
        &z,
        &query_bytes(
            "redis-master.default.svc.cluster.local.",
            RecordType::A,
            None,
        ),
        true,
    ));
    assert_eq!(m.metadata.id, 77);
    assert!(m.metadata.authoritative && m.metadata.recursion_available);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn outside_names_forward_or_are_refused() {
    let z = sample();
    let bytes = query_bytes("example.com.", RecordType::A, None);
    assert!(matches!(decide(&z, &bytes, true), Decision::Forward { .. }));
    assert_eq!(
        reply(decide(&z, &bytes, false)).metadata.response_code,
        ResponseCode::Refused
    );
}

#[test]
fn external_name_cname_is_chased_upstream() {
    let z = sample();
    let bytes = query_bytes("search.default.svc.cluster.local.", RecordType::A, None);
    let Decision::Forward { response, query } = decide(&z, &bytes, true) else {
        panic!("forward")
    };
    assert_eq!(query.name().to_ascii(), "www.example.com.");
    assert_eq!(response.answers.len(), 1);
}

#[test]
fn edns_is_echoed_and_bad_version_refused() {
    let z = sample();
    let m = reply(decide(
        &z,
        &query_bytes(
            "redis-master.default.svc.cluster.local.",
            RecordType::A,
            Some(4096),
        ),
        true,
    ));
    assert!(m.edns.is_some());
    let mut q =
        Message::from_vec(&query_bytes("x.cluster.local.", RecordType::A, Some(1232))).unwrap();
    q.edns.as_mut().unwrap().set_version(1);
    let m = reply(decide(&z, &q.to_vec().unwrap(), true));
    assert_eq!(m.metadata.response_code, ResponseCode::BADVERS);
}

#[test]
fn oversized_udp_answers_are_truncated() {
    let z = crate::zone::tests::many_endpoints(100);
    let bytes = query_bytes("big.default.svc.cluster.local.", RecordType::A, None);
    let m = reply(decide(&z, &bytes, true));
    let full = encode(&m, None).unwrap();
    assert!(full.len() > MIN_UDP_SIZE);
    let small = Message::from_vec(
        &encode(&m, Some(udp_limit(&Message::from_vec(&bytes).unwrap()))).unwrap(),
    )
    .unwrap();
    assert!(small.metadata.truncation);
    assert!(small.answers.is_empty());
    let with_edns = Message::from_vec(&query_bytes(
        "big.default.svc.cluster.local.",
        RecordType::A,
        Some(4096),
    ))
    .unwrap();
    let big = Message::from_vec(&encode(&m, Some(udp_limit(&with_edns))).unwrap()).unwrap();
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 100);
}

#[test]
fn malformed_packets_get_formerr_or_nothing() {
    let z = sample();
    assert!(matches!(decide(&z, &[1, 2, 3], true), Decision::Drop));
    let mut bytes = query_bytes(
        "redis-master.default.svc.cluster.local.",
        RecordType::A,
        None,
    );
    bytes.truncate(20);
    let m = reply(decide(&z, &bytes, true));
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (77, ResponseCode::FormErr)
    );
    bytes[2] |= 0x80; // a response: never answered
    assert!(matches!(decide(&z, &bytes, true), Decision::Drop));
    // two questions
    let mut m = Message::from_vec(&query_bytes("a.cluster.local.", RecordType::A, None)).unwrap();
    m.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        reply(decide(&z, &m.to_vec().unwrap(), true))
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
}

/// A small xorshift generator: reproducible noise without a dependency.
pub(crate) fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn fuzz_query_path_never_panics() {
    let z = sample();
    let seeds = [
        query_bytes(
            "redis-master.default.svc.cluster.local.",
            RecordType::A,
            Some(1232),
        ),
        query_bytes(
            "_web._tcp.nginx.db.svc.cluster.local.",
            RecordType::SRV,
            None,
        ),
        query_bytes("5.1.244.10.in-addr.arpa.", RecordType::PTR, None),
        query_bytes("search.default.svc.cluster.local.", RecordType::A, None),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..50_000usize {
        let packet: Vec<u8> = if i.is_multiple_of(2) {
            let len = (next(&mut state) % 600) as usize;
            (0..len).map(|_| next(&mut state) as u8).collect()
        } else {
            let mut p = seeds[i % seeds.len()].clone();
            for _ in 0..=(next(&mut state) % 4) {
                let at = (next(&mut state) as usize) % p.len();
                p[at] = next(&mut state) as u8;
            }
            if next(&mut state).is_multiple_of(5) {
                p.truncate((next(&mut state) as usize) % p.len());
            }
            p
        };
        match decide(&z, &packet, true) {
            Decision::Reply(m) | Decision::Forward { response: m, .. } => {
                let _ = encode(&m, Some(MIN_UDP_SIZE));
            }
            Decision::Drop => {}
        }
    }
}

#[test]
fn chased_cname_takes_the_upstream_rcode() {
    let z = sample();
    let bytes = query_bytes("search.default.svc.cluster.local.", RecordType::A, None);
    let Decision::Forward { response, .. } = decide(&z, &bytes, true) else {
        panic!("forward")
    };
    let mut upstream = Message::response(1, hickory_proto::op::OpCode::Query);
    upstream.metadata.response_code = ResponseCode::NXDomain;
    let merged = merge_upstream(response.clone(), &upstream);
    assert_eq!(merged.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(merged.answers.len(), 1, "the CNAME stays");
    assert!(servfail(response).answers.is_empty());
}
