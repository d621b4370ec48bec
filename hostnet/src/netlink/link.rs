//! Link requests: get by name or index, list, create bridges, veth pairs and
//! VXLAN devices, read a VXLAN device's settings back, change state (up,
//! master, MTU, promiscuity, bridge-port hairpin), delete.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::Netlink;
use crate::Result;

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address, as bytes.
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    pub promisc: bool,
    /// Index of the bridge (or other controller) it is attached to.
    pub master: Option<u32>,
    /// The link kind (`bridge`, `veth`, `vxlan`, ...), when it has one.
    pub kind: Option<String>,
}

impl Link {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }

    fn from_message(m: LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            ..Default::default()
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(mac) => l.mac = mac,
                LinkAttribute::Mtu(mtu) => l.mtu = mtu,
                LinkAttribute::Controller(i) => l.master = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// `mac` as `aa:bb:cc:dd:ee:ff`.
pub(crate) fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A veth pair to create: the host end here, the peer optionally straight
/// into another namespace.
#[derive(Debug, Clone, Default)]
pub struct VethRequest {
    pub name: String,
    pub peer_name: String,
    /// Namespace fd the peer is created in (IFLA_NET_NS_FD), if not this one.
    pub peer_netns_fd: Option<i32>,
    pub mtu: Option<u32>,
    /// Bridge index the host end is attached to at creation.
    pub master: Option<u32>,
    /// Bring the host end up at creation. (The peer cannot be: a veth end
    /// refuses to open, ENOTCONN, until its pair is complete, so callers set
    /// the peer up afterwards in its own namespace.)
    pub up: bool,
}

/// A VXLAN device to create (like `ip link add NAME type vxlan id VNI dstport
/// PORT local IP dev UNDERLAY nolearning`). It is created down.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanRequest {
    pub name: String,
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// UDP destination port, e.g. 8472 (Linux/flannel) or 4789 (IANA).
    pub port: u16,
    /// Source address of the encapsulated packets (IFLA_VXLAN_LOCAL/LOCAL6).
    pub local: Option<IpAddr>,
    /// Index of the underlay device the packets leave by (IFLA_VXLAN_LINK).
    pub underlay: Option<u32>,
    /// Learn remote MACs from received packets; off when the FDB is programmed.
    pub learning: bool,
    pub mtu: Option<u32>,
    /// A fixed MAC (IFLA_ADDRESS), so peers' neighbour entries stay valid
    /// across restarts; the kernel picks a random one when `None`.
    pub mac: Option<Vec<u8>>,
}

impl VxlanRequest {
    fn message(&self) -> LinkMessage {
        let mut data = vec![
            InfoVxlan::Id(self.vni),
            InfoVxlan::Port(self.port),
            InfoVxlan::Learning(self.learning),
        ];
        match self.local {
            Some(IpAddr::V4(ip)) => data.push(InfoVxlan::Local(ip)),
            Some(IpAddr::V6(ip)) => data.push(InfoVxlan::Local6(ip)),
            None => {}
        }
        if let Some(underlay) = self.underlay {
            data.push(InfoVxlan::Link(underlay));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(self.name.clone()));
        if let Some(mtu) = self.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = &self.mac {
            m.attributes.push(LinkAttribute::Address(mac.clone()));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        m
    }
}

/// What the kernel reports about a vxlan link (from IFLA_INFO_DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// The underlay device's index; `None` when the kernel reports none (or 0).
    pub underlay: Option<u32>,
    pub learning: bool,
}

impl VxlanInfo {
    /// The VXLAN settings in a link message, or `None` if it is not a vxlan link.
    fn from_message(m: &LinkMessage) -> Option<VxlanInfo> {
        let data = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
                _ => None,
            }),
            _ => None,
        })?;
        let mut info = VxlanInfo {
            vni: 0,
            port: 0,
            local: None,
            underlay: None,
            learning: false,
        };
        for d in data {
            match d {
                InfoVxlan::Id(vni) => info.vni = *vni,
                InfoVxlan::Port(port) => info.port = *port,
                InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
                InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
                InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
                InfoVxlan::Learning(on) => info.learning = *on,
                _ => {}
            }
        }
        Some(info)
    }
}

/// Link requests on one connection.
pub struct LinkHandle<'a> {
    nl: &'a mut Netlink,
}

impl<'a> LinkHandle<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Self {
        LinkHandle { nl }
    }

    /// The link called `name`, or `None` if there is none.
    pub fn get_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get(&format!("get link {name}"), m)
    }

    /// The link with index `index`, or `None` if there is none.
    pub fn get_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get(&format!("get link #{index}"), m)
    }

    fn get(&mut self, op: &str, m: LinkMessage) -> Result<Option<Link>> {
        Ok(self.get_message(op, m)?.map(Link::from_message))
    }

    fn get_message(&mut self, op: &str, m: LinkMessage) -> Result<Option<LinkMessage>> {
        match self.nl.query(op, RouteNetlinkMessage::GetLink(m), false) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name` with its VXLAN settings: `None` if there is no
    /// such link, `Some((link, None))` if it exists but is not a vxlan link.
    pub fn vxlan_info(&mut self, name: &str) -> Result<Option<(Link, Option<VxlanInfo>)>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let Some(m) = self.get_message(&format!("get vxlan link {name}"), m)? else {
            return Ok(None);
        };
        let info = VxlanInfo::from_message(&m);
        Ok(Some((Link::from_message(m), info)))
    }

    /// Every link in the namespace.
    pub fn list(&mut self) -> Result<Vec<Link>> {
        let replies = self.nl.query(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            true,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .collect())
    }

    /// Creates bridge `name` (up), failing with EEXIST if it exists.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![])),
        ]));
        self.nl.execute(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair in one request.
    pub fn add_veth(&mut self, req: &VethRequest) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(req.peer_name.clone()));
        if let Some(mtu) = req.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = req.peer_netns_fd {
            peer.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        let mut m = LinkMessage::default();
        if req.up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes.push(LinkAttribute::IfName(req.name.clone()));
        if let Some(mtu) = req.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = req.master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let op = format!("create veth {} (peer {})", req.name, req.peer_name);
        self.nl.execute(
            &op,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates VXLAN device `req.name` (down), failing with EEXIST if it exists.
    pub fn add_vxlan(&mut self, req: &VxlanRequest) -> Result<()> {
        let op = format!(
            "create vxlan {} (vni {}, port {})",
            req.name, req.vni, req.port
        );
        self.nl.execute(
            &op,
            RouteNetlinkMessage::NewLink(req.message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.nl.execute(
            &format!("set mtu {mtu} on link #{index}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets the link's hardware address (IFLA_ADDRESS).
    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.nl.execute(
            &format!("set mac {} on link #{index}", mac_string(mac)),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets the link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        m.header.change_mask = LinkFlags::Up;
        self.nl.execute(
            &format!("set link #{index} {}", if up { "up" } else { "down" }),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Renames the link (it must be down).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.nl.execute(
            &format!("rename link #{index} to {name}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets or clears promiscuous mode.
    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = if on {
            LinkFlags::Promisc
        } else {
            LinkFlags::empty()
        };
        m.header.change_mask = LinkFlags::Promisc;
        self.nl.execute(
            &format!("set link #{index} promisc {on}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Attaches the link to bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.nl.execute(
            &format!("attach link #{index} to #{master}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets hairpin mode on a bridge port (the link must already be attached).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.nl.execute(
            &format!("set hairpin {on} on port #{index}"),
            RouteNetlinkMessage::NewLink(m),
            0,
        )
    }

    /// Deletes the link (for a veth, both ends).
    pub fn del(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.nl.execute(
            &format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::netlink::wire_roundtrip;

    fn request() -> VxlanRequest {
        VxlanRequest {
            name: "knode.1".into(),
            vni: 1,
            port: 8472,
            local: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            underlay: Some(3),
            learning: false,
            mtu: Some(1450),
            mac: Some(vec![0x0e, 0, 0, 0, 0, 1]),
        }
    }

    /// Finds a (type, value) attribute anywhere in `bytes`, by its 4-byte header.
    fn has_nla(bytes: &[u8], kind: u16, value: &[u8]) -> bool {
        let len = (4 + value.len()) as u16;
        let mut want = len.to_ne_bytes().to_vec();
        want.extend_from_slice(&kind.to_ne_bytes());
        want.extend_from_slice(value);
        bytes.windows(want.len()).any(|w| w == want)
    }

    #[test]
    fn vxlan_request_encodes_what_iproute2_sends() {
        let (bytes, _) = wire_roundtrip(RouteNetlinkMessage::NewLink(request().message()));
        // IFLA_VXLAN_PORT is big-endian on the wire: 8472 = 0x2118.
        assert!(
            has_nla(&bytes, 15, &[0x21, 0x18]),
            "dstport 8472 in network order"
        );
        assert!(has_nla(&bytes, 1, &1u32.to_ne_bytes()), "IFLA_VXLAN_ID 1");
        assert!(has_nla(&bytes, 7, &[0]), "IFLA_VXLAN_LEARNING off");
        assert!(has_nla(&bytes, 4, &[192, 0, 2, 7]), "IFLA_VXLAN_LOCAL");
        assert!(has_nla(&bytes, 3, &3u32.to_ne_bytes()), "IFLA_VXLAN_LINK");
        // IFLA_ADDRESS (1) and IFLA_MTU (4) at the top level.
        assert!(has_nla(&bytes, 1, &[0x0e, 0, 0, 0, 0, 1]), "IFLA_ADDRESS");
        assert!(has_nla(&bytes, 4, &1450u32.to_ne_bytes()), "IFLA_MTU");
    }

    #[test]
    fn vxlan_info_reads_back_what_was_requested() {
        let (_, back) = wire_roundtrip(RouteNetlinkMessage::NewLink(request().message()));
        let RouteNetlinkMessage::NewLink(m) = back else {
            panic!("not a link message");
        };
        let info = VxlanInfo::from_message(&m).expect("vxlan data");
        assert_eq!(
            info,
            VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
                underlay: Some(3),
                learning: false,
            }
        );
        let link = Link::from_message(m);
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mac_string(), "0e:00:00:00:00:01");
        assert_eq!(link.mtu, 1450);
    }

    #[test]
    fn an_ipv6_local_and_no_underlay_decode_as_such() {
        let req = VxlanRequest {
            local: Some("fd00::7".parse().unwrap()),
            underlay: None,
            learning: true,
            ..request()
        };
        let (_, back) = wire_roundtrip(RouteNetlinkMessage::NewLink(req.message()));
        let RouteNetlinkMessage::NewLink(m) = back else {
            panic!("not a link message");
        };
        let info = VxlanInfo::from_message(&m).expect("vxlan data");
        assert_eq!(info.local, Some("fd00::7".parse().unwrap()));
        assert_eq!(info.underlay, None);
        assert!(info.learning);
    }

    #[test]
    fn a_link_that_is_not_vxlan_has_no_vxlan_info() {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![])),
        ]));
        assert_eq!(VxlanInfo::from_message(&m), None);
    }
}
