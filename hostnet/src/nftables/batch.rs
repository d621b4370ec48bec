//! A transaction as typed operations, and its encoding into one
//! nfnetlink batch (`BATCH_BEGIN`, the messages, `BATCH_END`) that the
//! kernel applies atomically. Element lists are cut into messages that
//! fit netlink's 64 KiB attribute length; each message is named for errors.

use super::expr::{encode_elem_data, Expr};
use super::model::{Chain, Elem, MapData, Policy, Set, Table};
use super::wire::{self, Attrs};
use super::{Error, Result};

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if it does not exist (`nft add table`).
    AddTable(Table),
    /// Deletes the table with everything in it.
    DeleteTable(Table),
    /// Creates the chain if it does not exist.
    AddChain { table: Table, chain: Chain },
    /// Deletes every rule of the chain.
    FlushChain { table: Table, chain: String },
    /// Deletes a regular chain: it must hold no rules (flush it earlier in
    /// the same transaction) and no rule may jump to it.
    DeleteChain { table: Table, chain: String },
    /// Deletes a set or map: no rule may use it.
    DeleteSet { table: Table, set: String },
    /// Creates the set or map if it does not exist.
    AddSet { table: Table, set: Set },
    /// Adds elements; with `exclusive`, one that exists is an error (EEXIST).
    AddElements {
        table: Table,
        set: Set,
        elems: Vec<Elem>,
        exclusive: bool,
    },
    /// Deletes elements (only their keys matter).
    DeleteElements {
        table: Table,
        set: Set,
        elems: Vec<Elem>,
    },
    /// Appends a rule to a chain.
    AddRule {
        table: Table,
        chain: String,
        exprs: Vec<Expr>,
        comment: Option<String>,
    },
}

impl Op {
    /// What the operation does, as errors name it:
    /// `add element to map kube-proxy/service-ips`.
    pub fn describe(&self) -> String {
        match self {
            Op::AddTable(t) => format!("add table {} {}", t.family.name(), t.name),
            Op::DeleteTable(t) => format!("delete table {} {}", t.family.name(), t.name),
            Op::AddChain { table, chain } => format!("add chain {}/{}", table.name, chain.name),
            Op::FlushChain { table, chain } => format!("flush chain {}/{chain}", table.name),
            Op::DeleteChain { table, chain } => format!("delete chain {}/{chain}", table.name),
            Op::DeleteSet { table, set } => format!("delete set {}/{set}", table.name),
            Op::AddSet { table, set } => {
                let kind = if set.data.is_some() { "map" } else { "set" };
                format!("add {kind} {}/{}", table.name, set.name)
            }
            Op::AddElements { table, set, .. } => {
                format!("add element to {} {}/{}", set.kind(), table.name, set.name)
            }
            Op::DeleteElements { table, set, .. } => {
                format!(
                    "delete element from {} {}/{}",
                    set.kind(),
                    table.name,
                    set.name
                )
            }
            Op::AddRule { table, chain, .. } => format!("add rule to chain {}/{chain}", table.name),
        }
    }

    /// True for element additions and deletions (what a partial sync sends).
    pub fn is_element_change(&self) -> bool {
        matches!(self, Op::AddElements { .. } | Op::DeleteElements { .. })
    }
}

/// A transaction: operations applied by the kernel all at once or not at
/// all. Built with the methods below, sent by [`super::NfTables::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty transaction.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends any operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// `add table`.
    pub fn add_table(&mut self, table: &Table) -> &mut Self {
        self.push(Op::AddTable(table.clone()))
    }

    /// `delete table`.
    pub fn delete_table(&mut self, table: &Table) -> &mut Self {
        self.push(Op::DeleteTable(table.clone()))
    }

    /// `add chain`.
    pub fn add_chain(&mut self, table: &Table, chain: Chain) -> &mut Self {
        self.push(Op::AddChain {
            table: table.clone(),
            chain,
        })
    }

    /// `flush chain`.
    pub fn flush_chain(&mut self, table: &Table, chain: &str) -> &mut Self {
        self.push(Op::FlushChain {
            table: table.clone(),
            chain: chain.to_string(),
        })
    }

    /// `delete chain` (see [`Op::DeleteChain`]).
    pub fn delete_chain(&mut self, table: &Table, chain: &str) -> &mut Self {
        self.push(Op::DeleteChain {
            table: table.clone(),
            chain: chain.to_string(),
        })
    }

    /// `delete set` / `delete map`.
    pub fn delete_set(&mut self, table: &Table, set: &str) -> &mut Self {
        self.push(Op::DeleteSet {
            table: table.clone(),
            set: set.to_string(),
        })
    }

    /// `add set` / `add map`.
    pub fn add_set(&mut self, table: &Table, set: Set) -> &mut Self {
        self.push(Op::AddSet {
            table: table.clone(),
            set,
        })
    }

    /// `add element`: elements that exist already are left as they are.
    pub fn add_elements(&mut self, table: &Table, set: &Set, elems: Vec<Elem>) -> &mut Self {
        self.push(Op::AddElements {
            table: table.clone(),
            set: set.clone(),
            elems,
            exclusive: false,
        })
    }

    /// `create element`: an element that exists fails the transaction.
    pub fn create_elements(&mut self, table: &Table, set: &Set, elems: Vec<Elem>) -> &mut Self {
        self.push(Op::AddElements {
            table: table.clone(),
            set: set.clone(),
            elems,
            exclusive: true,
        })
    }

    /// `delete element`.
    pub fn delete_elements(&mut self, table: &Table, set: &Set, elems: Vec<Elem>) -> &mut Self {
        self.push(Op::DeleteElements {
            table: table.clone(),
            set: set.clone(),
            elems,
        })
    }

    /// `add rule` (appended), with an optional comment.
    pub fn add_rule(
        &mut self,
        table: &Table,
        chain: &str,
        exprs: Vec<Expr>,
        comment: Option<&str>,
    ) -> &mut Self {
        self.push(Op::AddRule {
            table: table.clone(),
            chain: chain.to_string(),
            exprs,
            comment: comment.map(str::to_string),
        })
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// True when nothing is to be sent.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when every operation adds or deletes elements: no table,
    /// chain, set or rule changes (so the kernel validates nothing).
    pub fn only_elements(&self) -> bool {
        self.ops.iter().all(Op::is_element_change)
    }

    /// The batch's bytes, starting at sequence number `seq`, and the
    /// sequence number and operation of every message between the
    /// delimiters (an operation may span several messages).
    pub(super) fn encode(&self, seq: u32) -> Result<Encoded> {
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let mut next = seq;
        wire::message(&mut out, wire::BATCH_BEGIN, 0, next, 0, wire::SUBSYS, &[]);
        for (i, op) in self.ops.iter().enumerate() {
            for (ty, flags, family, attrs) in encode_op(op, i as u32 + 1)? {
                next = next.wrapping_add(1);
                let flags = flags | wire::NLM_F_ACK;
                wire::message(&mut out, wire::nft_type(ty), flags, next, family, 0, &attrs);
                messages.push((next, i));
            }
        }
        next = next.wrapping_add(1);
        wire::message(&mut out, wire::BATCH_END, 0, next, 0, wire::SUBSYS, &[]);
        Ok(Encoded {
            bytes: out,
            messages,
        })
    }
}

/// A batch ready to send.
pub(super) struct Encoded {
    pub bytes: Vec<u8>,
    /// (sequence number, index of its operation) per acknowledged message.
    pub messages: Vec<(u32, usize)>,
}

/// One message: type, flags, family, attributes.
type Message = (u16, u16, u8, Vec<u8>);

/// Element lists are cut so that `NFTA_SET_ELEM_LIST_ELEMENTS` stays well
/// under the 64 KiB an attribute length can say.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 60 * 1024;

/// `id` names the object within the transaction (the kernel requires an
/// `NFTA_SET_ID` on every new set, as a handle before it has one).
fn encode_op(op: &Op, id: u32) -> Result<Vec<Message>> {
    use wire::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
    let finish = |a: Attrs| {
        a.finish().ok_or_else(|| Error::Invalid {
            what: op.describe(),
            detail: "an attribute is longer than 64 KiB".into(),
        })
    };
    let mut a = Attrs::new();
    let one = |ty, flags, table: &Table, a| Ok(vec![(ty, flags, table.family.proto(), finish(a)?)]);
    match op {
        Op::AddTable(t) => {
            a.str(1, &t.name);
            one(wire::NEWTABLE, NLM_F_CREATE, t, a)
        }
        Op::DeleteTable(t) => {
            a.str(1, &t.name);
            one(wire::DELTABLE, 0, t, a)
        }
        Op::AddChain { table, chain } => {
            a.str(1, &table.name).str(3, &chain.name);
            if let Some(b) = &chain.base {
                a.nest(4, |h| {
                    h.be32(1, b.hook as u32).be32(2, b.priority as u32);
                });
                a.be32(5, matches!(b.policy, Policy::Accept) as u32);
                a.str(7, b.ty.name());
            }
            one(wire::NEWCHAIN, NLM_F_CREATE, table, a)
        }
        Op::FlushChain { table, chain } => {
            a.str(1, &table.name).str(2, chain);
            one(wire::DELRULE, 0, table, a)
        }
        Op::DeleteChain { table, chain } => {
            a.str(1, &table.name).str(3, chain);
            one(wire::DELCHAIN, 0, table, a)
        }
        Op::DeleteSet { table, set } => {
            a.str(1, &table.name).str(2, set);
            one(wire::DELSET, 0, table, a)
        }
        Op::AddSet { table, set } => {
            encode_set(&mut a, table, set, id);
            one(wire::NEWSET, NLM_F_CREATE, table, a)
        }
        Op::AddElements {
            table,
            set,
            elems,
            exclusive,
        } => {
            let flags = NLM_F_CREATE | if *exclusive { NLM_F_EXCL } else { 0 };
            encode_elements(op, table, set, elems, wire::NEWSETELEM, flags)
        }
        Op::DeleteElements { table, set, elems } => {
            encode_elements(op, table, set, elems, wire::DELSETELEM, 0)
        }
        Op::AddRule {
            table,
            chain,
            exprs,
            comment,
        } => {
            a.str(1, &table.name).str(2, chain);
            a.nest(4, |l| exprs.iter().for_each(|e| e.encode(l)));
            if let Some(c) = comment {
                a.put(7, &comment_userdata(c));
            }
            one(wire::NEWRULE, NLM_F_CREATE | NLM_F_APPEND, table, a)
        }
    }
}

/// Set flags on the wire (`NFT_SET_*`).
const SET_CONSTANT: u32 = 0x2;
const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;
const SET_CONCAT: u32 = 0x80;
/// `NFT_DATA_VERDICT`: the data type of a verdict map.
const DATA_VERDICT: u32 = 0xffff_ff00;

fn encode_set(a: &mut Attrs, table: &Table, set: &Set, id: u32) {
    let concat = set.key.0.len() > 1;
    let mut flags = 0;
    if set.flags.constant {
        flags |= SET_CONSTANT;
    }
    if set.flags.interval {
        flags |= SET_INTERVAL;
        if concat {
            flags |= SET_CONCAT;
        }
    }
    if set.flags.timeout {
        flags |= SET_TIMEOUT;
    }
    if set.flags.dynamic {
        flags |= SET_EVAL;
    }
    if set.data.is_some() {
        flags |= SET_MAP;
    }
    a.str(1, &table.name)
        .str(2, &set.name)
        .be32(3, flags)
        .be32(4, set.key.id())
        .be32(5, set.key.byte_len() as u32);
    match &set.data {
        Some(MapData::Verdict) => {
            a.be32(6, DATA_VERDICT).be32(7, 0);
        }
        Some(MapData::Value(t)) => {
            a.be32(6, t.id()).be32(7, t.byte_len() as u32);
        }
        None => {}
    }
    a.be32(10, id);
    if let Some(t) = set.timeout {
        a.be64(11, t.as_millis() as u64);
    }
    let fields = concat && set.flags.interval;
    if fields || set.size.is_some() {
        // The kernel takes field lengths only with NFT_SET_CONCAT, which
        // it wants exactly for interval concatenations (pipapo).
        // NFTA_SET_DESC { NFTA_SET_DESC_CONCAT { elem { FIELD_LEN } ... } }
        // NFTA_SET_DESC_SIZE: the most elements, for sets rules fill.
        a.nest(9, |d| {
            if let Some(n) = set.size {
                d.be32(1, n);
            }
            if fields {
                d.nest(2, |c| {
                    for f in &set.key.0 {
                        c.nest(1, |e| {
                            e.be32(1, f.byte_len() as u32);
                        });
                    }
                });
            }
        });
    }
}

fn encode_elements(
    op: &Op,
    table: &Table,
    set: &Set,
    elems: &[Elem],
    ty: u16,
    flags: u16,
) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    // A one-field interval set (rbtree) takes a range as two elements, the
    // second flagged as the end and holding the first key after the range;
    // a concatenation (pipapo) takes it as one element with a key end.
    let split = set.flags.interval && set.key.0.len() == 1;
    let mut rest = elems;
    while !rest.is_empty() || out.is_empty() {
        let mut a = Attrs::new();
        a.str(1, &table.name).str(2, &set.name);
        let mut taken = 0;
        a.nest(3, |l| {
            for e in rest {
                if taken > 0 && l.len() > ELEMENTS_PER_MESSAGE_BYTES {
                    break;
                }
                encode_elem(l, e, ty == wire::NEWSETELEM, split);
                taken += 1;
            }
        });
        rest = &rest[taken..];
        let bytes = a.finish().ok_or_else(|| Error::Invalid {
            what: op.describe(),
            detail: "an element is longer than 64 KiB".into(),
        })?;
        out.push((ty, flags, table.family.proto(), bytes));
    }
    Ok(out)
}

fn encode_elem(l: &mut Attrs, e: &Elem, with_data: bool, split: bool) {
    if let (true, Some(end)) = (split, &e.key_end) {
        let start = Elem {
            key_end: None,
            ..e.clone()
        };
        encode_elem(l, &start, with_data, false);
        if let Some(after) = next_value(&end.0) {
            l.nest(1, |n| {
                n.nest(1, |k| {
                    k.put(1, &after);
                });
                n.be32(3, ELEM_INTERVAL_END);
            });
        }
        return;
    }
    l.nest(1, |n| {
        n.nest(1, |k| {
            k.put(1, &e.key.0);
        });
        if let Some(end) = &e.key_end {
            n.nest(10, |k| {
                k.put(1, &end.0);
            });
        }
        if with_data {
            if let Some(d) = &e.data {
                n.nest(2, |v| encode_elem_data(v, d));
            }
            if let Some(t) = e.timeout {
                n.be64(4, t.as_millis() as u64);
            }
        }
    });
}

/// `NFT_SET_ELEM_INTERVAL_END`.
const ELEM_INTERVAL_END: u32 = 1;

/// The big-endian value after `v`, or `None` after the largest.
fn next_value(v: &[u8]) -> Option<Vec<u8>> {
    let mut n = v.to_vec();
    for b in n.iter_mut().rev() {
        let (sum, carry) = b.overflowing_add(1);
        *b = sum;
        if !carry {
            return Some(n);
        }
    }
    None
}

/// A rule comment as `nft` stores it: TLV `NFTNL_UDATA_RULE_COMMENT` (0),
/// length including the NUL, text, NUL. Comments are cut at 127 bytes.
fn comment_userdata(c: &str) -> Vec<u8> {
    let mut text: Vec<u8> = c.bytes().take(127).collect();
    text.push(0);
    let mut u = vec![0, text.len() as u8];
    u.extend_from_slice(&text);
    u
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
