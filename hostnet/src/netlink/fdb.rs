//! Forwarding entries of a device's own FDB (AF_BRIDGE neighbours with
//! NTF_SELF), as a VXLAN device keeps them: MAC -> remote VTEP IP. List,
//! replace, delete; like `bridge fdb replace MAC dev DEV dst IP self permanent`.
//! Not for a bridge's learned port entries (those are NTF_MASTER).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::mac_string;
use super::neigh::neighbour_ip;
use super::Netlink;
use crate::Result;

/// A forwarding entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: Vec<u8>,
    /// The remote VTEP (NDA_DST), for VXLAN entries.
    pub dst: Option<IpAddr>,
    /// NUD_PERMANENT: never aged out.
    pub permanent: bool,
}

impl FdbEntry {
    fn from_message(m: &NeighbourMessage) -> Option<FdbEntry> {
        let mut mac = None;
        let mut dst = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                NeighbourAttribute::Destination(d) => dst = neighbour_ip(d),
                _ => {}
            }
        }
        Some(FdbEntry {
            ifindex: m.header.ifindex,
            mac: mac?,
            dst,
            permanent: m.header.state == NeighbourState::Permanent,
        })
    }
}

/// FDB requests on one connection.
pub struct FdbHandle<'a> {
    nl: &'a mut Netlink,
}

impl<'a> FdbHandle<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Self {
        FdbHandle { nl }
    }

    /// The forwarding entries of device `ifindex`.
    pub fn list(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        // A strict fdb dump takes the device in the header; flags and state must be 0.
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = ifindex;
        let replies = self.nl.query(
            &format!("list fdb of link #{ifindex}"),
            RouteNetlinkMessage::GetNeighbour(m),
            true,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(m)
                    if m.header.ifindex == ifindex && m.header.family == AddressFamily::Bridge =>
                {
                    FdbEntry::from_message(m)
                }
                _ => None,
            })
            .collect())
    }

    /// Sets a permanent entry `mac` -> `dst` on device `ifindex`, creating it
    /// or replacing its remote.
    pub fn replace(&mut self, ifindex: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let mut m = message(ifindex, mac, Some(dst));
        m.header.state = NeighbourState::Permanent;
        self.nl.execute(
            &format!(
                "replace fdb {} dst {dst} on link #{ifindex}",
                mac_string(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the entry for `mac` on device `ifindex`: only its remote `dst`
    /// when given, else every remote (ENOENT if there is none).
    pub fn del(&mut self, ifindex: u32, mac: &[u8], dst: Option<IpAddr>) -> Result<()> {
        let what = match dst {
            Some(dst) => format!("{} dst {dst}", mac_string(mac)),
            None => mac_string(mac),
        };
        self.nl.execute(
            &format!("delete fdb {what} on link #{ifindex}"),
            RouteNetlinkMessage::DelNeighbour(message(ifindex, mac, dst)),
            0,
        )
    }
}

fn message(ifindex: u32, mac: &[u8], dst: Option<IpAddr>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(dst) = dst {
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire_roundtrip;

    #[test]
    fn fdb_replace_is_a_self_permanent_bridge_neighbour_with_a_dst() {
        let mac = [0x0e, 0, 0, 0, 0, 2];
        let mut m = message(9, &mac, Some("192.0.2.8".parse().unwrap()));
        m.header.state = NeighbourState::Permanent;
        let (bytes, back) = wire_roundtrip(RouteNetlinkMessage::NewNeighbour(m));
        // ndmsg after the 16-byte nlmsghdr: family, pad[3], ifindex, state, flags, type.
        assert_eq!(bytes[16], libc::AF_BRIDGE as u8);
        assert_eq!(&bytes[20..24], &9u32.to_ne_bytes());
        assert_eq!(&bytes[24..26], &0x80u16.to_ne_bytes(), "NUD_PERMANENT");
        assert_eq!(bytes[26], 0x02, "NTF_SELF");
        let RouteNetlinkMessage::NewNeighbour(m) = back else {
            panic!("not a neighbour message");
        };
        // AF_BRIDGE messages carry NDA_DST as raw bytes; it still reads as an IP.
        assert_eq!(
            FdbEntry::from_message(&m),
            Some(FdbEntry {
                ifindex: 9,
                mac: mac.to_vec(),
                dst: Some("192.0.2.8".parse().unwrap()),
                permanent: true,
            })
        );
    }

    #[test]
    fn fdb_delete_without_dst_names_only_the_mac() {
        let m = message(9, &[1, 2, 3, 4, 5, 6], None);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Destination(_))));
    }
}
