//! The address family a proxy pipeline programs: IPv4 (table `ip
//! kube-proxy`, and the iptables mode) or IPv6 (table `ip6 kube-proxy`,
//! nftables mode only). Generic code takes the family as a type, so the
//! IPv4 path compiles to what it was before dual-stack; this module holds
//! the few places where the families differ.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostnet::nftables::{CmpOp, CtKey, DataType, Expr, Family, Field, Reg, Reject};

use crate::rules::NodeConfig;

/// An address of one family.
pub trait Addr: Copy + Ord + Hash + Debug + Display + Into<IpAddr> + Send + Sync + 'static {
    /// `IPv4` or `IPv6`, as Services and EndpointSlices name it.
    const NAME: &'static str;
    /// The nftables family of the proxy's table.
    const NFT_FAMILY: Family;
    /// The set type of an address.
    const NFT_TYPE: DataType;
    /// How many 32-bit registers an address fills.
    const REGS: u8;
    /// Whether TCP to a port without endpoints is refused with a reset
    /// before the ICMP rule: over IPv6 a connecting socket (SYN_SENT)
    /// ignored the first ICMPv6 port unreachable in our tests and failed
    /// only on the SYN's retransmission a second later; a reset refuses it
    /// at once. IPv4 keeps kube-proxy's ICMP only.
    const TCP_RESET: bool;

    /// `ip` if it is of this family.
    fn of(ip: IpAddr) -> Option<Self>;
    /// As a field of a set key or map value.
    fn field(self) -> Field<'static>;
    /// `ip saddr` / `ip6 saddr` into `dreg`.
    fn saddr(dreg: Reg) -> Expr;
    /// `ip daddr` / `ip6 daddr` into `dreg`.
    fn daddr(dreg: Reg) -> Expr;
    /// `ct original ip daddr` / `ct original ip6 daddr`.
    fn ct_original_daddr(dreg: Reg) -> Expr;
    /// ICMP port unreachable of this family.
    fn reject() -> Reject;
    /// The destination is not loopback (`127.0.0.0/8`, `::1`): NodePorts
    /// do not answer there (unless `localhost-nodeports`, IPv4 only).
    fn not_loopback_daddr(node: &NodeConfig) -> Vec<Expr>;
    /// The pod network of this family, as (network, mask) bytes.
    fn cluster_prefix(node: &NodeConfig) -> Option<(Vec<u8>, Vec<u8>)>;
    /// The `nodeport-addresses` of this family.
    fn nodeport_ips(node: &NodeConfig) -> Vec<Self>;
    /// Whether the node's NodePorts are restricted to `nodeport-addresses`.
    fn nodeports_restricted(node: &NodeConfig) -> bool {
        !Self::nodeport_ips(node).is_empty()
    }
}

impl Addr for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const NFT_FAMILY: Family = Family::Ip;
    const NFT_TYPE: DataType = DataType::Ipv4Addr;
    const REGS: u8 = 1;
    const TCP_RESET: bool = false;

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    fn field(self) -> Field<'static> {
        Field::Ipv4(self)
    }

    fn saddr(dreg: Reg) -> Expr {
        Expr::ip_saddr(dreg)
    }

    fn daddr(dreg: Reg) -> Expr {
        Expr::ip_daddr(dreg)
    }

    fn ct_original_daddr(dreg: Reg) -> Expr {
        Expr::CtOriginal {
            key: CtKey::DstIp,
            dreg,
        }
    }

    fn reject() -> Reject {
        Reject::Icmp4PortUnreachable
    }

    fn not_loopback_daddr(node: &NodeConfig) -> Vec<Expr> {
        if node.localhost_nodeports {
            return Vec::new();
        }
        // ip daddr != 127.0.0.0/8
        vec![
            Expr::ip_daddr(Reg::new(0)),
            Expr::Bitwise {
                sreg: Reg::new(0),
                dreg: Reg::new(0),
                mask: vec![255, 0, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: Reg::new(0),
                op: CmpOp::Neq,
                data: vec![127, 0, 0, 0],
            },
        ]
    }

    fn cluster_prefix(node: &NodeConfig) -> Option<(Vec<u8>, Vec<u8>)> {
        node.cluster_cidr
            .map(|c| (c.network().octets().to_vec(), c.netmask().octets().to_vec()))
    }

    fn nodeport_ips(node: &NodeConfig) -> Vec<Self> {
        node.node_ips.clone()
    }
}

impl Addr for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    const NFT_FAMILY: Family = Family::Ip6;
    const NFT_TYPE: DataType = DataType::Ipv6Addr;
    const REGS: u8 = 4;
    const TCP_RESET: bool = true;

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }

    fn field(self) -> Field<'static> {
        Field::Ipv6(self)
    }

    fn saddr(dreg: Reg) -> Expr {
        Expr::ip6_saddr(dreg)
    }

    fn daddr(dreg: Reg) -> Expr {
        Expr::ip6_daddr(dreg)
    }

    fn ct_original_daddr(dreg: Reg) -> Expr {
        Expr::CtOriginal {
            key: CtKey::DstIp6,
            dreg,
        }
    }

    fn reject() -> Reject {
        Reject::Icmp6PortUnreachable
    }

    fn not_loopback_daddr(_node: &NodeConfig) -> Vec<Expr> {
        // ip6 daddr != ::1
        vec![
            Expr::ip6_daddr(Reg::new(0)),
            Expr::Cmp {
                sreg: Reg::new(0),
                op: CmpOp::Neq,
                data: Ipv6Addr::LOCALHOST.octets().to_vec(),
            },
        ]
    }

    fn cluster_prefix(node: &NodeConfig) -> Option<(Vec<u8>, Vec<u8>)> {
        node.cluster_cidr_v6
            .map(|c| (c.network().octets().to_vec(), c.netmask().octets().to_vec()))
    }

    /// `nodeport-addresses` are IPv4 only: IPv6 NodePorts answer on every
    /// local IPv6 address but `::1`.
    fn nodeport_ips(_node: &NodeConfig) -> Vec<Self> {
        Vec::new()
    }
}
