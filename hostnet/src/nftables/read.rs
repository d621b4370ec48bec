//! The reads a resync needs, and no more: whether a table exists (with its
//! handle), the chains of a table, the elements of a set or map; and the
//! counters of a chain's rules, for metrics. Replies
//! are decoded into the model's types; attributes we do not use are skipped.

use super::model::{Elem, ElemData, Table, Value, Verdict};
use super::socket::NfTablesSocket;
use super::wire::{self, attrs};
use super::{Error, Result};

/// A table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The kernel's handle: a recreated table gets a new one.
    pub handle: u64,
    /// How many chains, sets and objects it holds.
    pub use_count: u32,
}

/// A chain as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub name: String,
    pub handle: u64,
    /// True for a base chain (one with a hook).
    pub base: bool,
}

pub(super) fn table(s: &NfTablesSocket, table: &Table) -> Result<Option<TableInfo>> {
    let what = format!("read table {} {}", table.family.name(), table.name);
    let mut req = wire::Attrs::new();
    req.str(1, &table.name);
    let req = req.finish().unwrap_or_default();
    let mut info = None;
    let got = s.request(&what, wire::GETTABLE, table.family.proto(), 0, &req, |m| {
        info = Some(decode_table(m));
        Ok(())
    });
    match got {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(info),
    }
}

fn decode_table(m: &[u8]) -> TableInfo {
    let mut t = TableInfo {
        handle: 0,
        use_count: 0,
    };
    for (ty, p) in attrs(m) {
        match ty {
            3 => t.use_count = wire::be32(p).unwrap_or_default(),
            4 => t.handle = wire::be64(p).unwrap_or_default(),
            _ => {}
        }
    }
    t
}

pub(super) fn chains(s: &NfTablesSocket, table: &Table) -> Result<Vec<ChainInfo>> {
    let what = format!(
        "list chains of table {} {}",
        table.family.name(),
        table.name
    );
    let mut out = Vec::new();
    s.request(
        &what,
        wire::GETCHAIN,
        table.family.proto(),
        wire::NLM_F_DUMP,
        &[],
        |m| {
            // The dump holds every table's chains of this family.
            let mut owner = None;
            let mut chain = ChainInfo {
                name: String::new(),
                handle: 0,
                base: false,
            };
            for (ty, p) in attrs(m) {
                match ty {
                    1 => owner = wire::string(p),
                    2 => chain.handle = wire::be64(p).unwrap_or_default(),
                    3 => chain.name = wire::string(p).unwrap_or_default(),
                    4 => chain.base = true,
                    _ => {}
                }
            }
            if owner.as_deref() == Some(table.name.as_str()) {
                out.push(chain);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// A rule's counter as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    /// The rule's comment, if it has one.
    pub comment: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

pub(super) fn rule_counters(
    s: &NfTablesSocket,
    table: &Table,
    chain: &str,
) -> Result<Vec<RuleCounter>> {
    let what = format!("list rules of {}/{chain}", table.name);
    let mut req = wire::Attrs::new();
    req.str(1, &table.name).str(2, chain);
    let req = req.finish().unwrap_or_default();
    let mut out = Vec::new();
    s.request(
        &what,
        wire::GETRULE,
        table.family.proto(),
        wire::NLM_F_DUMP,
        &req,
        |m| {
            let mut comment = None;
            let mut counter = None;
            for (ty, p) in attrs(m) {
                match ty {
                    // NFTA_RULE_EXPRESSIONS: { LIST_ELEM { NAME, DATA } }
                    4 => counter = attrs(p).find_map(|(_, e)| decode_counter(e)).or(counter),
                    // NFTA_RULE_USERDATA: TLV type 0 is the comment.
                    7 if p.len() > 2 && p[0] == 0 => {
                        let text = &p[2..(2 + p[1] as usize).min(p.len())];
                        comment = wire::string(text);
                    }
                    _ => {}
                }
            }
            if let Some((bytes, packets)) = counter {
                out.push(RuleCounter {
                    comment,
                    packets,
                    bytes,
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// (bytes, packets) of a `counter` expression.
fn decode_counter(e: &[u8]) -> Option<(u64, u64)> {
    let mut is_counter = false;
    let mut data = None;
    for (ty, p) in attrs(e) {
        match ty {
            1 => is_counter = wire::string(p).as_deref() == Some("counter"),
            2 => data = Some(p),
            _ => {}
        }
    }
    let data = data.filter(|_| is_counter)?;
    let (mut bytes, mut packets) = (0, 0);
    for (ty, p) in attrs(data) {
        match ty {
            1 => bytes = wire::be64(p).unwrap_or_default(),
            2 => packets = wire::be64(p).unwrap_or_default(),
            _ => {}
        }
    }
    Some((bytes, packets))
}

pub(super) fn elements(s: &NfTablesSocket, table: &Table, set: &str) -> Result<Vec<Elem>> {
    let what = format!("list elements of {}/{set}", table.name);
    let mut req = wire::Attrs::new();
    req.str(1, &table.name).str(2, set);
    let req = req.finish().unwrap_or_default();
    let mut out = Vec::new();
    s.request(
        &what,
        wire::GETSETELEM,
        table.family.proto(),
        wire::NLM_F_DUMP,
        &req,
        |m| {
            for (ty, list) in attrs(m) {
                if ty == 3 {
                    for (_, e) in attrs(list) {
                        out.push(decode_elem(e).ok_or_else(|| Error::Decode {
                            what: what.clone(),
                            detail: "an element without a key".into(),
                        })?);
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// One `NFTA_LIST_ELEM` of a set element dump. The interval end marker
/// elements of one-field interval sets are returned as they are (flag
/// aside): resync compares keys.
fn decode_elem(e: &[u8]) -> Option<Elem> {
    let mut key = None;
    let mut elem = Elem::key(Value(Vec::new()));
    for (ty, p) in attrs(e) {
        match ty {
            1 => key = data_value(p),
            10 => elem.key_end = data_value(p).map(Value),
            2 => elem.data = decode_data(p),
            4 => elem.timeout = wire::be64(p).map(std::time::Duration::from_millis),
            5 => elem.expires = wire::be64(p).map(std::time::Duration::from_millis),
            _ => {}
        }
    }
    elem.key = Value(key?);
    Some(elem)
}

/// The bytes of an `NFTA_DATA_VALUE` inside `p`.
fn data_value(p: &[u8]) -> Option<Vec<u8>> {
    attrs(p).find(|(t, _)| *t == 1).map(|(_, v)| v.to_vec())
}

fn decode_data(p: &[u8]) -> Option<ElemData> {
    for (ty, v) in attrs(p) {
        match ty {
            1 => return Some(ElemData::Value(Value(v.to_vec()))),
            2 => return decode_verdict(v).map(ElemData::Verdict),
            _ => {}
        }
    }
    None
}

fn decode_verdict(p: &[u8]) -> Option<Verdict> {
    let mut code = None;
    let mut chain = None;
    for (ty, v) in attrs(p) {
        match ty {
            1 => code = wire::be32(v).map(|c| c as i32),
            2 => chain = wire::string(v),
            _ => {}
        }
    }
    Some(match code? {
        0 => Verdict::Drop,
        1 => Verdict::Accept,
        -1 => Verdict::Continue,
        -3 => Verdict::Jump(chain?),
        -4 => Verdict::Goto(chain?),
        -5 => Verdict::Return,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::expr::encode_elem_data;

    #[test]
    fn an_encoded_verdict_element_decodes_back() {
        let mut a = wire::Attrs::new();
        a.nest(1, |k| {
            k.put(1, &[10, 0, 0, 1]);
        });
        a.nest(2, |d| {
            encode_elem_data(d, &ElemData::Verdict(Verdict::Jump("svc-x".into())))
        });
        let got = decode_elem(&a.finish().unwrap()).unwrap();
        assert_eq!(
            got,
            Elem::verdict(Value(vec![10, 0, 0, 1]), Verdict::Jump("svc-x".into()))
        );
    }
}
