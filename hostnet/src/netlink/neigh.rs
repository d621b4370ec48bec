//! Neighbour (ARP/NDP) requests on one link: list, replace with a permanent
//! entry, delete. Only the IPv4/IPv6 neighbour tables; bridge and VXLAN
//! forwarding entries (AF_BRIDGE) belong to `fdb`.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::mac_string;
use super::Netlink;
use crate::Result;

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEntry {
    pub ifindex: u32,
    pub ip: IpAddr,
    /// The link-layer address; empty while unresolved (incomplete, failed).
    pub mac: Vec<u8>,
    /// NUD_PERMANENT: set by someone, never aged out or probed.
    pub permanent: bool,
}

impl NeighEntry {
    /// The entry an AF_INET/AF_INET6 neighbour message describes.
    pub(super) fn from_message(m: &NeighbourMessage) -> Option<NeighEntry> {
        let mut ip = None;
        let mut mac = Vec::new();
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
                NeighbourAttribute::LinkLayerAddress(l) => mac = l.clone(),
                _ => {}
            }
        }
        Some(NeighEntry {
            ifindex: m.header.ifindex,
            ip: ip?,
            mac,
            permanent: m.header.state == NeighbourState::Permanent,
        })
    }
}

/// Neighbour requests on one connection.
pub struct NeighHandle<'a> {
    nl: &'a mut Netlink,
}

impl<'a> NeighHandle<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Self {
        NeighHandle { nl }
    }

    /// The IPv4 and IPv6 neighbour entries on link `ifindex`.
    pub fn list(&mut self, ifindex: u32) -> Result<Vec<NeighEntry>> {
        // A strict dump request filters by NDA_IFINDEX; its header ifindex must be 0.
        let mut m = NeighbourMessage::default();
        m.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        let replies = self.nl.query(
            &format!("list neighbours of link #{ifindex}"),
            RouteNetlinkMessage::GetNeighbour(m),
            true,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(m)
                    if m.header.ifindex == ifindex
                        && matches!(
                            m.header.family,
                            AddressFamily::Inet | AddressFamily::Inet6
                        ) =>
                {
                    NeighEntry::from_message(m)
                }
                _ => None,
            })
            .collect())
    }

    /// Sets a permanent entry `ip` -> `mac` on link `ifindex`, creating it or
    /// replacing whatever is there (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    pub fn replace(&mut self, ifindex: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        let mut m = message(ifindex, ip);
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.nl.execute(
            &format!(
                "replace neighbour {ip} lladdr {} on link #{ifindex}",
                mac_string(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the entry for `ip` on link `ifindex` (ENOENT if there is none).
    pub fn del(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.nl.execute(
            &format!("delete neighbour {ip} on link #{ifindex}"),
            RouteNetlinkMessage::DelNeighbour(message(ifindex, ip)),
            0,
        )
    }
}

fn message(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    m
}

/// An IP from NDA_DST; AF_BRIDGE messages carry it as raw bytes.
pub(super) fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..]).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(&b[..]).ok()?)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire_roundtrip;

    #[test]
    fn a_permanent_ipv4_entry_round_trips() {
        let mut m = message(4, "10.244.1.0".parse().unwrap());
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![
            0x0e, 0, 0, 0, 0, 1,
        ]));
        let (bytes, back) = wire_roundtrip(RouteNetlinkMessage::NewNeighbour(m));
        assert_eq!(bytes[16], libc::AF_INET as u8);
        let RouteNetlinkMessage::NewNeighbour(m) = back else {
            panic!("not a neighbour message");
        };
        assert_eq!(
            NeighEntry::from_message(&m),
            Some(NeighEntry {
                ifindex: 4,
                ip: "10.244.1.0".parse().unwrap(),
                mac: vec![0x0e, 0, 0, 0, 0, 1],
                permanent: true,
            })
        );
    }

    #[test]
    fn raw_destination_bytes_read_as_ips() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let IpAddr::V6(v6b) = v6 else { unreachable!() };
        assert_eq!(
            neighbour_ip(&NeighbourAddress::Other(v6b.octets().to_vec())),
            Some(v6)
        );
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }
}
