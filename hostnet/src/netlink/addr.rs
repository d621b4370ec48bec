//! Address requests: list a link's addresses, add one, delete one.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Netlink;
use crate::Result;

/// Address requests on one connection.
pub struct AddrHandle<'a> {
    nl: &'a mut Netlink,
}

impl<'a> AddrHandle<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Self {
        AddrHandle { nl }
    }

    /// The addresses on link `index` (both families), with prefix.
    pub fn list(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        let replies = self.nl.query(
            &format!("list addresses of link #{index}"),
            RouteNetlinkMessage::GetAddress(m),
            true,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(m) = r else {
                continue;
            };
            if m.header.index != index {
                continue; // kernels without strict checking dump everything
            }
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Adds `addr` to link `index`; IPv6 addresses skip duplicate address detection.
    pub fn add(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let m = message(index, addr);
        self.nl.execute(
            &format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes `addr` from link `index`.
    pub fn del(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let m = message(index, addr);
        self.nl.execute(
            &format!("delete address {addr} from link #{index}"),
            RouteNetlinkMessage::DelAddress(m),
            0,
        )
    }
}

fn message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = addr.prefix_len();
    let ip = addr.addr();
    match ip {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(ip));
            m.attributes.push(AddressAttribute::Address(ip));
            if addr.prefix_len() < 31 {
                if let IpNet::V4(n) = addr {
                    m.attributes
                        .push(AddressAttribute::Broadcast(n.broadcast()));
                }
            }
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.attributes.push(AddressAttribute::Address(ip));
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    m
}
