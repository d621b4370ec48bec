//! The forwarder's answer cache: positive answers for their smallest TTL,
//! negative ones (NXDOMAIN, NODATA) for the SOA's negative TTL (RFC 2308),
//! bounded in entries with oldest-first eviction. Pure: the caller passes
//! the time; nothing here talks to the network.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// Cache key: the question, name lowercased.
type Key = (Name, RecordType, DNSClass);

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
    response: Message,
    stored: Instant,
    expires: Instant,
    seq: u64,
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

    /// The cached response to `query` at `now`, TTLs lowered by the time
    /// it has spent here; `None` when absent or expired.
    pub fn get(&mut self, query: &Query, now: Instant) -> Option<Message> {
        let key = key(query);
        let entry = self.entries.get(&key)?;
        if now >= entry.expires {
            self.entries.remove(&key);
            return None;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut response = entry.response.clone();
        for record in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(age);
        }
        Some(response)
    }

    /// Completes `response` from the cached answer to `query` at `now`, as
    /// [`crate::wire::merge_upstream`] would with [`Cache::get`]'s message,
    /// copying the records once; false when absent or expired.
    pub fn answer(&mut self, query: &Query, now: Instant, response: &mut Message) -> bool {
        let key = key(query);
        let Some(entry) = self.entries.get(&key) else {
            return false;
        };
        if now >= entry.expires {
            self.entries.remove(&key);
            return false;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        crate::wire::merge_aged(response, &entry.response, age);
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
        let key = key(query);
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&old);
            }
        }
        self.seq += 1;
        let mut stored = response.clone();
        stored.edns = None;
        stored
            .additionals
            .retain(|r| r.record_type() != RecordType::OPT);
        self.entries.insert(
            key.clone(),
            Entry {
                response: stored,
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

fn key(query: &Query) -> Key {
    (
        query.name().to_lowercase(),
        query.query_type(),
        query.query_class(),
    )
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
mod tests {
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;

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
