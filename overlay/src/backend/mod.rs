//! What each backend wants in the kernel for one remote lease, as plain
//! data: vxlan wants an onlink route via the peer's VTEP address, a
//! permanent neighbour entry and an FDB entry (or, with DirectRouting and
//! a peer on the same L2, a plain route); host-gw wants a route via the
//! peer's public IP; udp wants nothing in the kernel per peer (one route
//! for the whole network goes to the TUN device), only an entry in the
//! userspace path's table. No I/O here.

use std::net::{IpAddr, Ipv4Addr};

use controlplane::objects::SubnetLease;
use ipnet::{IpNet, Ipv4Net};
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
        let vtep_mac =
            match l.spec.backend_data.get("VtepMAC") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_str().and_then(parse_mac).ok_or_else(|| {
                    format!("lease {subnet}: BackendData.VtepMAC {v} is not a MAC")
                })?),
            };
        Ok(Peer {
            subnet,
            public_ip,
            backend_type: l.spec.backend_type.clone(),
            vtep_mac,
        })
    }
}

/// The node's own side, as the backends need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub backend: Backend,
    /// The connected network of the underlay interface (its L2 segment).
    pub underlay_net: Ipv4Net,
}

/// How a remote subnet is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Through the vxlan device, onlink, to the peer's VTEP address.
    Vxlan(Ipv4Addr),
    /// Through the underlay interface to the peer's public IP.
    Underlay(Ipv4Addr),
    /// Through the TUN device and the agent's UDP path to the peer's public IP.
    Udp(Ipv4Addr),
}

/// Everything one peer needs in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerState {
    pub subnet: Ipv4Net,
    pub via: Via,
    /// Neighbour entry on the vxlan device: VTEP address -> VTEP MAC.
    pub neigh: Option<(Ipv4Addr, [u8; 6])>,
    /// FDB entry on the vxlan device: VTEP MAC -> public IP.
    pub fdb: Option<([u8; 6], Ipv4Addr)>,
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
    match local.backend {
        Backend::Vxlan { direct_routing, .. } => {
            if direct_routing && same_l2 {
                return Ok(underlay_route(peer));
            }
            let mac = peer.vtep_mac.ok_or_else(|| {
                format!(
                    "peer {} ({}): its lease has no VtepMAC",
                    peer.subnet, peer.public_ip
                )
            })?;
            let vtep = peer.subnet.network();
            Ok(PeerState {
                subnet: peer.subnet,
                via: Via::Vxlan(vtep),
                neigh: Some((vtep, mac)),
                fdb: Some((mac, peer.public_ip)),
            })
        }
        Backend::HostGw => {
            if !same_l2 {
                return Err(format!(
                    "peer {} at {} is not on this node's L2 segment {}: host-gw routes via peers' \
                     public IPs, so every node must share one segment (use the vxlan backend instead)",
                    peer.subnet, peer.public_ip, local.underlay_net
                ));
            }
            Ok(underlay_route(peer))
        }
        Backend::Udp { .. } => Ok(PeerState {
            subnet: peer.subnet,
            via: Via::Udp(peer.public_ip),
            neigh: None,
            fdb: None,
        }),
    }
}

fn underlay_route(peer: &Peer) -> PeerState {
    PeerState {
        subnet: peer.subnet,
        via: Via::Underlay(peer.public_ip),
        neigh: None,
        fdb: None,
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
        }
    }

    fn peer(ip: &str, kind: &str) -> Peer {
        Peer {
            subnet: "10.244.7.0/24".parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend_type: kind.into(),
            vtep_mac: Some([0x02, 1, 2, 3, 4, 5]),
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
        let vtep: Ipv4Addr = "10.244.7.0".parse().unwrap();
        assert_eq!(s.via, Via::Vxlan(vtep));
        assert_eq!(s.neigh, Some((vtep, [0x02, 1, 2, 3, 4, 5])));
        assert_eq!(
            s.fdb,
            Some(([0x02, 1, 2, 3, 4, 5], "198.18.0.12".parse().unwrap()))
        );
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
        assert!(matches!(far.via, Via::Vxlan(_)));
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
