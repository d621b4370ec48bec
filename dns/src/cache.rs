//! The forwarder's answer cache: positive answers for their smallest TTL,
//! negative ones (NXDOMAIN, NODATA) for the SOA's negative TTL (RFC 2308),
//! bounded in entries with oldest-first eviction. Pure: the caller passes
//! the time; nothing here talks to the network.
//!
//! Answers are kept in wire form, as unbound keeps them: the response the
//! server would send (header, question, every record, no OPT) encoded once
//! when the upstream's answer arrives, with the offset of each record's TTL.
//! A hit ([`Cache::write`]) copies those bytes into the send buffer and
//! patches them: the query's id, its RD and CD bits, its question name
//! (the client's case, which answer names compressed against the question
//! then share), every TTL lowered by the time spent here, and an OPT when
//! the query had one; an answer larger than the client's UDP size becomes
//! the question alone with TC set. Nothing is decoded or allocated.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::RData;

use crate::wire::{QueryView, ADVERTISED_UDP_SIZE, MAX_KEY, OPT_LEN};

/// Cache key: the question in wire form, name lowercased.
type Key = Box<[u8]>;

/// A bounded cache of upstream responses.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    max_ttl: u32,
    entries: HashMap<Key, Entry>,
    /// Insertion order for eviction; `(key, seq)` pairs whose seq no longer
    /// matches the entry are stale and skipped.
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    wire: Wire,
    stored: Instant,
    expires: Instant,
    seq: u64,
}

/// A response in wire form with what a hit patches.
#[derive(Debug)]
struct Wire {
    /// The response as sent for a query with id 0, RD and CD clear, no
    /// EDNS, in the case of the query that filled the entry.
    bytes: Box<[u8]>,
    /// Offsets of the TTL of every record in `bytes`.
    ttls: Box<[u16]>,
    /// Offset just past the question.
    question_end: usize,
}

impl Cache {
    /// A cache of at most `capacity` answers, none kept longer than
    /// `max_ttl` seconds.
    pub fn new(capacity: usize, max_ttl: u32) -> Self {
        Self {
            capacity,
            max_ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// Number of cached answers (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live entry for `key` at `now` and its age in seconds; an expired
    /// one is dropped.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<(&Entry, u32)> {
        let expires = self.entries.get(key)?.expires;
        if now >= expires {
            self.entries.remove(key);
            return None;
        }
        let entry = self.entries.get(key)?;
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        Some((entry, age))
    }

    /// The cached response to `query` at `now`, TTLs lowered by the time
    /// it has spent here; `None` when absent or expired. Decodes: the
    /// server's fast path is [`Cache::write`].
    pub fn get(&mut self, query: &Query, now: Instant) -> Option<Message> {
        let key = key(query)?;
        let (entry, age) = self.live(&key, now)?;
        let mut bytes = entry.wire.bytes.to_vec();
        age_ttls(&mut bytes, &entry.wire.ttls, age);
        Message::from_vec(&bytes).ok()
    }

    /// Completes `response` from the cached answer to `query` at `now`, as
    /// [`crate::wire::merge_upstream`] would with [`Cache::get`]'s message;
    /// false when absent or expired.
    pub fn answer(&mut self, query: &Query, now: Instant, response: &mut Message) -> bool {
        let Some(cached) = self.get(query, now) else {
            return false;
        };
        crate::wire::merge_aged(response, &cached, 0);
        true
    }

    /// Appends to `out` the response to `query` from the cache at `now`,
    /// at most `limit` bytes (else truncated: TC, question and OPT only);
    /// false, with `out` untouched, when absent or expired.
    pub fn write(
        &mut self,
        query: &QueryView<'_>,
        now: Instant,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut buf = [0u8; MAX_KEY];
        let Some((entry, age)) = self.live(query.key(&mut buf), now) else {
            return false;
        };
        let opt = if query.edns().is_some() { OPT_LEN } else { 0 };
        let start = out.len();
        if entry.wire.bytes.len() + opt <= limit {
            out.extend_from_slice(&entry.wire.bytes);
            age_ttls(&mut out[start..], &entry.wire.ttls, age);
        } else {
            out.extend_from_slice(&entry.wire.bytes[..entry.wire.question_end]);
            let msg = &mut out[start..];
            msg[2] |= 0x02; // TC
            msg[6..12].fill(0); // no answer, authority or additional records
        }
        let msg = &mut out[start..];
        msg[..2].copy_from_slice(&query.id());
        msg[2] = (msg[2] & !0x01) | u8::from(query.recursion_desired());
        msg[3] = (msg[3] & !0x10) | (u8::from(query.checking_disabled()) << 4);
        let name = query.name();
        msg[12..12 + name.len()].copy_from_slice(name);
        if let Some((_, dnssec_ok)) = query.edns() {
            let additionals = u16::from_be_bytes([msg[10], msg[11]]) + 1;
            msg[10..12].copy_from_slice(&additionals.to_be_bytes());
            let size = ADVERTISED_UDP_SIZE.to_be_bytes();
            let do_bit = if dnssec_ok { 0x80 } else { 0 };
            out.extend_from_slice(&[0, 0, 41, size[0], size[1], 0, 0, do_bit, 0, 0, 0]);
        }
        true
    }

    /// Stores `response` to `query` if it is cacheable (NOERROR with
    /// answers, or a negative answer carrying an SOA), evicting the oldest
    /// entry when full.
    pub fn insert(&mut self, query: &Query, response: &Message, now: Instant) {
        let Some(ttl) = cache_ttl(response).map(|t| t.min(self.max_ttl)) else {
            return;
        };
        if ttl == 0 || self.capacity == 0 {
            return;
        }
        let (Some(key), Some(wire)) = (key(query), encode(query, response)) else {
            return;
        };
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&old);
            }
        }
        self.seq += 1;
        self.entries.insert(
            key.clone(),
            Entry {
                wire,
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                seq: self.seq,
            },
        );
        self.order.push_back((key, self.seq));
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
    }
}

/// Lowers each TTL at `offsets` in `msg` by `age`, to 0 at least.
fn age_ttls(msg: &mut [u8], offsets: &[u16], age: u32) {
    for &at in offsets {
        let field = &mut msg[usize::from(at)..usize::from(at) + 4];
        let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
    }
}

/// The cache key of `query`: its question in wire form, name lowercased.
fn key(query: &Query) -> Option<Key> {
    let mut key = Vec::with_capacity(MAX_KEY);
    for label in query.name().to_lowercase().iter() {
        key.push(u8::try_from(label.len()).ok()?);
        key.extend_from_slice(label);
    }
    key.push(0);
    key.extend_from_slice(&u16::from(query.query_type()).to_be_bytes());
    key.extend_from_slice(&u16::from(query.query_class()).to_be_bytes());
    (key.len() <= MAX_KEY).then(|| key.into_boxed_slice())
}

/// The response the server sends for `query` answered by `upstream`
/// (id 0, RD and CD clear, no EDNS), with its TTL offsets and where the
/// question ends: what [`Cache::write`] copies and patches.
fn encode(query: &Query, upstream: &Message) -> Option<Wire> {
    let mut response = Message::response(0, OpCode::Query);
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    crate::wire::merge_aged(&mut response, upstream, 0);
    let bytes = response.to_vec().ok()?;
    let (ttls, question_end) = ttl_offsets(&bytes)?;
    Some(Wire {
        bytes: bytes.into_boxed_slice(),
        ttls: ttls.into_boxed_slice(),
        question_end,
    })
}

/// The offset of every record's TTL in `msg` (one question) and where its
/// question ends; `None` if it does not parse to its end exactly or is
/// longer than 64 KiB.
fn ttl_offsets(msg: &[u8]) -> Option<(Vec<u16>, usize)> {
    let count = |at: usize| {
        Some(usize::from(u16::from_be_bytes([
            *msg.get(at)?,
            *msg.get(at + 1)?,
        ])))
    };
    if count(4)? != 1 || msg.len() > usize::from(u16::MAX) {
        return None;
    }
    let records = count(6)? + count(8)? + count(10)?;
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *msg.get(at)?;
            match len {
                0 => return Some(at + 1),
                0xc0.. => return Some(at + 2),
                64.. => return None,
                _ => at += 1 + usize::from(len),
            }
        }
    };
    let question_end = skip_name(12)? + 4;
    let mut at = question_end;
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(at)? + 4; // type, class
        ttls.push(u16::try_from(at).ok()?);
        let rdlen = count(at + 4)?;
        at += 6 + rdlen;
    }
    (at == msg.len()).then_some((ttls, question_end))
}

/// How long `response` may be cached: the smallest answer TTL for a
/// positive answer, min(SOA TTL, SOA minimum) for a negative one.
fn cache_ttl(response: &Message) -> Option<u32> {
    let rcode = response.metadata.response_code;
    if response.metadata.truncation {
        return None;
    }
    if rcode == ResponseCode::NoError && !response.answers.is_empty() {
        return response.answers.iter().map(|r| r.ttl).min();
    }
    if rcode == ResponseCode::NoError || rcode == ResponseCode::NXDomain {
        return response.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        });
    }
    None
}

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod tests {
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    use super::*;

    fn q(name: &str) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
    }

    fn positive(name: &str, ttl: u32) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        let rec = Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A::new(1, 2, 3, 4)),
        );
        m.answers.push(rec);
        m
    }

    fn negative(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let root = Name::root();
        let soa = SOA::new(root.clone(), root.clone(), 1, 1, 1, 1, minimum);
        m.authorities
            .push(Record::from_rdata(root, soa_ttl, RData::SOA(soa)));
        m
    }

    #[test]
    fn positive_answers_live_for_their_ttl_and_age() {
        let mut c = Cache::new(10, 3600);
        let t0 = Instant::now();
        c.insert(&q("a.example."), &positive("a.example.", 30), t0);
        let hit = c
            .get(&q("A.Example."), t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(c
            .get(&q("a.example."), t0 + Duration::from_secs(30))
            .is_none());
    }

    #[test]
    fn answer_fills_the_response_as_get_and_merge_would() {
        let mut c = Cache::new(10, 3600);
        let t0 = Instant::now();
        c.insert(&q("a.example."), &negative(60, 30), t0);
        c.insert(&q("b.example."), &positive("b.example.", 30), t0);
        let later = t0 + Duration::from_secs(7);
        for name in ["A.example.", "b.Example."] {
            let fresh = || Message::response(9, hickory_proto::op::OpCode::Query);
            let want = crate::wire::merge_upstream(fresh(), &c.get(&q(name), later).unwrap());
            let mut got = fresh();
            assert!(c.answer(&q(name), later, &mut got));
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(
            {
                let mut m = Message::response(9, hickory_proto::op::OpCode::Query);
                c.answer(&q("b.example."), later, &mut m);
                m.answers[0].ttl
            },
            23
        );
        let mut m = Message::response(9, hickory_proto::op::OpCode::Query);
        assert!(!c.answer(&q("b.example."), t0 + Duration::from_secs(30), &mut m));
        assert!(!c.answer(&q("c.example."), later, &mut m));
        assert!(m.answers.is_empty());
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let mut c = Cache::new(10, 3600);
        let t0 = Instant::now();
        c.insert(&q("n.example."), &negative(300, 7), t0);
        assert!(c
            .get(&q("n.example."), t0 + Duration::from_secs(6))
            .is_some());
        assert!(c
            .get(&q("n.example."), t0 + Duration::from_secs(7))
            .is_none());
        // without an SOA a negative answer is not cached
        let mut bare = negative(1, 1);
        bare.authorities.clear();
        c.insert(&q("m.example."), &bare, t0);
        assert!(c.get(&q("m.example."), t0).is_none());
    }

    #[test]
    fn servfail_is_not_cached_and_size_is_bounded() {
        let mut c = Cache::new(3, 3600);
        let t0 = Instant::now();
        let mut fail = positive("f.example.", 30);
        fail.metadata.response_code = ResponseCode::ServFail;
        c.insert(&q("f.example."), &fail, t0);
        assert!(c.is_empty());
        for i in 0..10 {
            let name = format!("h{i}.example.");
            c.insert(&q(&name), &positive(&name, 60), t0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&q("h9.example."), t0).is_some());
        assert!(c.get(&q("h0.example."), t0).is_none());
    }

    #[test]
    fn ttls_are_capped() {
        let mut c = Cache::new(3, 10);
        let t0 = Instant::now();
        c.insert(&q("l.example."), &positive("l.example.", 86400), t0);
        assert!(c
            .get(&q("l.example."), t0 + Duration::from_secs(10))
            .is_none());
    }
}
