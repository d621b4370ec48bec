//! A query read in place, without decoding: the header, the one question
//! and the OPT record, as slices of the received packet. Only the plain
//! shape every resolver sends is accepted (one question, no compression in
//! it, at most an OPT of EDNS version 0, nothing after it); anything else
//! gives `None` and takes the decoding path, so a query read here is one
//! hickory would also have read, with the same meaning.

use super::{MAX_UDP_SIZE, MIN_UDP_SIZE};

/// Longest name on the wire, root label included (RFC 1035).
const MAX_NAME: usize = 255;
/// A cache key's length at most: the name, type and class.
pub const MAX_KEY: usize = MAX_NAME + 4;
/// The OPT record of a response: root owner, type, class (payload size),
/// extended rcode, version, flags, no options.
pub const OPT_LEN: usize = 11;
/// EDNS options whose content hickory checks when it decodes a query
/// (NSID, client subnet): a query carrying them takes the decoding path.
const CHECKED_OPTIONS: [u16; 2] = [3, 8];
/// Header flag bits: QR, opcode, Z (in the 16-bit flags word).
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const Z: u16 = 0x0040;

/// The parts of a query a cached answer needs.
#[derive(Debug, Clone, Copy)]
pub struct QueryView<'a> {
    packet: &'a [u8],
    /// Offset just past the question's name.
    name_end: usize,
    /// The OPT record's payload size and DO bit, when there is one.
    edns: Option<(u16, bool)>,
}

impl<'a> QueryView<'a> {
    /// Reads `packet` as a standard query (QUERY opcode, one question),
    /// or `None` for any other shape.
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
        };
        let flags = u16_at(2)?;
        if flags & (QR | OPCODE | Z) != 0 || u16_at(4)? != 1 || u16_at(6)? != 0 || u16_at(8)? != 0 {
            return None;
        }
        let additionals = u16_at(10)?;
        let mut at = 12;
        loop {
            let len = usize::from(*packet.get(at)?);
            if len > 63 {
                return None; // a compression pointer or an extended label type
            }
            at += 1 + len;
            if at - 12 > MAX_NAME {
                return None;
            }
            if len == 0 {
                break;
            }
        }
        let name_end = at;
        at += 4; // type, class
        let edns = match additionals {
            0 => None,
            1 => {
                if packet.get(at) != Some(&0) || u16_at(at + 1)? != 41 {
                    return None;
                }
                let payload = u16_at(at + 3)?;
                let (version, flags) = (*packet.get(at + 6)?, u16_at(at + 7)?);
                if version != 0 {
                    return None; // BADVERS, from the decoding path
                }
                let rdlen = usize::from(u16_at(at + 9)?);
                at += OPT_LEN;
                let end = at + rdlen;
                while at < end {
                    let (code, len) = (u16_at(at)?, usize::from(u16_at(at + 2)?));
                    if CHECKED_OPTIONS.contains(&code) {
                        return None;
                    }
                    at += 4 + len;
                }
                if at != end {
                    return None;
                }
                Some((payload, flags & 0x8000 != 0))
            }
            _ => return None,
        };
        (at == packet.len()).then_some(Self {
            packet,
            name_end,
            edns,
        })
    }

    /// The query's id, as sent.
    pub fn id(&self) -> [u8; 2] {
        [self.packet[0], self.packet[1]]
    }

    /// Whether the client set RD (recursion desired).
    pub fn recursion_desired(&self) -> bool {
        self.packet[2] & 0x01 != 0
    }

    /// Whether the client set CD (checking disabled).
    pub fn checking_disabled(&self) -> bool {
        self.packet[3] & 0x10 != 0
    }

    /// The question's name in wire form, in the client's case.
    pub fn name(&self) -> &'a [u8] {
        &self.packet[12..self.name_end]
    }

    /// The question (name, type, class) in wire form.
    pub fn question(&self) -> &'a [u8] {
        &self.packet[12..self.name_end + 4]
    }

    /// The EDNS0 payload size and DO bit, when the query has an OPT.
    pub fn edns(&self) -> Option<(u16, bool)> {
        self.edns
    }

    /// The largest UDP response the client accepts, as
    /// [`super::udp_limit`] computes it.
    pub fn udp_limit(&self) -> usize {
        self.edns.map_or(MIN_UDP_SIZE, |(size, _)| {
            usize::from(size).clamp(MIN_UDP_SIZE, MAX_UDP_SIZE)
        })
    }

    /// The question lowercased (ASCII, as DNS compares names) into `buf`:
    /// the cache key.
    pub fn key<'b>(&self, buf: &'b mut [u8; MAX_KEY]) -> &'b [u8] {
        let q = self.question();
        let key = &mut buf[..q.len()];
        key.copy_from_slice(q);
        key[..q.len() - 4].make_ascii_lowercase();
        key
    }

    /// Whether the name is `origin` (lowercase wire form) or below it,
    /// case-insensitively.
    pub fn within(&self, origin: &[u8]) -> bool {
        let name = self.name();
        let mut at = 0;
        loop {
            let rest = &name[at..];
            if rest.len() == origin.len() && rest.eq_ignore_ascii_case(origin) {
                return true;
            }
            let len = usize::from(name[at]);
            if len == 0 {
                return false;
            }
            at += 1 + len;
        }
    }
}
