//! Rule expressions and their netlink encoding: loads into registers
//! (payload, meta, ct, numgen), tests (cmp, lookup), changes (bitwise,
//! meta/ct set, nat, masquerade) and endings (verdicts, reject). Each
//! encodes to the attributes `nft --debug=netlink` shows for it.

use super::model::{ElemData, Family, Value, Verdict};
use super::wire::Attrs;

/// A 32-bit data register slot, 0 to 15 (`nft` shows slot 0 as "reg 1").
/// A value wider than four bytes fills the slots after its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

impl Reg {
    /// The first data register, where `nft` loads a key.
    pub const R1: Reg = Reg(0);

    /// Slot `slot` (0..=15; larger values are clamped to 15).
    pub fn new(slot: u8) -> Reg {
        Reg(slot.min(15))
    }

    /// The slot number.
    pub fn slot(self) -> u8 {
        self.0
    }

    /// The register number on the wire, normalised as the kernel dumps it:
    /// `NFT_REG_1..4` for a slot on a 16-byte boundary, else `NFT_REG32_*`.
    fn wire(self) -> u32 {
        let s = self.0 as u32;
        if s.is_multiple_of(4) {
            1 + s / 4
        } else {
            8 + s
        }
    }
}

/// Where a payload load starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// `meta` keys the proxy and the policy engine use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// `ct` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    /// `ct status` (`IPS_*` bits, host order).
    Status = 2,
    Mark = 3,
    /// The transport destination port, of one direction (`proto-dst`).
    ProtoDst = 12,
    /// The IPv4 destination address, of one direction (`ip daddr`).
    DstIp = 20,
    /// The IPv6 destination address, of one direction (`ip6 daddr`).
    DstIp6 = 22,
}

/// `ct state` bits (host order), to test with a bitwise mask.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

/// `ct status` bits (host order).
pub mod ct_status {
    /// The connection's destination was translated (`IPS_DST_NAT`).
    pub const DNAT: u32 = 1 << 5;
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

/// How to refuse a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A TCP reset (only for TCP packets).
    TcpReset,
    /// ICMP(v6) port unreachable for the packet's family (`inet` tables).
    PortUnreachable,
    /// ICMP(v6) administratively prohibited (`inet` tables).
    AdminProhibited,
    /// ICMP port unreachable (`ip` tables: the ICMPX codes are `inet`'s).
    Icmp4PortUnreachable,
    /// ICMPv6 port unreachable (`ip6` tables).
    Icmp6PortUnreachable,
}

/// `fib` route type of a local address (`RTN_LOCAL`), as `fib daddr type`
/// loads it (four bytes, host order).
pub const RTN_LOCAL: u32 = 2;

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` from `base` into `dreg`.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// Loads a meta key into `dreg`.
    Meta { key: MetaKey, dreg: Reg },
    /// Sets a meta key (e.g. the packet mark) from `sreg`.
    MetaSet { key: MetaKey, sreg: Reg },
    /// Loads a conntrack key into `dreg`.
    Ct { key: CtKey, dreg: Reg },
    /// Loads a conntrack key of the original direction into `dreg`
    /// (`ct original ip daddr`, `ct original proto-dst`): what the client
    /// asked for, before any NAT.
    CtOriginal { key: CtKey, dreg: Reg },
    /// Sets a conntrack key (e.g. the ct mark) from `sreg`.
    CtSet { key: CtKey, sreg: Reg },
    /// Compares `sreg` with `data`; a false comparison ends the rule.
    Cmp { sreg: Reg, op: CmpOp, data: Vec<u8> },
    /// `dreg = (sreg & mask) ^ xor`; `mask` and `xor` have the same length.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Looks `sreg` up in a set (or map, with `dreg` for the value or the
    /// verdict register for a verdict map); `invert` matches on a miss.
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<LookupDest>,
        invert: bool,
    },
    /// `update @set { <sreg_key> timeout T : <sreg_data> }`: adds the key
    /// (with its value, for a map) from the packet path, or refreshes the
    /// timeout of the element already there (its value is kept). The set
    /// needs `flags.dynamic` and, with a timeout, `flags.timeout`.
    Dynset {
        set: String,
        sreg_key: Reg,
        sreg_data: Option<Reg>,
        timeout: Option<std::time::Duration>,
    },
    /// Puts a constant in `dreg`.
    Immediate { dreg: Reg, data: Value },
    /// Ends with a verdict (an immediate into the verdict register).
    Verdict(Verdict),
    /// Counts packets and bytes.
    Counter,
    /// `dreg = random() % modulus + offset`.
    NumgenRandom {
        dreg: Reg,
        modulus: u32,
        offset: u32,
    },
    /// Source or destination NAT to the address (and port) in registers.
    Nat {
        kind: NatKind,
        family: Family,
        addr: Option<Reg>,
        port: Option<Reg>,
        fully_random: bool,
    },
    /// Source NAT to the outgoing interface's address.
    Masquerade { fully_random: bool },
    /// Refuses the packet.
    Reject(Reject),
    /// Exempts the packet from connection tracking.
    Notrack,
    /// `fib daddr type` into `dreg`: the route type of the destination
    /// address (compare with [`RTN_LOCAL`] for "an address of this host").
    FibDaddrType { dreg: Reg },
    /// `fib saddr type` into `dreg`: the route type of the source address
    /// ([`RTN_LOCAL`]: the packet comes from this host).
    FibSaddrType { dreg: Reg },
}

/// Where a map lookup puts what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupDest {
    /// A data map's value, into this register.
    Data(Reg),
    /// A verdict map's verdict, into the verdict register.
    Verdict,
}

// Payload offsets in the IPv4, IPv6 and transport headers.
impl Expr {
    /// `ip saddr` into `dreg`.
    pub fn ip_saddr(dreg: Reg) -> Expr {
        Expr::payload(Base::Network, 12, 4, dreg)
    }

    /// `ip daddr` into `dreg`.
    pub fn ip_daddr(dreg: Reg) -> Expr {
        Expr::payload(Base::Network, 16, 4, dreg)
    }

    /// `ip6 saddr` into `dreg` (four slots).
    pub fn ip6_saddr(dreg: Reg) -> Expr {
        Expr::payload(Base::Network, 8, 16, dreg)
    }

    /// `ip6 daddr` into `dreg` (four slots).
    pub fn ip6_daddr(dreg: Reg) -> Expr {
        Expr::payload(Base::Network, 24, 16, dreg)
    }

    /// `th sport` (TCP, UDP, SCTP) into `dreg`.
    pub fn th_sport(dreg: Reg) -> Expr {
        Expr::payload(Base::Transport, 0, 2, dreg)
    }

    /// `th dport` into `dreg`.
    pub fn th_dport(dreg: Reg) -> Expr {
        Expr::payload(Base::Transport, 2, 2, dreg)
    }

    /// `meta key` into `dreg`.
    pub fn meta(key: MetaKey, dreg: Reg) -> Expr {
        Expr::Meta { key, dreg }
    }

    /// `sreg == data`.
    pub fn cmp_eq(sreg: Reg, data: &[u8]) -> Expr {
        Expr::Cmp {
            sreg,
            op: CmpOp::Eq,
            data: data.to_vec(),
        }
    }

    /// The two expressions of `meta nfproto <family>` (ipv4 or ipv6), which
    /// an `inet` rule needs before it reads an address.
    pub fn nfproto(family: Family) -> [Expr; 2] {
        [
            Expr::meta(MetaKey::NfProto, Reg::R1),
            Expr::cmp_eq(Reg::R1, &[family.proto()]),
        ]
    }

    /// The three expressions of `ct state & bits != 0`.
    pub fn ct_state_in(bits: u32) -> [Expr; 3] {
        [
            Expr::Ct {
                key: CtKey::State,
                dreg: Reg::R1,
            },
            Expr::Bitwise {
                sreg: Reg::R1,
                dreg: Reg::R1,
                mask: bits.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: Reg::R1,
                op: CmpOp::Neq,
                data: vec![0; 4],
            },
        ]
    }

    /// A lookup of `sreg` in set `set`.
    pub fn lookup(set: impl Into<String>, sreg: Reg) -> Expr {
        Expr::Lookup {
            set: set.into(),
            sreg,
            dreg: None,
            invert: false,
        }
    }

    fn payload(base: Base, offset: u32, len: u32, dreg: Reg) -> Expr {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        }
    }

    /// The expression's name on the wire.
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } | Expr::CtOriginal { .. } | Expr::CtSet { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Dynset { .. } => "dynset",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Counter => "counter",
            Expr::NumgenRandom { .. } => "numgen",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Reject(_) => "reject",
            Expr::Notrack => "notrack",
            Expr::FibDaddrType { .. } | Expr::FibSaddrType { .. } => "fib",
        }
    }

    /// Appends this expression as one `NFTA_LIST_ELEM`.
    pub(super) fn encode(&self, a: &mut Attrs) {
        const LIST_ELEM: u16 = 1;
        const EXPR_NAME: u16 = 1;
        const EXPR_DATA: u16 = 2;
        a.nest(LIST_ELEM, |e| {
            e.str(EXPR_NAME, self.name());
            if !matches!(self, Expr::Notrack) {
                e.nest(EXPR_DATA, |d| self.encode_data(d));
            }
        });
    }

    fn encode_data(&self, d: &mut Attrs) {
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                d.be32(1, dreg.wire())
                    .be32(2, *base as u32)
                    .be32(3, *offset)
                    .be32(4, *len);
            }
            Expr::Meta { key, dreg } => {
                d.be32(2, *key as u32).be32(1, dreg.wire());
            }
            Expr::MetaSet { key, sreg } => {
                d.be32(2, *key as u32).be32(3, sreg.wire());
            }
            Expr::Ct { key, dreg } => {
                d.be32(2, *key as u32).be32(1, dreg.wire());
            }
            Expr::CtOriginal { key, dreg } => {
                // NFTA_CT_DIRECTION: IP_CT_DIR_ORIGINAL.
                d.be32(2, *key as u32).be32(1, dreg.wire()).put(3, &[0]);
            }
            Expr::CtSet { key, sreg } => {
                d.be32(2, *key as u32).be32(4, sreg.wire());
            }
            Expr::Cmp { sreg, op, data } => {
                d.be32(1, sreg.wire()).be32(2, *op as u32);
                d.nest(3, |v| {
                    v.put(DATA_VALUE, data);
                });
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                d.be32(1, sreg.wire())
                    .be32(2, dreg.wire())
                    .be32(3, mask.len() as u32);
                d.nest(4, |v| {
                    v.put(DATA_VALUE, mask);
                });
                d.nest(5, |v| {
                    v.put(DATA_VALUE, xor);
                });
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                d.str(1, set).be32(2, sreg.wire());
                match dreg {
                    Some(LookupDest::Data(r)) => {
                        d.be32(3, r.wire());
                    }
                    Some(LookupDest::Verdict) => {
                        d.be32(3, 0);
                    }
                    None => {}
                }
                if *invert {
                    d.be32(5, 1); // NFT_LOOKUP_F_INV
                }
            }
            Expr::Dynset {
                set,
                sreg_key,
                sreg_data,
                timeout,
            } => {
                // NFTA_DYNSET_SET_NAME, _OP (NFT_DYNSET_OP_UPDATE), _SREG_KEY.
                d.str(1, set).be32(3, 1).be32(4, sreg_key.wire());
                if let Some(r) = sreg_data {
                    d.be32(5, r.wire());
                }
                if let Some(t) = timeout {
                    d.be64(6, t.as_millis() as u64);
                }
            }
            Expr::Immediate { dreg, data } => {
                d.be32(1, dreg.wire());
                d.nest(2, |v| {
                    v.put(DATA_VALUE, &data.0);
                });
            }
            Expr::Verdict(v) => {
                d.be32(1, 0);
                d.nest(2, |n| encode_verdict(n, v));
            }
            Expr::Counter => {
                d.be64(1, 0).be64(2, 0);
            }
            Expr::NumgenRandom {
                dreg,
                modulus,
                offset,
            } => {
                d.be32(1, dreg.wire()).be32(2, *modulus).be32(3, 1);
                if *offset != 0 {
                    d.be32(4, *offset);
                }
            }
            Expr::Nat {
                kind,
                family,
                addr,
                port,
                fully_random,
            } => {
                d.be32(1, *kind as u32).be32(2, family.proto() as u32);
                if let Some(r) = addr {
                    d.be32(3, r.wire());
                }
                if let Some(r) = port {
                    d.be32(5, r.wire());
                }
                if *fully_random {
                    d.be32(7, NAT_RANDOM_FULLY);
                }
            }
            Expr::Masquerade { fully_random } => {
                if *fully_random {
                    d.be32(1, NAT_RANDOM_FULLY);
                }
            }
            Expr::Reject(r) => {
                let (ty, code) = match r {
                    Reject::TcpReset => (1, 0),
                    Reject::PortUnreachable => (2, 1),
                    Reject::AdminProhibited => (2, 3),
                    Reject::Icmp4PortUnreachable => (0, 3),
                    // NFT_REJECT_ICMP_UNREACH with ICMPV6_PORT_UNREACH.
                    Reject::Icmp6PortUnreachable => (0, 4),
                };
                d.be32(1, ty).put(2, &[code]);
            }
            Expr::Notrack => {}
            Expr::FibDaddrType { dreg } => {
                // NFTA_FIB_DREG, NFTA_FIB_RESULT (ADDRTYPE), NFTA_FIB_FLAGS (DADDR).
                d.be32(1, dreg.wire()).be32(2, 3).be32(3, 2);
            }
            Expr::FibSaddrType { dreg } => {
                // The same with NFTA_FIB_F_SADDR.
                d.be32(1, dreg.wire()).be32(2, 3).be32(3, 1);
            }
        }
    }
}

/// `NFTA_DATA_VALUE`.
const DATA_VALUE: u16 = 1;
/// `NFTA_DATA_VERDICT`.
const DATA_VERDICT: u16 = 2;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const NAT_RANDOM_FULLY: u32 = 16;

/// Appends `NFTA_DATA_VERDICT` { code, chain }.
pub(super) fn encode_verdict(a: &mut Attrs, v: &Verdict) {
    a.nest(DATA_VERDICT, |n| {
        n.be32(1, v.code() as u32);
        if let Verdict::Jump(c) | Verdict::Goto(c) = v {
            n.str(2, c);
        }
    });
}

/// Appends element data: a value or a verdict.
pub(super) fn encode_elem_data(a: &mut Attrs, data: &ElemData) {
    match data {
        ElemData::Value(v) => {
            a.put(DATA_VALUE, &v.0);
        }
        ElemData::Verdict(v) => encode_verdict(a, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_numbered_as_the_kernel_dumps_them() {
        // nft --debug=netlink: the second field of a concatenation is
        // "reg 9", the third "reg 10"; the first is "reg 1".
        assert_eq!(Reg::R1.wire(), 1);
        assert_eq!(Reg::new(1).wire(), 9);
        assert_eq!(Reg::new(2).wire(), 10);
        assert_eq!(Reg::new(4).wire(), 2);
    }
}
