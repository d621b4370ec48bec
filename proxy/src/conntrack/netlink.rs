//! ctnetlink over a NETLINK_NETFILTER socket: dump the IPv4 (or IPv6)
//! flows of one protocol and delete one flow by its original tuple and id, through
//! [`NfSocket`]; the socket belongs to the namespace of the thread that
//! opened it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Conntrack, Flow};
use crate::nfnetlink::{attrs, put, NfSocket, Request, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP};
use crate::{Error, Result};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// The conntrack table of the namespace the handle was opened in.
pub struct NetlinkConntrack {
    sock: NfSocket,
    /// The family whose flows [`Conntrack::flows`] lists.
    family: u8,
}

impl NetlinkConntrack {
    /// Opens a ctnetlink socket in the calling thread's network namespace,
    /// listing IPv4 flows.
    pub fn open() -> Result<NetlinkConntrack> {
        Ok(NetlinkConntrack {
            sock: NfSocket::open()?,
            family: AF_INET,
        })
    }

    /// The same, listing IPv6 flows.
    pub fn open_ipv6() -> Result<NetlinkConntrack> {
        Ok(NetlinkConntrack {
            sock: NfSocket::open()?,
            family: AF_INET6,
        })
    }

    fn request(what: &str, msg_type: u16, flags: u16, family: u8) -> Request<'_> {
        Request {
            what,
            subsys: NFNL_SUBSYS_CTNETLINK,
            msg_type,
            family,
            flags,
        }
    }
}

impl Conntrack for NetlinkConntrack {
    fn flows(&self, proto: u8) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        let req = Self::request(
            "dump conntrack flows",
            IPCTNL_MSG_CT_GET,
            NLM_F_DUMP,
            self.family,
        );
        self.sock.exchange(req, &[], |attrs| {
            if let Some(f) = parse_flow(attrs) {
                if f.proto == proto {
                    out.push(f);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn delete(&self, flow: &Flow) -> Result<bool> {
        let what = format!(
            "delete conntrack flow {}:{} -> {}:{}",
            flow.orig_src, flow.orig_sport, flow.orig_dst, flow.orig_dport
        );
        let mut attrs = Vec::new();
        let mut ip = Vec::new();
        let family = match (flow.orig_src, flow.orig_dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                put(&mut ip, CTA_IP_V4_SRC, &src.octets());
                put(&mut ip, CTA_IP_V4_DST, &dst.octets());
                AF_INET
            }
            (src, dst) => {
                put(&mut ip, CTA_IP_V6_SRC, &v6(src).octets());
                put(&mut ip, CTA_IP_V6_DST, &v6(dst).octets());
                AF_INET6
            }
        };
        let mut l4 = Vec::new();
        put(&mut l4, CTA_PROTO_NUM, &[flow.proto]);
        put(&mut l4, CTA_PROTO_SRC_PORT, &flow.orig_sport.to_be_bytes());
        put(&mut l4, CTA_PROTO_DST_PORT, &flow.orig_dport.to_be_bytes());
        let mut tuple = Vec::new();
        put(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        put(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
        put(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        if let Some(id) = flow.id {
            put(&mut attrs, CTA_ID, &id.to_be_bytes());
        }
        if let Some(zone) = flow.zone {
            put(&mut attrs, CTA_ZONE, &zone.to_be_bytes());
        }
        let req = Self::request(&what, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family);
        match self.sock.exchange(req, &attrs, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn ipv4(b: &[u8]) -> Option<IpAddr> {
    let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(o)))
}

fn ipv6(b: &[u8]) -> Option<IpAddr> {
    let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(o)))
}

/// `ip` as IPv6 (an IPv4 address mapped, which no IPv6 flow holds).
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

/// (proto, src, dst, sport, dport) of a CTA_TUPLE_* payload.
fn parse_tuple(b: &[u8]) -> Option<(u8, IpAddr, IpAddr, u16, u16)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_IP_V4_SRC => src = ipv4(p),
                        CTA_IP_V4_DST => dst = ipv4(p),
                        CTA_IP_V6_SRC => src = ipv6(p),
                        CTA_IP_V6_DST => dst = ipv6(p),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM => proto = p.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(p)?,
                        CTA_PROTO_DST_PORT => dport = be16(p)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, src?, dst?, sport, dport))
}

/// One dumped flow (IPv4 or IPv6; others give `None`).
fn parse_flow(b: &[u8]) -> Option<Flow> {
    let (mut orig, mut reply, mut id, mut zone) = (None, None, None, None);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(p),
            CTA_TUPLE_REPLY => reply = parse_tuple(p),
            CTA_ID => {
                id = p
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            CTA_ZONE => zone = be16(p).filter(|z| *z != 0),
            _ => {}
        }
    }
    let (proto, orig_src, orig_dst, orig_sport, orig_dport) = orig?;
    let (_, reply_src, _, reply_sport, _) = reply?;
    Some(Flow {
        proto,
        orig_src,
        orig_dst,
        orig_sport,
        orig_dport,
        reply_src,
        reply_sport,
        id,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        tuple_of((CTA_IP_V4_SRC, &src), (CTA_IP_V4_DST, &dst), sport, dport)
    }

    /// A UDP tuple with the address attributes `(type, bytes)`.
    fn tuple_of(src: (u16, &[u8]), dst: (u16, &[u8]), sport: u16, dport: u16) -> Vec<u8> {
        let mut ip = Vec::new();
        put(&mut ip, src.0, src.1);
        put(&mut ip, dst.0, dst.1);
        let mut l4 = Vec::new();
        put(&mut l4, CTA_PROTO_NUM, &[17]);
        put(&mut l4, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
        put(&mut l4, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        let mut t = Vec::new();
        put(&mut t, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        put(&mut t, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
        t
    }

    #[test]
    fn a_dumped_flow_decodes() {
        let mut msg = Vec::new();
        put(
            &mut msg,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &tuple([10, 244, 1, 2], [10, 96, 0, 10], 40000, 53),
        );
        put(
            &mut msg,
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple([10, 244, 1, 3], [10, 244, 1, 2], 5353, 40000),
        );
        put(&mut msg, CTA_ID, &7u32.to_be_bytes());
        let f = parse_flow(&msg).expect("flow");
        assert_eq!(f.orig_dst, Ipv4Addr::new(10, 96, 0, 10));
        assert!(f.orig_dst.is_ipv4());
        assert_eq!((f.orig_sport, f.orig_dport), (40000, 53));
        assert_eq!(
            (f.reply_src, f.reply_sport),
            (IpAddr::V4(Ipv4Addr::new(10, 244, 1, 3)), 5353)
        );
        assert_eq!((f.proto, f.id, f.zone), (17, Some(7), None));
        // A truncated attribute ends the walk instead of reading past it.
        assert!(parse_flow(&msg[..10]).is_none());
    }

    #[test]
    fn a_dumped_ipv6_flow_decodes() {
        let t = |src: &str, dst: &str, sport: u16, dport: u16| {
            let (src, dst) = (
                src.parse::<Ipv6Addr>().unwrap(),
                dst.parse::<Ipv6Addr>().unwrap(),
            );
            tuple_of(
                (CTA_IP_V6_SRC, &src.octets()),
                (CTA_IP_V6_DST, &dst.octets()),
                sport,
                dport,
            )
        };
        let mut msg = Vec::new();
        put(
            &mut msg,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &t("fd00:10:244:1::2", "fd00:96::10", 40000, 53),
        );
        put(
            &mut msg,
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &t("fd00:10:244:1::3", "fd00:10:244:1::2", 5353, 40000),
        );
        let f = parse_flow(&msg).expect("flow");
        assert_eq!(f.orig_dst, "fd00:96::10".parse::<IpAddr>().unwrap());
        assert_eq!(
            (f.reply_src, f.reply_sport),
            ("fd00:10:244:1::3".parse::<IpAddr>().unwrap(), 5353)
        );
    }
}
