//! What each backend wants in the kernel for one remote lease, as plain
//! data: vxlan wants an onlink route via the peer's VTEP address, a
//! permanent neighbour entry and an FDB entry (or, with DirectRouting and
//! a peer on the same L2, a plain route); host-gw wants a route via the
//! peer's public IP; udp wants nothing in the kernel per peer (one route
//! for the whole network goes to the TUN device), only an entry in the
//! userspace path's table. On a dual-stack network each peer's IPv6
//! subnet gets the same kinds of entries (see [`v6_state`]). No I/O here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use controlplane::objects::SubnetLease;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

use crate::config::Backend;

/// A remote node as the backends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend_type: String,
    /// The peer's VTEP MAC (vxlan only).
    pub vtep_mac: Option<[u8; 6]>,
    /// Its IPv6 pod subnet (dual-stack).
    pub subnet6: Option<Ipv6Net>,
    /// Its IPv6 underlay address, when it has one.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The VTEP MAC of its IPv6-underlay vxlan device (BackendV6Data).
    pub vtep_mac6: Option<[u8; 6]>,
}

fn mac_field(
    data: Option<&Value>,
    subnet: Ipv4Net,
    field: &str,
) -> Result<Option<[u8; 6]>, String> {
    match data.and_then(|d| d.get("VtepMAC")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(parse_mac)
            .map(Some)
            .ok_or_else(|| format!("lease {subnet}: {field}.VtepMAC {v} is not a MAC")),
    }
}

impl Peer {
    /// Reads a lease; says what is wrong with a malformed one.
    pub fn from_lease(l: &SubnetLease) -> Result<Peer, String> {
        let IpNet::V4(subnet) = l.spec.subnet else {
            return Err(format!(
                "lease {}: only IPv4 subnets are supported",
                l.spec.subnet
            ));
        };
        let IpAddr::V4(public_ip) = l.spec.public_ip else {
            return Err(format!(
                "lease {}: PublicIP {} is not IPv4",
                subnet, l.spec.public_ip
            ));
        };
        let subnet6 = match l.spec.ipv6_subnet {
            None => None,
            Some(IpNet::V6(n)) => Some(n),
            Some(other) => return Err(format!("lease {subnet}: IPv6Subnet {other} is not IPv6")),
        };
        let public_ipv6 = match l.spec.public_ipv6 {
            None => None,
            Some(IpAddr::V6(ip)) => Some(ip),
            Some(other) => return Err(format!("lease {subnet}: PublicIPv6 {other} is not IPv6")),
        };
        Ok(Peer {
            subnet,
            public_ip,
            backend_type: l.spec.backend_type.clone(),
            vtep_mac: mac_field(Some(&l.spec.backend_data), subnet, "BackendData")?,
            subnet6,
            public_ipv6,
            vtep_mac6: mac_field(l.spec.backend_v6_data.as_ref(), subnet, "BackendV6Data")?,
        })
    }
}

/// The node's own side, as the backends need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub backend: Backend,
    /// The connected network of the underlay interface (its L2 segment).
    pub underlay_net: Ipv4Net,
    /// The network is dual-stack: peers' IPv6 subnets are routed too.
    pub dual_stack: bool,
    /// The IPv6 address and connected network of the underlay, when it has one.
    pub underlay_net6: Option<Ipv6Net>,
}

/// Which vxlan device an entry lives on: `knode.<VNI>` (IPv4 underlay;
/// it carries IPv6 pod traffic too when there is no IPv6 underlay) or
/// `knode-v6.<VNI>` (IPv6 underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dev {
    V4,
    V6,
}

/// How a remote subnet is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Through a vxlan device, onlink, to the peer's VTEP address.
    Vxlan(Dev, IpAddr),
    /// Through the underlay interface to the peer's public IP (of the family).
    Underlay(IpAddr),
    /// Through the TUN device and the agent's UDP path to the peer's public IP.
    Udp(Ipv4Addr),
}

/// A permanent neighbour entry on a vxlan device: VTEP address -> VTEP MAC.
pub type Neigh = (Dev, IpAddr, [u8; 6]);
/// An FDB entry on a vxlan device: VTEP MAC -> public IP.
pub type Fdb = (Dev, [u8; 6], IpAddr);

/// What one address family of a peer needs in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyState {
    pub subnet: IpNet,
    pub via: Via,
    pub neigh: Option<Neigh>,
    pub fdb: Option<Fdb>,
}

/// Everything one peer needs in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's IPv4 subnet: its key.
    pub subnet: Ipv4Net,
    pub via: Via,
    pub neigh: Option<Neigh>,
    pub fdb: Option<Fdb>,
    /// Its IPv6 subnet's entries, on a dual-stack network.
    pub v6: Option<FamilyState>,
}

impl PeerState {
    /// Every family's part: (subnet, via, neighbour, FDB).
    pub fn families(&self) -> impl Iterator<Item = FamilyState> {
        let v4 = FamilyState {
            subnet: IpNet::V4(self.subnet),
            via: self.via,
            neigh: self.neigh,
            fdb: self.fdb,
        };
        std::iter::once(v4).chain(self.v6)
    }
}

/// What `local` programs for `peer`, or why it cannot.
pub fn peer_state(local: &Local, peer: &Peer) -> Result<PeerState, String> {
    if peer.backend_type != local.backend.type_name() {
        return Err(format!(
            "peer {} ({}) uses backend {:?}, this node {:?}; skipping it",
            peer.subnet,
            peer.public_ip,
            peer.backend_type,
            local.backend.type_name()
        ));
    }
    let same_l2 = local.underlay_net.contains(&peer.public_ip);
    let mut state = match local.backend {
        Backend::Vxlan { direct_routing, .. } => {
            if direct_routing && same_l2 {
                underlay_route(peer)
            } else {
                let mac = need_mac(peer)?;
                let vtep = IpAddr::V4(peer.subnet.network());
                PeerState {
                    subnet: peer.subnet,
                    via: Via::Vxlan(Dev::V4, vtep),
                    neigh: Some((Dev::V4, vtep, mac)),
                    fdb: Some((Dev::V4, mac, IpAddr::V4(peer.public_ip))),
                    v6: None,
                }
            }
        }
        Backend::HostGw => {
            if !same_l2 {
                return Err(format!(
                    "peer {} at {} is not on this node's L2 segment {}: host-gw routes via peers' \
                     public IPs, so every node must share one segment (use the vxlan backend instead)",
                    peer.subnet, peer.public_ip, local.underlay_net
                ));
            }
            underlay_route(peer)
        }
        Backend::Udp { .. } => PeerState {
            subnet: peer.subnet,
            via: Via::Udp(peer.public_ip),
            neigh: None,
            fdb: None,
            v6: None,
        },
    };
    if local.dual_stack {
        state.v6 = v6_state(local, peer)?;
    }
    Ok(state)
}

/// The IPv6 half: host-gw routes via the peer's IPv6 underlay address;
/// vxlan uses the IPv6-underlay device when both nodes have an IPv6
/// underlay, else the IPv4 device (one device then carries both families,
/// with the peer's one FDB entry).
fn v6_state(local: &Local, peer: &Peer) -> Result<Option<FamilyState>, String> {
    let Some(subnet6) = peer.subnet6 else {
        return Ok(None);
    };
    let near6 = match (local.underlay_net6, peer.public_ipv6) {
        (Some(net), Some(ip)) => net.contains(&ip),
        _ => false,
    };
    let underlay6 = |ip: Ipv6Addr| FamilyState {
        subnet: IpNet::V6(subnet6),
        via: Via::Underlay(IpAddr::V6(ip)),
        neigh: None,
        fdb: None,
    };
    let vtep = IpAddr::V6(subnet6.network());
    match local.backend {
        Backend::HostGw => {
            match peer.public_ipv6 {
                Some(ip) if near6 => Ok(Some(underlay6(ip))),
                _ => Err(format!(
                "peer {} ({subnet6}): host-gw routes IPv6 pod subnets via peers' IPv6 underlay \
                 addresses, and its PublicIPv6 {} is not on this node's IPv6 segment {}",
                peer.subnet,
                peer.public_ipv6.map_or("(none)".to_string(), |ip| ip.to_string()),
                local.underlay_net6.map_or("(none)".to_string(), |n| n.trunc().to_string()),
            )),
            }
        }
        Backend::Vxlan { direct_routing, .. } => {
            if let (true, true, Some(ip)) = (direct_routing, near6, peer.public_ipv6) {
                return Ok(Some(underlay6(ip)));
            }
            if let (Some(_), Some(ip), Some(mac)) =
                (local.underlay_net6, peer.public_ipv6, peer.vtep_mac6)
            {
                return Ok(Some(FamilyState {
                    subnet: IpNet::V6(subnet6),
                    via: Via::Vxlan(Dev::V6, vtep),
                    neigh: Some((Dev::V6, vtep, mac)),
                    fdb: Some((Dev::V6, mac, IpAddr::V6(ip))),
                }));
            }
            let mac = need_mac(peer)?;
            Ok(Some(FamilyState {
                subnet: IpNet::V6(subnet6),
                via: Via::Vxlan(Dev::V4, vtep),
                neigh: Some((Dev::V4, vtep, mac)),
                fdb: Some((Dev::V4, mac, IpAddr::V4(peer.public_ip))),
            }))
        }
        // Refused at start: the udp path carries IPv4 only.
        Backend::Udp { .. } => Ok(None),
    }
}

fn need_mac(peer: &Peer) -> Result<[u8; 6], String> {
    peer.vtep_mac.ok_or_else(|| {
        format!(
            "peer {} ({}): its lease has no VtepMAC",
            peer.subnet, peer.public_ip
        )
    })
}

fn underlay_route(peer: &Peer) -> PeerState {
    PeerState {
        subnet: peer.subnet,
        via: Via::Underlay(IpAddr::V4(peer.public_ip)),
        neigh: None,
        fdb: None,
        v6: None,
    }
}

/// The lease's BackendData for a vxlan node.
pub fn vxlan_backend_data(vni: u32, mac: &[u8; 6]) -> Value {
    json!({"VNI": vni, "VtepMAC": format_mac(mac)})
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A VTEP MAC derived from the node name and VNI: the same across agent
/// restarts and reboots, locally administered, unicast.
pub fn vtep_mac(node: &str, vni: u32) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("knode-vtep/{node}/{vni}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(backend: Backend) -> Local {
        Local {
            backend,
            underlay_net: "198.18.0.0/24".parse().unwrap(),
            dual_stack: false,
            underlay_net6: None,
        }
    }

    fn dual(backend: Backend, underlay6: Option<&str>) -> Local {
        Local {
            dual_stack: true,
            underlay_net6: underlay6.map(|n| n.parse().unwrap()),
            ..local(backend)
        }
    }

    fn peer6(ip6: Option<&str>, kind: &str) -> Peer {
        Peer {
            subnet6: Some("fd00:10:244:7::/64".parse().unwrap()),
            public_ipv6: ip6.map(|i| i.parse().unwrap()),
            vtep_mac6: ip6.map(|_| [0x02, 6, 6, 6, 6, 6]),
            ..peer("198.18.0.12", kind)
        }
    }

    fn peer(ip: &str, kind: &str) -> Peer {
        Peer {
            subnet: "10.244.7.0/24".parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend_type: kind.into(),
            vtep_mac: Some([0x02, 1, 2, 3, 4, 5]),
            subnet6: None,
            public_ipv6: None,
            vtep_mac6: None,
        }
    }

    const VXLAN: Backend = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    };

    #[test]
    fn vxlan_wants_route_neigh_and_fdb() {
        let s = peer_state(&local(VXLAN), &peer("198.18.0.12", "vxlan")).unwrap();
        let vtep: IpAddr = "10.244.7.0".parse().unwrap();
        assert_eq!(s.via, Via::Vxlan(Dev::V4, vtep));
        assert_eq!(s.neigh, Some((Dev::V4, vtep, [0x02, 1, 2, 3, 4, 5])));
        assert_eq!(
            s.fdb,
            Some((
                Dev::V4,
                [0x02, 1, 2, 3, 4, 5],
                "198.18.0.12".parse().unwrap()
            ))
        );
        assert_eq!(s.v6, None);
    }

    #[test]
    fn dual_stack_vxlan_rides_the_ipv4_device_without_an_ipv6_underlay() {
        let s = peer_state(&dual(VXLAN, None), &peer6(None, "vxlan")).unwrap();
        let v6 = s.v6.unwrap();
        let vtep: IpAddr = "fd00:10:244:7::".parse().unwrap();
        assert_eq!(v6.subnet, "fd00:10:244:7::/64".parse::<IpNet>().unwrap());
        assert_eq!(v6.via, Via::Vxlan(Dev::V4, vtep));
        assert_eq!(v6.neigh, Some((Dev::V4, vtep, [0x02, 1, 2, 3, 4, 5])));
        // The same FDB entry as IPv4's: one per peer on the device.
        assert_eq!(v6.fdb, s.fdb);
        // A single-stack peer on a dual-stack network: IPv4 only.
        assert_eq!(
            peer_state(&dual(VXLAN, None), &peer("198.18.0.12", "vxlan"))
                .unwrap()
                .v6,
            None
        );
    }

    #[test]
    fn dual_stack_vxlan_uses_the_ipv6_device_over_an_ipv6_underlay() {
        let l = dual(VXLAN, Some("fd00:198:18::11/64"));
        let s = peer_state(&l, &peer6(Some("fd00:198:18::12"), "vxlan")).unwrap();
        let v6 = s.v6.unwrap();
        let vtep: IpAddr = "fd00:10:244:7::".parse().unwrap();
        assert_eq!(v6.via, Via::Vxlan(Dev::V6, vtep));
        assert_eq!(v6.neigh, Some((Dev::V6, vtep, [0x02, 6, 6, 6, 6, 6])));
        assert_eq!(
            v6.fdb,
            Some((
                Dev::V6,
                [0x02, 6, 6, 6, 6, 6],
                "fd00:198:18::12".parse().unwrap()
            ))
        );
        // A peer without an IPv6 underlay is reached over the IPv4 device.
        let s = peer_state(&l, &peer6(None, "vxlan")).unwrap();
        assert!(matches!(s.v6.unwrap().via, Via::Vxlan(Dev::V4, _)));
    }

    #[test]
    fn dual_stack_host_gw_routes_via_the_peers_ipv6_address() {
        let l = dual(Backend::HostGw, Some("fd00:198:18::11/64"));
        let s = peer_state(&l, &peer6(Some("fd00:198:18::12"), "host-gw")).unwrap();
        assert_eq!(
            s.v6.unwrap().via,
            Via::Underlay("fd00:198:18::12".parse().unwrap())
        );
        let e = peer_state(&l, &peer6(None, "host-gw")).unwrap_err();
        assert!(
            e.contains("its PublicIPv6 (none) is not on this node's IPv6 segment fd00:198:18::/64"),
            "{e}"
        );
        let e = peer_state(&l, &peer6(Some("fd00:99::12"), "host-gw")).unwrap_err();
        assert!(e.contains("PublicIPv6 fd00:99::12"), "{e}");
    }

    #[test]
    fn direct_routing_only_on_the_same_segment() {
        let b = Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: true,
        };
        let near = peer_state(&local(b), &peer("198.18.0.12", "vxlan")).unwrap();
        assert_eq!(near.via, Via::Underlay("198.18.0.12".parse().unwrap()));
        assert_eq!((near.neigh, near.fdb), (None, None));
        let far = peer_state(&local(b), &peer("203.0.113.9", "vxlan")).unwrap();
        assert!(matches!(far.via, Via::Vxlan(Dev::V4, _)));
    }

    #[test]
    fn host_gw_refuses_a_peer_off_segment() {
        let ok = peer_state(&local(Backend::HostGw), &peer("198.18.0.13", "host-gw")).unwrap();
        assert_eq!(ok.via, Via::Underlay("198.18.0.13".parse().unwrap()));
        let e = peer_state(&local(Backend::HostGw), &peer("203.0.113.9", "host-gw")).unwrap_err();
        assert!(
            e.contains("not on this node's L2 segment 198.18.0.0/24"),
            "{e}"
        );
    }

    #[test]
    fn udp_wants_only_the_public_ip() {
        let s = peer_state(
            &local(Backend::Udp { port: 8285 }),
            &peer("203.0.113.9", "udp"),
        )
        .unwrap();
        assert_eq!(s.via, Via::Udp("203.0.113.9".parse().unwrap()));
        assert_eq!((s.neigh, s.fdb), (None, None));
    }

    #[test]
    fn mixed_backends_and_bad_leases_are_explained() {
        let e = peer_state(&local(VXLAN), &peer("198.18.0.12", "host-gw")).unwrap_err();
        assert!(e.contains("uses backend \"host-gw\""), "{e}");
        let mut p = peer("198.18.0.12", "vxlan");
        p.vtep_mac = None;
        assert!(peer_state(&local(VXLAN), &p)
            .unwrap_err()
            .contains("no VtepMAC"));
    }

    #[test]
    fn macs_round_trip_and_are_stable() {
        let m = vtep_mac("node-1", 1);
        assert_eq!(m, vtep_mac("node-1", 1));
        assert_ne!(m, vtep_mac("node-2", 1));
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:00:00"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
    }
}
