//! The nf_tables wire format: numbers from `linux/netfilter/nf_tables.h`,
//! an attribute writer with nesting, and an attribute reader. Only bytes
//! here: what a message means is decided in `batch`, `expr` and `read`.

/// `NFNL_SUBSYS_NFTABLES`: the nfnetlink subsystem of nf_tables.
pub(super) const SUBSYS: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `_END` (`NLMSG_MIN_TYPE` and the next).
pub(super) const BATCH_BEGIN: u16 = 16;
pub(super) const BATCH_END: u16 = 17;

// NFT_MSG_*
pub(super) const NEWTABLE: u16 = 0;
pub(super) const GETTABLE: u16 = 1;
pub(super) const DELTABLE: u16 = 2;
pub(super) const NEWCHAIN: u16 = 3;
pub(super) const GETCHAIN: u16 = 4;
pub(super) const DELCHAIN: u16 = 5;
pub(super) const NEWRULE: u16 = 6;
pub(super) const GETRULE: u16 = 7;
pub(super) const DELRULE: u16 = 8;
pub(super) const NEWSET: u16 = 9;
pub(super) const DELSET: u16 = 11;
pub(super) const NEWSETELEM: u16 = 12;
pub(super) const GETSETELEM: u16 = 13;
pub(super) const DELSETELEM: u16 = 14;
pub(super) const GETGEN: u16 = 16;

// nlmsghdr flags and types
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Bytes of `nlmsghdr` + `nfgenmsg`.
pub(super) const HEADER_LEN: usize = 20;

/// Rounds up to netlink's 4-byte alignment.
pub(super) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes being written, with nests that patch their length when
/// closed. A nest longer than an attribute can say (64 KiB) is remembered
/// and reported by [`Attrs::finish`] instead of being sent truncated.
#[derive(Debug, Default)]
pub(super) struct Attrs {
    buf: Vec<u8>,
    too_long: bool,
}

impl Attrs {
    pub(super) fn new() -> Attrs {
        Attrs::default()
    }

    /// One attribute: header, payload, padding.
    pub(super) fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.too_long |= len > u16::MAX as usize;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string.
    pub(super) fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut p = Vec::with_capacity(s.len() + 1);
        p.extend_from_slice(s.as_bytes());
        p.push(0);
        self.put(ty, &p)
    }

    /// A big-endian u32 (nf_tables' numbers are network order).
    pub(super) fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A big-endian u64.
    pub(super) fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A nested attribute whose content `f` writes.
    pub(super) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = self.buf.len() - start;
        self.too_long |= len > u16::MAX as usize;
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    /// Bytes written so far.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes, or `None` when some attribute outgrew its length field.
    pub(super) fn finish(self) -> Option<Vec<u8>> {
        (!self.too_long).then_some(self.buf)
    }
}

/// Appends one netlink message: `nlmsghdr`, `nfgenmsg` and `attrs`.
/// `res_id` is the subsystem for batch delimiters, 0 otherwise.
pub(super) fn message(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = (HEADER_LEN + attrs.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// The nf_tables message type of `msg` (subsystem in the high byte).
pub(super) fn nft_type(msg: u16) -> u16 {
    (SUBSYS << 8) | msg
}

/// The attributes in `buf` as (type without flags, payload). A truncated
/// attribute ends the walk instead of reading past it.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// A NUL-terminated string attribute's text.
pub(super) fn string(p: &[u8]) -> Option<String> {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).ok().map(str::to_string)
}

/// A big-endian u32 attribute.
pub(super) fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// A big-endian u64 attribute.
pub(super) fn be64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_patch_their_length_and_round_trip() {
        let mut a = Attrs::new();
        a.str(1, "t").nest(3, |n| {
            n.be32(1, 7);
        });
        let bytes = a.finish().unwrap();
        assert_eq!(
            bytes,
            [6, 0, 1, 0, b't', 0, 0, 0, 12, 0, 3, 0x80, 8, 0, 1, 0, 0, 0, 0, 7]
        );
        let got: Vec<u16> = attrs(&bytes).map(|(t, _)| t).collect();
        assert_eq!(got, [1, 3]);
        assert_eq!(
            attrs(&bytes[..10]).count(),
            1,
            "a cut attribute is not read"
        );
    }

    #[test]
    fn an_oversized_nest_is_refused_not_truncated() {
        let mut a = Attrs::new();
        a.nest(3, |n| {
            for _ in 0..20_000 {
                n.be32(1, 0);
            }
        });
        assert!(a.finish().is_none());
    }
}
