//! DNS messages on the wire: parsing a client's query (FORMERR, NOTIMP,
//! BADVERS for what we cannot answer), building the response from a zone
//! answer or an upstream's, EDNS0 and UDP truncation. Pure: no sockets, no
//! forwarding; the server decides what to do with a [`Decision`].

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};

use crate::zone::{Answer, Zone};

mod view;
pub use view::{QueryView, MAX_KEY, OPT_LEN};

/// UDP payload size assumed without EDNS (RFC 1035).
pub const MIN_UDP_SIZE: usize = 512;
/// Largest UDP payload we send whatever a client advertises.
pub const MAX_UDP_SIZE: usize = 4096;
/// UDP payload size we advertise in our OPT record (DNS flag day 2020).
pub const ADVERTISED_UDP_SIZE: u16 = 1232;

/// What to do with one received packet.
#[derive(Debug)]
pub enum Decision {
    /// Send these bytes back (for UDP still subject to [`encode`]'s limit,
    /// already applied).
    Reply(Message),
    /// Ask the forwarder `query`, then complete `response` with its answer
    /// (see [`merge_upstream`]).
    Forward {
        /// The response prepared so far (header, question, EDNS and, for a
        /// chased CNAME, the zone's answer records).
        response: Message,
        /// The question to ask upstream.
        query: Query,
    },
    /// Say nothing (a response, or garbage without a usable header).
    Drop,
}

/// Decides how to answer `packet` from `zone`; `forwarding` says whether
/// names outside the zone can be forwarded (else they get REFUSED).
pub fn decide(zone: &Zone, packet: &[u8], forwarding: bool) -> Decision {
    decide_with_limit(zone, packet, forwarding).0
}

/// [`decide`], also returning the client's UDP size ([`udp_limit`]; 512
/// for packets that do not parse).
pub fn decide_with_limit(zone: &Zone, packet: &[u8], forwarding: bool) -> (Decision, usize) {
    match Message::from_vec(packet) {
        Ok(request) => (
            decide_parsed(zone, &request, forwarding),
            udp_limit(&request),
        ),
        Err(_) => (formerr_from_header(packet), MIN_UDP_SIZE),
    }
}

fn decide_parsed(zone: &Zone, request: &Message, forwarding: bool) -> Decision {
    if request.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    let mut response = response_to(request);
    if request.metadata.op_code != OpCode::Query {
        return Decision::Reply(with_rcode(response, ResponseCode::NotImp));
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Decision::Reply(with_rcode(response, ResponseCode::BADVERS));
    }
    let [query] = request.queries.as_slice() else {
        return Decision::Reply(with_rcode(response, ResponseCode::FormErr));
    };
    let qtype = query.query_type();
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
        || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
    {
        return Decision::Reply(with_rcode(response, ResponseCode::Refused));
    }
    match zone.lookup(query.name(), qtype) {
        Some(answer) => {
            let chase = cname_to_chase(zone, &answer, qtype);
            fill(&mut response, answer);
            match chase {
                Some(target) if forwarding => {
                    let mut q = query.clone();
                    q.set_name(target);
                    Decision::Forward { response, query: q }
                }
                _ => Decision::Reply(response),
            }
        }
        None if forwarding => {
            response.metadata.authoritative = false;
            Decision::Forward {
                response,
                query: query.clone(),
            }
        }
        None => Decision::Reply(with_rcode(response, ResponseCode::Refused)),
    }
}

/// Completes `response` with an upstream's `upstream` answer: its records
/// are appended after what the zone put there (a CNAME being chased) and
/// its rcode is the response's, as for the last name of a CNAME chain
/// (RFC 6604).
pub fn merge_upstream(mut response: Message, upstream: &Message) -> Message {
    merge_aged(&mut response, upstream, 0);
    response
}

/// [`merge_upstream`] in place, every copied record's TTL lowered by
/// `age` seconds (an answer that has spent that long in the cache).
pub fn merge_aged(response: &mut Message, upstream: &Message, age: u32) {
    let chased = !response.answers.is_empty();
    response.metadata.response_code = upstream.metadata.response_code;
    let aged = |r: &Record| {
        let mut r = r.clone();
        r.ttl = r.ttl.saturating_sub(age);
        r
    };
    response.answers.extend(upstream.answers.iter().map(aged));
    response.authorities = upstream.authorities.iter().map(aged).collect();
    response.additionals = upstream
        .additionals
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(aged)
        .collect();
    if !chased {
        response.metadata.authentic_data = upstream.metadata.authentic_data;
    }
}

/// The response to give when forwarding failed: SERVFAIL.
pub fn servfail(mut response: Message) -> Message {
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    with_rcode(response, ResponseCode::ServFail)
}

/// The largest UDP response `request` accepts (EDNS0 payload size, at
/// least 512, at most [`MAX_UDP_SIZE`]).
pub fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(MIN_UDP_SIZE, |e| {
        usize::from(e.max_payload()).clamp(MIN_UDP_SIZE, MAX_UDP_SIZE)
    })
}

/// Encodes `response`; with a `limit` (UDP), a response larger than it is
/// replaced by its truncated form (TC set, question and OPT only) so the
/// client retries over TCP. `None` if it cannot be encoded at all.
pub fn encode(response: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    match limit {
        Some(limit) if bytes.len() > limit => response.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

/// A response skeleton for `request`: same id, opcode, RD and question,
/// RA set, and an OPT record when the request had one.
fn response_to(request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.queries = request.queries.clone();
    if let Some(req_edns) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(ADVERTISED_UDP_SIZE);
        edns.set_dnssec_ok(req_edns.flags().dnssec_ok);
        response.set_edns(edns);
    }
    response
}

fn with_rcode(mut response: Message, rcode: ResponseCode) -> Message {
    response.metadata.response_code = rcode;
    response
}

fn fill(response: &mut Message, answer: Answer) {
    response.metadata.authoritative = true;
    response.metadata.response_code = answer.rcode;
    response.answers = answer.answers;
    response.authorities = answer.authority;
    response.additionals = answer.additionals;
}

/// The target of an answer that is only a CNAME out of the zone, when the
/// question was for another type: resolvers expect us to follow it.
fn cname_to_chase(
    zone: &Zone,
    answer: &Answer,
    qtype: RecordType,
) -> Option<hickory_proto::rr::Name> {
    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
        return None;
    }
    let [record] = answer.answers.as_slice() else {
        return None;
    };
    let hickory_proto::rr::RData::CNAME(target) = &record.data else {
        return None;
    };
    (!zone.origin().zone_of(&target.0)).then(|| target.0.clone())
}

/// FORMERR for a packet we could not parse but whose header is a query;
/// nothing for anything shorter than a header or marked as a response.
fn formerr_from_header(packet: &[u8]) -> Decision {
    let [id0, id1, flags, ..] = *packet else {
        return Decision::Drop;
    };
    if packet.len() < 12 || flags & 0x80 != 0 {
        return Decision::Drop;
    }
    let id = u16::from_be_bytes([id0, id1]);
    let op_code = OpCode::from_u8((flags >> 3) & 0x0f);
    Decision::Reply(Message::error_msg(id, op_code, ResponseCode::FormErr))
}

#[cfg(test)]
pub(crate) mod tests;
