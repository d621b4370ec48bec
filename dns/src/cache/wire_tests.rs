//! Hits in wire form ([`Cache::write`]) against what the decoding path
//! gives for the same query and the same upstream answer: TTLs patched by
//! age and expiry, the query's id, flags and case, EDNS and truncation,
//! and a randomised comparison of the two paths.

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;
use crate::wire::tests::next;
use crate::wire::{self, Decision};
use crate::zone::tests::sample;

/// A query for `name` as a client sends it.
fn query(
    name: &str,
    qtype: RecordType,
    id: u16,
    rd: bool,
    cd: bool,
    edns: Option<(u16, bool)>,
) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = rd;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// An upstream's answer: `n` TXT records of `len` bytes at `name`, after
/// a CNAME to it, with an SOA in authority and an A in additional.
fn upstream(name: &str, ttl: u32, n: usize, len: usize) -> Message {
    let mut m = Message::response(4242, OpCode::Query);
    let owner = Name::from_ascii(name).unwrap();
    let target = Name::from_ascii("target.example.test.").unwrap();
    m.answers.push(Record::from_rdata(
        owner,
        ttl + 100,
        RData::CNAME(CNAME(target.clone())),
    ));
    for i in 0..n {
        let txt = TXT::new(vec![char::from(b'a' + (i % 26) as u8)
            .to_string()
            .repeat(len)]);
        m.answers.push(Record::from_rdata(
            target.clone(),
            ttl + i as u32,
            RData::TXT(txt),
        ));
    }
    let zone = Name::from_ascii("example.test.").unwrap();
    let soa = SOA::new(zone.clone(), zone.clone(), 1, 2, 3, 4, 5);
    m.authorities
        .push(Record::from_rdata(zone, 7200, RData::SOA(soa)));
    m.additionals.push(Record::from_rdata(
        target,
        2,
        RData::A(A::new(192, 0, 2, 1)),
    ));
    m.metadata.authentic_data = true;
    m
}

/// What the decoding path sends for `packet`: the zone does not answer,
/// the response is completed with `upstream` aged by `age` and encoded
/// within the client's UDP size; also that response whole.
fn old_path(packet: &[u8], upstream: &Message, age: u32) -> (Vec<u8>, Message) {
    let (Decision::Forward { mut response, .. }, limit) =
        wire::decide_with_limit(&sample(), packet, true)
    else {
        panic!("not forwarded");
    };
    wire::merge_aged(&mut response, upstream, age);
    (wire::encode(&response, Some(limit)).unwrap(), response)
}

/// What a hit in wire form sends for `packet`, cached from `first`'s
/// question at `t0`, `age` seconds later.
fn new_path(cache: &mut Cache, packet: &[u8], t0: Instant, age: u64) -> Option<Vec<u8>> {
    let view = QueryView::parse(packet).expect("a plain query");
    let mut out = vec![0xee]; // something already in the send buffer
    cache
        .write(
            &view,
            t0 + Duration::from_secs(age),
            view.udp_limit(),
            &mut out,
        )
        .then(|| out.split_off(1))
}

fn cached(first: &str, qtype: RecordType, answer: &Message, t0: Instant) -> Cache {
    let mut c = Cache::new(10, 3600);
    c.insert(
        &Query::query(Name::from_ascii(first).unwrap(), qtype),
        answer,
        t0,
    );
    c
}

#[test]
fn ttls_count_down_and_the_smallest_expires_the_answer() {
    let t0 = Instant::now();
    let up = upstream("www.example.test.", 30, 2, 4);
    let mut c = cached("www.example.test.", RecordType::TXT, &up, t0);
    let packet = query("www.example.test.", RecordType::TXT, 1, true, false, None);
    let ttls = |m: Message| {
        let all = m.answers.iter().chain(&m.authorities).chain(&m.additionals);
        all.map(|r| r.ttl).collect::<Vec<_>>()
    };
    let at =
        |c: &mut Cache, age| Message::from_vec(&new_path(c, &packet, t0, age).unwrap()).unwrap();
    assert_eq!(ttls(at(&mut c, 0)), [130, 30, 31, 7200, 2]);
    assert_eq!(ttls(at(&mut c, 1)), [129, 29, 30, 7199, 1]);
    // Never below 0: the additional A's TTL of 2 stays at 0.
    assert_eq!(ttls(at(&mut c, 29)), [101, 1, 2, 7171, 0]);
    // The smallest answer TTL (30) reached 0: gone.
    assert!(new_path(&mut c, &packet, t0, 30).is_none());
    assert!(c.is_empty(), "an expired entry is dropped");
}

#[test]
fn the_id_flags_and_question_case_are_the_querys() {
    let t0 = Instant::now();
    let up = upstream("www.example.test.", 60, 1, 4);
    let mut c = cached("www.example.test.", RecordType::TXT, &up, t0);
    for (id, rd, cd) in [(0xbeef, true, false), (7, false, true), (0, false, false)] {
        let packet = query("wWw.ExAmple.TEST.", RecordType::TXT, id, rd, cd, None);
        let bytes = new_path(&mut c, &packet, t0, 3).unwrap();
        assert_eq!(bytes[..2], id.to_be_bytes());
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            m.metadata.message_type,
            hickory_proto::op::MessageType::Response
        );
        assert_eq!(
            (m.metadata.recursion_desired, m.metadata.checking_disabled),
            (rd, cd)
        );
        assert!(m.metadata.recursion_available && !m.metadata.authoritative);
        assert!(m.metadata.authentic_data, "AD as the upstream said");
        // 0x20: the question exactly as sent, and the answer's owner, which
        // points at it, too.
        assert_eq!(bytes[12..12 + 18], packet[12..12 + 18]);
        assert_eq!(m.queries[0].name().to_string(), "wWw.ExAmple.TEST.");
        assert_eq!(m.answers[0].name.to_string(), "wWw.ExAmple.TEST.");
    }
    // Another type or name misses.
    let other = query("www.example.test.", RecordType::A, 1, true, false, None);
    assert!(new_path(&mut c, &other, t0, 0).is_none());
    let other = query("ww.example.test.", RecordType::TXT, 1, true, false, None);
    assert!(new_path(&mut c, &other, t0, 0).is_none());
}

#[test]
fn edns_is_answered_and_too_large_answers_are_truncated() {
    let t0 = Instant::now();
    // About 1,100 bytes: over 512, under 1232.
    let up = upstream("big.example.test.", 60, 4, 250);
    let mut c = cached("big.example.test.", RecordType::TXT, &up, t0);
    let mut full = |edns| {
        let packet = query("big.example.test.", RecordType::TXT, 9, true, false, edns);
        Message::from_vec(&new_path(&mut c, &packet, t0, 0).unwrap()).unwrap()
    };
    let m = full(Some((1232, true)));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 5);
    let edns = m.edns.as_ref().expect("an OPT for an EDNS query");
    assert_eq!(
        (edns.max_payload(), edns.flags().dnssec_ok, edns.version()),
        (1232, true, 0)
    );
    let m = full(Some((4096, false)));
    assert!(!m.edns.unwrap().flags().dnssec_ok);
    for small in [None, Some((512, false)), Some((1000, true))] {
        let m = full(small);
        assert!(m.metadata.truncation, "{small:?}");
        assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.edns.is_some(), small.is_some());
        assert_eq!(m.metadata.id, 9);
    }
}

#[test]
fn negative_answers_are_hits_until_the_soa_minimum() {
    let t0 = Instant::now();
    let mut m = Message::response(1, OpCode::Query);
    m.metadata.response_code = ResponseCode::NXDomain;
    let zone = Name::from_ascii("example.test.").unwrap();
    let soa = SOA::new(zone.clone(), zone.clone(), 1, 1, 1, 1, 10);
    m.authorities
        .push(Record::from_rdata(zone, 300, RData::SOA(soa)));
    let mut c = cached("nx.example.test.", RecordType::A, &m, t0);
    let packet = query(
        "NX.example.test.",
        RecordType::A,
        5,
        true,
        false,
        Some((1232, false)),
    );
    let hit = Message::from_vec(&new_path(&mut c, &packet, t0, 9).unwrap()).unwrap();
    assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(hit.authorities[0].ttl, 291);
    assert!(new_path(&mut c, &packet, t0, 10).is_none());
}

#[test]
fn only_plain_queries_are_read_in_place() {
    let plain = query(
        "a.example.test.",
        RecordType::A,
        1,
        true,
        false,
        Some((1232, false)),
    );
    assert!(QueryView::parse(&plain).is_some());
    let mut response = plain.clone();
    response[2] |= 0x80;
    let mut notify = plain.clone();
    notify[2] |= 4 << 3;
    let mut trailing = plain.clone();
    trailing.push(0);
    let mut version1 = plain.clone();
    let opt = plain.len() - OPT_LEN;
    version1[opt + 6] = 1;
    let mut cut = plain.clone();
    cut.truncate(plain.len() - 1);
    let mut pointer = plain.clone();
    pointer[12] = 0xc0;
    let mut two_questions = plain.clone();
    two_questions[5] = 2;
    let mut subnet = plain.clone();
    subnet.extend_from_slice(&[0, 8, 0, 0]);
    subnet[opt + 10] = 4;
    let mut cookie = plain.clone();
    cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    cookie[opt + 10] = 12;
    assert!(QueryView::parse(&cookie).is_some(), "a cookie is fine");
    for (what, p) in [
        ("response", response),
        ("opcode", notify),
        ("trailing byte", trailing),
        ("EDNS version 1", version1),
        ("cut OPT", cut),
        ("compressed question", pointer),
        ("two questions", two_questions),
        ("client subnet", subnet),
    ] {
        assert!(QueryView::parse(&p).is_none(), "{what}");
    }
    let v = QueryView::parse(&plain).unwrap();
    assert!(v.within(b"\x07example\x04test\x00") && v.within(b"\x04test\x00") && v.within(b"\x00"));
    assert!(!v.within(b"\x0dcluster\x05local\x00") && !v.within(b"\x04arpa\x00"));
    assert!(!v.within(b"\x06xample\x04test\x00"), "whole labels only");
}

#[test]
fn hits_equal_what_the_decoding_path_sent() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let (mut same_bytes, mut fits_now) = (0, 0);
    for round in 0..400 {
        let mut r = || next(&mut state);
        let labels = 1 + r() % 3;
        let mut name = String::new();
        for _ in 0..labels {
            let len = 1 + r() % 12;
            name.extend((0..len).map(|_| char::from(b'a' + (r() % 26) as u8)));
            name.push('.');
        }
        name.push_str("example.test.");
        let recase = |r: &mut dyn FnMut() -> u64, name: &str| -> String {
            name.chars()
                .map(|ch| {
                    if r().is_multiple_of(2) {
                        ch.to_ascii_uppercase()
                    } else {
                        ch
                    }
                })
                .collect()
        };
        let first = if r().is_multiple_of(2) {
            name.clone()
        } else {
            recase(&mut r, &name)
        };
        let client = if r().is_multiple_of(3) {
            first.clone()
        } else {
            recase(&mut r, &name)
        };
        let qtype = [RecordType::TXT, RecordType::A, RecordType::MX][(r() % 3) as usize];
        let ttl = 1 + (r() % 600) as u32;
        let mut up = if r().is_multiple_of(4) {
            let mut m = Message::response(1, OpCode::Query);
            m.metadata.response_code = if r().is_multiple_of(2) {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            let zone = Name::from_ascii("example.test.").unwrap();
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 1, 1, 1, ttl);
            m.authorities.push(Record::from_rdata(
                zone,
                ttl + (r() % 100) as u32,
                RData::SOA(soa),
            ));
            m
        } else {
            upstream(&first, ttl, (r() % 6) as usize, (r() % 256) as usize)
        };
        up.metadata.authentic_data = r().is_multiple_of(2);
        let edns = match r() % 5 {
            0 => None,
            1 => Some((512, false)),
            2 => Some((1232, r().is_multiple_of(2))),
            3 => Some((4096, true)),
            _ => Some(((r() % 3000) as u16, false)),
        };
        let id = r() as u16;
        let (rd, cd) = (r().is_multiple_of(2), r().is_multiple_of(4));
        let packet = query(&client, qtype, id, rd, cd, edns);
        let age = r() % (u64::from(ttl) + 2);
        let t0 = Instant::now();
        let mut c = cached(&first, qtype, &up, t0);
        let lifetime = c.entries.values().next().map(|e| e.expires - e.stored);
        let lifetime = lifetime.unwrap_or_else(|| panic!("round {round}: not cached"));
        let Some(new) = new_path(&mut c, &packet, t0, age) else {
            assert!(
                age >= lifetime.as_secs(),
                "round {round}: a miss at {age} s, before expiry at {lifetime:?}"
            );
            continue;
        };
        let (old, whole) = old_path(&packet, &up, age as u32);
        let (new_m, old_m) = (
            Message::from_vec(&new).unwrap(),
            Message::from_vec(&old).unwrap(),
        );
        let what = format!("round {round}: {client} {qtype} {edns:?} age {age}");
        if new_m.metadata.truncation == old_m.metadata.truncation {
            assert_eq!(new_m, old_m, "{what}");
        } else {
            // The old path wrote names in another case than the question's
            // in full; here they point at the question, so the answer is
            // smaller and may fit where the old one did not.
            assert!(client != first && old_m.metadata.truncation, "{what}");
            assert!(
                new.len() <= QueryView::parse(&packet).unwrap().udp_limit(),
                "{what}"
            );
            assert_eq!(new_m, whole, "{what}");
            fits_now += 1;
        }
        assert_eq!(
            new[12..12 + client.len() + 1],
            packet[12..12 + client.len() + 1],
            "round {round}: question case"
        );
        if client == first {
            assert_eq!(new, old, "round {round}: same case, same bytes");
            same_bytes += 1;
        }
    }
    assert!(same_bytes > 50, "{same_bytes} byte-for-byte comparisons");
    assert!(fits_now < 40, "{fits_now} answers fit only in wire form");
}

#[test]
fn mangled_queries_read_in_place_mean_what_hickory_reads() {
    let t0 = Instant::now();
    let mut c = Cache::new(10, 3600);
    let names = ["www.example.test.", "nx.example.test.", "a.b.example.test."];
    for name in names {
        let q = Query::query(Name::from_ascii(name).unwrap(), RecordType::TXT);
        c.insert(&q, &upstream(name, 60, 3, 200), t0);
    }
    let mut seeds: Vec<Vec<u8>> = names
        .iter()
        .map(|n| query(n, RecordType::TXT, 3, true, false, Some((1232, true))))
        .collect();
    seeds.push(query(names[0], RecordType::TXT, 4, false, true, None));
    let mut cookie = seeds[0].clone();
    cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    let rdlen = cookie.len() - 12 - 2;
    cookie[rdlen..rdlen + 2].copy_from_slice(&12u16.to_be_bytes());
    seeds.push(cookie);
    let (mut state, mut read, mut hits) = (0x0123_4567_89ab_cdefu64, 0, 0);
    for i in 0..50_000usize {
        let mut p = seeds[i % seeds.len()].clone();
        for _ in 0..(next(&mut state) % 3) {
            let at = (next(&mut state) as usize) % p.len();
            p[at] = match next(&mut state) % 3 {
                0 => next(&mut state) as u8,
                1 => p[at] ^ 0x20, // another case, or another bit
                _ => p[at].wrapping_add(1),
            };
        }
        if next(&mut state).is_multiple_of(7) {
            p.truncate((next(&mut state) as usize) % p.len());
        }
        let Some(view) = QueryView::parse(&p) else {
            continue;
        };
        read += 1;
        let m = Message::from_vec(&p)
            .unwrap_or_else(|e| panic!("{p:?} read in place, not by hickory: {e}"));
        let [q] = m.queries.as_slice() else {
            panic!("{p:?}: not one question");
        };
        let mut buf = [0u8; MAX_KEY];
        assert_eq!(Some(view.key(&mut buf).into()), key(q), "{p:?}");
        assert_eq!(view.udp_limit(), wire::udp_limit(&m), "{p:?}");
        assert_eq!(
            view.edns().map(|e| e.1),
            m.edns.as_ref().map(|e| e.flags().dnssec_ok)
        );
        let mut out = Vec::new();
        if c.write(&view, t0, view.udp_limit(), &mut out) {
            hits += 1;
            let answer = Message::from_vec(&out).unwrap();
            assert_eq!(answer.queries, m.queries);
            assert_eq!(answer.metadata.id, m.metadata.id);
        }
    }
    assert!(
        read > 5_000 && hits > 1_000,
        "{read} read in place, {hits} hits"
    );
}
