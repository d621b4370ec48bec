//! Route requests: list the main table of one family, add, delete.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Netlink;
use crate::Result;

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    /// The gateway is used even though no address on `oif` covers it
    /// (RTNH_F_ONLINK), as overlay routes to a remote VTEP are.
    pub onlink: bool,
}

impl RouteEntry {
    /// The entry a unicast route message describes, or `None` for other
    /// route types (local, broadcast, ...) and undecodable destinations.
    pub(super) fn from_message(m: &RouteMessage) -> Option<RouteEntry> {
        if m.header.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(m.header.table);
        let mut dst_ip: Option<IpAddr> = None;
        let mut gateway = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(a) => dst_ip = addr(a),
                RouteAttribute::Gateway(a) => gateway = addr(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let dst_ip = match (dst_ip, m.header.address_family) {
            (Some(ip), _) => ip,
            (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
            (None, AddressFamily::Inet6) => IpAddr::from([0u8; 16]),
            (None, _) => return None,
        };
        let dst = IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?;
        Some(RouteEntry {
            dst,
            gateway,
            oif,
            table,
            onlink: m.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

/// A route to add or delete in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    /// Use the gateway even when no address on `oif` covers it (RTNH_F_ONLINK;
    /// needs `gateway` and `oif`).
    pub onlink: bool,
    /// Replace a route to the same destination instead of failing.
    pub replace: bool,
}

impl RouteRequest {
    /// A route to `dst` via `gateway` (or directly connected when `None`) out of `oif`.
    pub fn new(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> Self {
        RouteRequest {
            dst,
            gateway,
            oif,
            mtu: None,
            onlink: false,
            replace: false,
        }
    }

    pub(super) fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = if self.dst.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = self.dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if self.onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        if self.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.network(),
                )));
        }
        if let Some(gw) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(mtu) = self.mtu {
            m.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        m
    }
}

/// Route requests on one connection.
pub struct RouteHandle<'a> {
    nl: &'a mut Netlink,
}

impl<'a> RouteHandle<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Self {
        RouteHandle { nl }
    }

    /// The unicast routes of the main table for the family of `v4`.
    pub fn list(&mut self, v4: bool) -> Result<Vec<RouteEntry>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        let replies = self
            .nl
            .query("list routes", RouteNetlinkMessage::GetRoute(m), true)?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => RouteEntry::from_message(m),
                _ => None,
            })
            .filter(|e| e.table == u32::from(RouteHeader::RT_TABLE_MAIN))
            .collect())
    }

    /// Adds the route; fails with EEXIST unless `replace` is set.
    pub fn add(&mut self, req: &RouteRequest) -> Result<()> {
        let flags = NLM_F_CREATE
            | if req.replace {
                NLM_F_REPLACE
            } else {
                NLM_F_EXCL
            };
        self.nl.execute(
            &describe("add", req),
            RouteNetlinkMessage::NewRoute(req.message()),
            flags,
        )
    }

    /// Deletes the route.
    pub fn del(&mut self, req: &RouteRequest) -> Result<()> {
        self.nl.execute(
            &describe("delete", req),
            RouteNetlinkMessage::DelRoute(req.message()),
            0,
        )
    }
}

fn describe(verb: &str, req: &RouteRequest) -> String {
    let mut s = format!("{verb} route {}", req.dst);
    if let Some(gw) = req.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = req.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if req.onlink {
        s.push_str(" onlink");
    }
    s
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire_roundtrip;

    #[test]
    fn an_onlink_route_reads_back_as_onlink() {
        let mut req = RouteRequest::new(
            "10.244.2.0/24".parse().unwrap(),
            Some("10.244.2.0".parse().unwrap()),
            Some(7),
        );
        req.onlink = true;
        let (bytes, back) = wire_roundtrip(RouteNetlinkMessage::NewRoute(req.message()));
        // rtm_flags (u32 at offset 16 + 8 of the rtmsg) carries RTNH_F_ONLINK (4).
        assert_eq!(&bytes[24..28], &4u32.to_ne_bytes());
        let RouteNetlinkMessage::NewRoute(m) = back else {
            panic!("not a route message");
        };
        assert_eq!(
            RouteEntry::from_message(&m),
            Some(RouteEntry {
                dst: req.dst,
                gateway: req.gateway,
                oif: Some(7),
                table: 254,
                onlink: true,
            })
        );
    }

    #[test]
    fn non_unicast_routes_are_not_entries() {
        let mut m = RouteRequest::new("10.0.0.1/32".parse().unwrap(), None, Some(1)).message();
        m.header.kind = RouteType::Local;
        assert_eq!(RouteEntry::from_message(&m), None);
    }
}
