//! Encoding tests: bytes compared with what `nft --debug=mnl` (nftables
//! 1.0.6) sends for the same command, and the batch's framing.

use std::net::Ipv4Addr;

use super::*;
use crate::nftables::{
    DataType, Elem, Expr, Family, Field, KeyType, MapData, MetaKey, Reg, Set, SetFlags, Table,
    Value,
};

fn kube() -> Table {
    Table::new(Family::Inet, "t")
}

/// The messages of an encoded batch as (type, flags, seq, family, attrs).
fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(bytes[off + 4..off + 6].try_into().unwrap());
        let flags = u16::from_ne_bytes(bytes[off + 6..off + 8].try_into().unwrap());
        let seq = u32::from_ne_bytes(bytes[off + 8..off + 12].try_into().unwrap());
        out.push((
            ty,
            flags,
            seq,
            bytes[off + 16],
            bytes[off + 20..off + len].to_vec(),
        ));
        off += len;
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn a_batch_is_framed_by_begin_and_end_with_acks_asked_in_between() {
    let mut b = Batch::new();
    b.add_table(&kube());
    let enc = b.encode(7).unwrap();
    let m = messages(&enc.bytes);
    assert_eq!(m.len(), 3);
    // nft: begin/end are type 16/17, family 0, res_id NFNL_SUBSYS_NFTABLES
    // ("00 00 00 0a" in the extra header).
    assert_eq!((m[0].0, m[0].2), (16, 7));
    assert_eq!((m[2].0, m[2].2), (17, 9));
    assert_eq!(&enc.bytes[16..20], &[0, 0, 0, 0x0a]);
    assert_eq!(m[1].0, 0x0a00, "NFT_MSG_NEWTABLE");
    assert_eq!(m[1].1, 0x1 | 0x4 | 0x400, "request, ack, create");
    assert_eq!(m[1].3, 1, "NFPROTO_INET");
    // `add table inet t`: NAME "t", then nft adds FLAGS 0 (we omit it).
    assert_eq!(m[1].4, hex("06 00 01 00 74 00 00 00"));
    assert_eq!(enc.messages, vec![(8, 0)]);
}

#[test]
fn a_concatenated_set_and_its_element_match_nft() {
    let set = Set::new("s", &[DataType::Ipv4Addr, DataType::InetService]);
    let mut b = Batch::new();
    b.add_set(&kube(), set.clone()).add_elements(
        &kube(),
        &set,
        vec![Elem::key(Value::of(&[
            Field::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            Field::Port(80),
        ]))],
    );
    let m = messages(&b.encode(0).unwrap().bytes);
    // nft --debug=mnl 'add set inet t s { type ipv4_addr . inet_service; }':
    // TABLE "t", NAME "s", FLAGS 0, KEY_TYPE 0x1cd, KEY_LEN 8, ID (then
    // nft's userdata, which the kernel keeps for nft only).
    let want_set = hex("06 00 01 00 74 00 00 00  06 00 02 00 73 00 00 00
         08 00 03 00 00 00 00 00  08 00 04 00 00 00 01 cd
         08 00 05 00 00 00 00 08  08 00 0a 00 00 00 00 01");
    assert_eq!(m[1].4, want_set);
    // 'add element inet t s { 10.0.0.1 . 80 }': TABLE, SET, then
    // ELEMENTS { elem { KEY { VALUE 0a000001 00500000 } } }.
    let want_elem = hex("06 00 01 00 74 00 00 00  06 00 02 00 73 00 00 00
         18 00 03 80  14 00 01 80  10 00 01 80  0c 00 01 00
         0a 00 00 01 00 50 00 00");
    assert_eq!(m[2].4, want_elem);
}

#[test]
fn a_rule_matches_nft_debug_netlink() {
    // nft --debug=netlink for `meta mark set 0x4000 return` with a comment:
    //   [ immediate reg 1 0x00004000 ] [ meta set mark with reg 1 ]
    //   [ immediate reg 0 return ]  userdata = { \x00\x03hi\x00 }
    let mut b = Batch::new();
    b.add_rule(
        &kube(),
        "sub",
        vec![
            Expr::Immediate {
                dreg: Reg::R1,
                data: Value::of(&[Field::Mark(0x4000)]),
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: Reg::R1,
            },
            Expr::Verdict(crate::nftables::Verdict::Return),
        ],
        Some("hi"),
    );
    let m = messages(&b.encode(0).unwrap().bytes);
    let attrs = &m[1].4;
    let ud = hex("00 03 68 69 00");
    let tail = &attrs[attrs.len() - 12..];
    assert_eq!(&tail[..4], &[9, 0, 7, 0], "NFTA_RULE_USERDATA, 5 bytes");
    assert_eq!(&tail[4..9], &ud[..]);
    // The meta set: NAME "meta", DATA { KEY 3 (mark), SREG 1 }.
    let meta = hex("09 00 01 00 6d 65 74 61 00 00 00 00
         14 00 02 80  08 00 02 00 00 00 00 03  08 00 03 00 00 00 00 01");
    assert!(
        attrs.windows(meta.len()).any(|w| w == &meta[..]),
        "meta set mark encoded as nft does"
    );
}

#[test]
fn element_lists_are_cut_to_fit_an_attribute() {
    let map = Set::map(
        "m",
        &[DataType::Ipv4Addr, DataType::InetService],
        MapData::Value(KeyType(vec![DataType::Ipv4Addr, DataType::InetService])),
    );
    let elems: Vec<Elem> = (0..10_000u32)
        .map(|i| {
            let k = Value::of(&[Field::Ipv4(Ipv4Addr::from(i)), Field::Port(80)]);
            Elem::map(k.clone(), k)
        })
        .collect();
    let mut b = Batch::new();
    b.add_elements(&kube(), &map, elems);
    let enc = b.encode(0).unwrap();
    assert!(enc.messages.len() > 1, "{} messages", enc.messages.len());
    assert!(enc.messages.iter().all(|(_, op)| *op == 0));
    assert!(b.only_elements());
    assert_eq!(b.ops()[0].describe(), "add element to map t/m");
}

#[test]
fn a_one_field_range_is_sent_as_start_and_end_elements() {
    let set = Set::new("cidrs", &[DataType::Ipv4Addr]).with_flags(SetFlags {
        interval: true,
        ..SetFlags::default()
    });
    let mut b = Batch::new();
    b.add_elements(
        &kube(),
        &set,
        vec![Elem::range(
            Value::of(&[Field::Ipv4(Ipv4Addr::new(10, 0, 0, 0))]),
            Value::of(&[Field::Ipv4(Ipv4Addr::new(10, 0, 0, 255))]),
        )],
    );
    let m = messages(&b.encode(0).unwrap().bytes);
    let end = hex("0c 00 01 80 08 00 01 00 0a 00 01 00 08 00 03 00 00 00 00 01");
    assert!(
        m[1].4.windows(end.len()).any(|w| w == &end[..]),
        "end 10.0.1.0 flagged"
    );
}
