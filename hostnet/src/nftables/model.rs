//! The nf_tables objects a batch creates, as plain values: tables, chains,
//! sets and maps with their key and data types, elements and verdicts.
//! Values know their wire layout (concatenations pad each field to four
//! bytes, as the kernel's registers do); they send nothing.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// An address family of tables (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 in one table.
    Inet,
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
}

impl Family {
    /// The `NFPROTO_*` number.
    pub fn proto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    /// The name `nft` uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// A table: its family and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    pub family: Family,
    pub name: String,
}

impl Table {
    /// The table `name` of `family`.
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
        }
    }
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    pub(super) fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// A netfilter hook (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// What a base chain does with a packet no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: where the kernel calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub ty: ChainType,
    pub hook: Hook,
    /// Lower runs first (`dstnat` is -100, `srcnat` 100, `filter` 0).
    pub priority: i32,
    pub policy: Policy,
}

/// A chain: regular (reached by jump/goto) or a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A regular chain, reached only by jump or goto.
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
        }
    }

    /// A base chain of type `ty` on `hook` at `priority`, policy accept.
    pub fn base(name: impl Into<String>, ty: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain {
            name: name.into(),
            base: Some(BaseChain {
                ty,
                hook,
                priority,
                policy: Policy::Accept,
            }),
        }
    }
}

/// A data type of a set key or map value, as `nft` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    /// A layer 4 protocol number (one byte).
    InetProto,
    /// A port (two bytes, network order).
    InetService,
    /// A packet or conntrack mark (four bytes, host order).
    Mark,
    /// An interface name (16 bytes, NUL padded).
    IfName,
}

impl DataType {
    /// `nft`'s type number, which `nft list` uses to print values.
    pub(super) fn id(self) -> u32 {
        match self {
            DataType::Ipv4Addr => 7,
            DataType::Ipv6Addr => 8,
            DataType::InetProto => 12,
            DataType::InetService => 13,
            DataType::Mark => 19,
            DataType::IfName => 41,
        }
    }

    /// Bytes of one value.
    pub fn byte_len(self) -> usize {
        match self {
            DataType::Ipv4Addr | DataType::Mark => 4,
            DataType::Ipv6Addr | DataType::IfName => 16,
            DataType::InetProto => 1,
            DataType::InetService => 2,
        }
    }
}

/// A key or value type: one data type or a concatenation (`a . b . c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyType(pub Vec<DataType>);

impl KeyType {
    /// `nft`'s type number: a concatenation packs six bits per field.
    pub(super) fn id(&self) -> u32 {
        self.0.iter().fold(0, |acc, t| (acc << 6) | t.id())
    }

    /// Bytes of a value: one field as it is, a concatenation with every
    /// field padded to a 4-byte register.
    pub fn byte_len(&self) -> usize {
        match self.0.as_slice() {
            [one] => one.byte_len(),
            fields => fields.iter().map(|f| register_len(f.byte_len())).sum(),
        }
    }

    /// The 32-bit register slots the fields of a concatenation load into,
    /// starting at `first` (the layout a lookup of this type expects).
    pub fn registers(&self, first: super::Reg) -> Vec<super::Reg> {
        let mut slot = first.slot();
        self.0
            .iter()
            .map(|f| {
                let r = super::Reg::new(slot);
                slot += (register_len(f.byte_len()) / 4) as u8;
                r
            })
            .collect()
    }
}

fn register_len(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// What a map's elements map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapData {
    /// A verdict map (`vmap`): accept, drop, jump, goto...
    Verdict,
    /// A data map: a value of this type, e.g. `ipv4_addr . inet_service`.
    Value(KeyType),
}

/// Set flags (`NFT_SET_*`) a caller chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetFlags {
    /// Elements are ranges (prefixes, port ranges).
    pub interval: bool,
    /// Elements may carry a timeout.
    pub timeout: bool,
    /// Elements never change after the set is created.
    pub constant: bool,
    /// Rules add and refresh elements from the packet path (`update @set`).
    pub dynamic: bool,
}

/// A named set, or a map when `data` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: KeyType,
    pub data: Option<MapData>,
    pub flags: SetFlags,
    /// Default timeout of elements (needs `flags.timeout`).
    pub timeout: Option<Duration>,
    /// The most elements the set holds (a set that rules fill needs one).
    pub size: Option<u32>,
}

impl Set {
    /// A set of `key` values.
    pub fn new(name: impl Into<String>, key: &[DataType]) -> Set {
        Set {
            name: name.into(),
            key: KeyType(key.to_vec()),
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
        }
    }

    /// A map from `key` values to `data`.
    pub fn map(name: impl Into<String>, key: &[DataType], data: MapData) -> Set {
        Set {
            data: Some(data),
            ..Set::new(name, key)
        }
    }

    /// "map" or "set", as messages name it.
    pub fn kind(&self) -> &'static str {
        if self.data.is_some() {
            "map"
        } else {
            "set"
        }
    }

    /// The same set with `flags`.
    pub fn with_flags(self, flags: SetFlags) -> Set {
        Set { flags, ..self }
    }
}

/// A verdict: what happens to the packet next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

impl Verdict {
    /// The kernel's verdict code (`NF_*`, `NFT_*`).
    pub(super) fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }
}

/// One field of a key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Proto(u8),
    Port(u16),
    Mark(u32),
    IfName(&'a str),
}

impl Field<'_> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Field::Ipv4(a) => a.octets().to_vec(),
            Field::Ipv6(a) => a.octets().to_vec(),
            Field::Proto(p) => vec![*p],
            Field::Port(p) => p.to_be_bytes().to_vec(),
            Field::Mark(m) => m.to_ne_bytes().to_vec(),
            Field::IfName(n) => {
                let mut b = n.as_bytes().to_vec();
                b.resize(16, 0);
                b
            }
        }
    }
}

/// A key or value in wire layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub Vec<u8>);

impl Value {
    /// One field as it is, or a concatenation with each field padded to
    /// four bytes (the layout of `a . b . c` keys).
    pub fn of(fields: &[Field<'_>]) -> Value {
        match fields {
            [one] => Value(one.bytes()),
            _ => Value(
                fields
                    .iter()
                    .flat_map(|f| {
                        let mut b = f.bytes();
                        b.resize(register_len(b.len()), 0);
                        b
                    })
                    .collect(),
            ),
        }
    }
}

/// What a map element maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    Verdict(Verdict),
    Value(Value),
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub key: Value,
    /// The inclusive end of a range, for interval sets.
    pub key_end: Option<Value>,
    pub data: Option<ElemData>,
    /// A timeout of its own (sets with `flags.timeout`).
    pub timeout: Option<Duration>,
    /// The time left before it expires (read back only; not sent).
    pub expires: Option<Duration>,
}

impl Elem {
    /// A set element.
    pub fn key(key: Value) -> Elem {
        Elem {
            key,
            key_end: None,
            data: None,
            timeout: None,
            expires: None,
        }
    }

    /// A map element with a value.
    pub fn map(key: Value, data: Value) -> Elem {
        Elem {
            data: Some(ElemData::Value(data)),
            ..Elem::key(key)
        }
    }

    /// A verdict map element.
    pub fn verdict(key: Value, verdict: Verdict) -> Elem {
        Elem {
            data: Some(ElemData::Verdict(verdict)),
            ..Elem::key(key)
        }
    }

    /// A range `start..=end` of an interval set.
    pub fn range(start: Value, end: Value) -> Elem {
        Elem {
            key_end: Some(end),
            ..Elem::key(start)
        }
    }

    /// The same element with its own timeout.
    pub fn with_timeout(self, timeout: Duration) -> Elem {
        Elem {
            timeout: Some(timeout),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_pad_each_field_and_pack_type_ids() {
        let k = KeyType(vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ]);
        assert_eq!(k.byte_len(), 12);
        // nft --debug=mnl: `type ipv4_addr . inet_service` sends 0x1cd.
        assert_eq!(
            KeyType(vec![DataType::Ipv4Addr, DataType::InetService]).id(),
            0x1cd
        );
        assert_eq!(KeyType(vec![DataType::InetService]).byte_len(), 2);
        let v = Value::of(&[Field::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), Field::Port(80)]);
        assert_eq!(v.0, [10, 0, 0, 1, 0, 80, 0, 0]);
        assert_eq!(Value::of(&[Field::Port(80)]).0, [0, 80]);
    }
}
