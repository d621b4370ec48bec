//! The cluster's network config in flannel's shape (`net-conf.json`:
//! Network, SubnetLen, SubnetMin, SubnetMax, Backend). It lives in the
//! control plane as a ConfigMap so every node reads the same one; this
//! module parses, defaults and validates it, and does no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where the config lives: ConfigMap `kube-system/knode-network`, key
/// `net-conf.json` (flannel keeps it in `kube-flannel-cfg` under the same key).
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// The ConfigMap's name.
pub const CONFIGMAP_NAME: &str = "knode-network";
/// The key holding the JSON.
pub const CONFIGMAP_KEY: &str = "net-conf.json";

/// flannel's default VXLAN port (the Linux kernel's historical default).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// The VXLAN header and outer IPv4/UDP/Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// flannel's default port for the udp backend.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// The udp backend's outer IPv4 and UDP headers (the inner packet is the
/// whole UDP payload).
pub const UDP_OVERHEAD: u32 = 28;
/// The VXLAN header and outer IPv6/UDP/Ethernet headers (an IPv6 underlay).
pub const VXLAN6_OVERHEAD: u32 = 70;
/// flannel's default IPv6SubnetLen.
pub const DEFAULT_IPV6_SUBNET_LEN: u8 = 64;

/// The backend part of the config, as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    #[serde(rename = "Type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        rename = "DirectRouting",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_routing: Option<bool>,
}

/// `net-conf.json` as written: every field but Network optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetConf {
    #[serde(rename = "Network", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(rename = "SubnetLen", default, skip_serializing_if = "Option::is_none")]
    pub subnet_len: Option<u8>,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<String>,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<String>,
    #[serde(rename = "Backend", default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,
    /// flannel's dual-stack keys: IPv6 pod subnets beside the IPv4 ones.
    #[serde(
        rename = "EnableIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv6: Option<bool>,
    #[serde(
        rename = "IPv6Network",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_network: Option<String>,
    #[serde(
        rename = "IPv6SubnetLen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_subnet_len: Option<u8>,
}

/// The IPv6 half of a dual-stack network: node `n`'s IPv6 subnet is the
/// `n`th /`subnet_len` of `network`, where `n` is the number of its IPv4
/// subnet inside the IPv4 Network (10.244.3.0/24 pairs with
/// fd00:10:244:3::/64 in fd00:10:244::/56). The IPv4 lease's
/// compare-and-set then keeps the IPv6 subnets distinct as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Conf {
    pub network: Ipv6Net,
    pub subnet_len: u8,
}

/// Splits a `cluster-cidr` value: one CIDR, or an IPv4 and an IPv6 CIDR
/// separated by a comma (kube-controller-manager's and k3s's form), in
/// either order. Returns (IPv4, IPv6); errors name the key.
pub fn split_cluster_cidr(value: &str) -> Result<(Ipv4Net, Option<Ipv6Net>)> {
    let bad = |msg: String| Error::Config(format!("cluster-cidr: {msg}"));
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    if parts.len() > 2 {
        return Err(bad(format!(
            "{value:?} has {} CIDRs; at most two (one IPv4 and one IPv6, like 10.244.0.0/16,fd00:10:244::/56)",
            parts.len()
        )));
    }
    let mut v4 = None;
    let mut v6 = None;
    for p in &parts {
        let net: IpNet = p
            .parse()
            .map_err(|_| bad(format!("{p:?} is not a CIDR like 10.244.0.0/16")))?;
        if net.trunc() != net {
            return Err(bad(format!(
                "{net} has host bits set (did you mean {}?)",
                net.trunc()
            )));
        }
        match net {
            IpNet::V4(n) if v4.is_none() => v4 = Some(n),
            IpNet::V6(n) if v6.is_none() => v6 = Some(n),
            _ => {
                return Err(bad(format!(
                "{value:?} has two {} CIDRs; a dual-stack network is one IPv4 and one IPv6 CIDR",
                if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            )))
            }
        }
    }
    match v4 {
        Some(v4) => Ok((v4, v6)),
        None => Err(bad(format!(
            "{value:?} has no IPv4 CIDR; IPv6-only pod networks are not supported (give an IPv4 CIDR beside it)"
        ))),
    }
}

/// Which backend carries cross-node traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Kernel VXLAN; `direct_routing` uses plain routes to peers on the same L2.
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    /// Plain routes via each peer's public IP (all peers on one L2 segment).
    HostGw,
    /// flannel's udp: a TUN device and the agent's own encapsulation, each
    /// IP packet the payload of one UDP datagram to the peer's `port`.
    Udp { port: u16 },
}

impl Backend {
    /// The `BackendType` written into leases.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp { .. } => "udp",
        }
    }

    /// The pod MTU for an underlay of `underlay_mtu`.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan { .. } => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            Backend::HostGw => underlay_mtu,
            Backend::Udp { .. } => underlay_mtu.saturating_sub(UDP_OVERHEAD),
        }
    }
}

/// The validated config with flannel's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConf {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
    /// The IPv6 network of a dual-stack cluster.
    pub ipv6: Option<Ipv6Conf>,
}

impl NetConf {
    /// Parses and validates `net-conf.json`.
    pub fn parse(json: &str) -> Result<NetConf> {
        let raw: RawNetConf = serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("{CONFIGMAP_KEY}: {e}")))?;
        NetConf::from_raw(&raw)
    }

    /// The config a node proposes from its flags when none is stored yet.
    /// `cluster_cidr` may hold an IPv4 and an IPv6 CIDR (see
    /// [`split_cluster_cidr`]); the IPv6 one becomes flannel's
    /// `EnableIPv6` and `IPv6Network`.
    pub fn raw_from_flags(cluster_cidr: &str, backend: &str) -> Result<RawNetConf> {
        let (v4, v6) = split_cluster_cidr(cluster_cidr)?;
        Ok(RawNetConf {
            network: Some(v4.to_string()),
            backend: Some(BackendSpec {
                kind: Some(backend.to_string()),
                ..Default::default()
            }),
            enable_ipv6: v6.map(|_| true),
            ipv6_network: v6.map(|n| n.to_string()),
            ..Default::default()
        })
    }

    /// The config as `cluster-cidr` would spell it (`10.244.0.0/16` or
    /// `10.244.0.0/16,fd00:10:244::/56`).
    pub fn cluster_cidr(&self) -> String {
        match self.ipv6 {
            Some(v6) => format!("{},{}", self.network, v6.network),
            None => self.network.to_string(),
        }
    }

    /// The IPv6 subnet paired with IPv4 subnet `v4` (see [`Ipv6Conf`]).
    pub fn subnet6_for(&self, v4: Ipv4Net) -> Option<Ipv6Net> {
        let v6 = self.ipv6?;
        let n =
            (u32::from(v4.network()) - u32::from(self.network.network())) >> (32 - self.subnet_len);
        let start = u128::from(v6.network.network()) + (u128::from(n) << (128 - v6.subnet_len));
        Ipv6Net::new(Ipv6Addr::from(start), v6.subnet_len).ok()
    }

    /// Defaults and validation, as flannel does them: SubnetLen 24 (two
    /// bits past the network when the network is smaller than a /22),
    /// SubnetMin the second subnet, SubnetMax the last one.
    pub fn from_raw(raw: &RawNetConf) -> Result<NetConf> {
        let bad = |field: &str, msg: String| Error::Config(format!("{field}: {msg}"));
        let network_s = raw
            .network
            .as_deref()
            .ok_or_else(|| bad("Network", "required (e.g. \"10.244.0.0/16\")".into()))?;
        let network: IpNet = network_s
            .parse()
            .map_err(|_| bad("Network", format!("{network_s:?} is not a CIDR")))?;
        let IpNet::V4(network) = network else {
            return Err(bad(
                "Network",
                format!("{network_s}: only IPv4 is supported here; an IPv6 network goes in IPv6Network (with EnableIPv6) beside an IPv4 Network"),
            ));
        };
        if network.trunc() != network {
            return Err(bad(
                "Network",
                format!(
                    "{network} has host bits set (did you mean {}?)",
                    network.trunc()
                ),
            ));
        }
        let subnet_len = match raw.subnet_len {
            Some(l) => l,
            None if network.prefix_len() < 22 => 24,
            None => network.prefix_len() + 2,
        };
        if subnet_len > 30 {
            return Err(bad(
                "SubnetLen",
                format!("/{subnet_len} leaves no room for pods; it must be /30 or larger"),
            ));
        }
        if subnet_len <= network.prefix_len() {
            return Err(bad(
                "SubnetLen",
                format!(
                    "/{subnet_len} must be longer than the Network's /{} so it holds more than one subnet",
                    network.prefix_len()
                ),
            ));
        }
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last_subnet = u32::from(network.broadcast()) - size + 1;
        let parse_bound = |field: &str, v: &Option<String>, default: u32| -> Result<Ipv4Addr> {
            let Some(s) = v else {
                return Ok(Ipv4Addr::from(default));
            };
            let ip: Ipv4Addr = s
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| bad(field, format!("{s:?} is not an IPv4 address")))?;
            if !network.contains(&ip) {
                return Err(bad(field, format!("{ip} is outside Network {network}")));
            }
            if u32::from(ip) % size != 0 {
                return Err(bad(
                    field,
                    format!("{ip} is not the start of a /{subnet_len} subnet"),
                ));
            }
            Ok(ip)
        };
        let subnet_min = parse_bound("SubnetMin", &raw.subnet_min, first + size)?;
        let subnet_max = parse_bound("SubnetMax", &raw.subnet_max, last_subnet)?;
        if subnet_min > subnet_max {
            return Err(bad(
                "SubnetMin",
                format!("{subnet_min} is above SubnetMax {subnet_max}"),
            ));
        }
        let backend = backend_from(raw.backend.as_ref().cloned().unwrap_or_default())?;
        let ipv6 = ipv6_from(raw, network, subnet_len)?;
        Ok(NetConf {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            ipv6,
        })
    }

    /// How many subnets can be leased.
    pub fn capacity(&self) -> u32 {
        let size = 1u32 << (32 - self.subnet_len);
        (u32::from(self.subnet_max) - u32::from(self.subnet_min)) / size + 1
    }

    /// The `i`th leasable subnet (`i < capacity()`).
    pub fn subnet_at(&self, i: u32) -> Ipv4Net {
        let size = 1u32 << (32 - self.subnet_len);
        let start = u32::from(self.subnet_min) + i * size;
        Ipv4Net::new(Ipv4Addr::from(start), self.subnet_len).expect("prefix length checked")
    }

    /// Whether `subnet` is one this config can lease.
    pub fn is_leasable(&self, subnet: &IpNet) -> bool {
        let IpNet::V4(s) = subnet else { return false };
        s.prefix_len() == self.subnet_len
            && s.trunc() == *s
            && s.network() >= self.subnet_min
            && s.network() <= self.subnet_max
    }
}

/// flannel's `EnableIPv6`, `IPv6Network` and `IPv6SubnetLen`, checked so
/// that every IPv4 subnet has its IPv6 partner.
fn ipv6_from(raw: &RawNetConf, network: Ipv4Net, subnet_len: u8) -> Result<Option<Ipv6Conf>> {
    let bad = |field: &str, msg: String| Error::Config(format!("{field}: {msg}"));
    let enabled = raw.enable_ipv6.unwrap_or(false);
    let Some(net_s) = raw.ipv6_network.as_deref().filter(|_| enabled) else {
        if enabled {
            return Err(bad(
                "IPv6Network",
                "required with EnableIPv6 (e.g. \"fd00:10:244::/56\")".into(),
            ));
        }
        if raw.ipv6_network.is_some() || raw.ipv6_subnet_len.is_some() {
            let field = if raw.ipv6_network.is_some() {
                "IPv6Network"
            } else {
                "IPv6SubnetLen"
            };
            return Err(bad(field, "set without EnableIPv6: true".into()));
        }
        return Ok(None);
    };
    let net: IpNet = net_s
        .parse()
        .map_err(|_| bad("IPv6Network", format!("{net_s:?} is not a CIDR")))?;
    let IpNet::V6(net) = net else {
        return Err(bad("IPv6Network", format!("{net_s} is not an IPv6 CIDR")));
    };
    if net.trunc() != net {
        return Err(bad(
            "IPv6Network",
            format!("{net} has host bits set (did you mean {}?)", net.trunc()),
        ));
    }
    let len = raw.ipv6_subnet_len.unwrap_or(DEFAULT_IPV6_SUBNET_LEN);
    if len > 120 {
        return Err(bad(
            "IPv6SubnetLen",
            format!("/{len} leaves too few addresses for pods; at most /120"),
        ));
    }
    let need = subnet_len - network.prefix_len();
    if len < net.prefix_len() || len - net.prefix_len() < need {
        return Err(bad(
            "IPv6SubnetLen",
            format!(
                "/{len} subnets of IPv6Network {net} are {} too few: Network {network} has 2^{need} /{subnet_len} subnets and each node's IPv4 subnet is paired with an IPv6 one, so IPv6SubnetLen must be at least /{} (or IPv6Network larger)",
                if len < net.prefix_len() { "not subnets at all, and".to_string() } else { format!("2^{},", len - net.prefix_len()) },
                u32::from(net.prefix_len()) + u32::from(need)
            ),
        ));
    }
    Ok(Some(Ipv6Conf {
        network: net,
        subnet_len: len,
    }))
}

fn backend_from(b: BackendSpec) -> Result<Backend> {
    let bad = |field: &str, msg: String| Error::Config(format!("Backend.{field}: {msg}"));
    let kind = b.kind.as_deref().unwrap_or("vxlan");
    match kind {
        "vxlan" => {
            let vni = b.vni.unwrap_or(1);
            if vni == 0 || vni >= 1 << 24 {
                return Err(bad("VNI", format!("{vni} is outside 1..16777215")));
            }
            let port = match b.port {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(p) => p,
            };
            Ok(Backend::Vxlan {
                vni,
                port,
                direct_routing: b.direct_routing.unwrap_or(false),
            })
        }
        "host-gw" => {
            for (field, set) in [
                ("VNI", b.vni.is_some()),
                ("Port", b.port.is_some()),
                ("DirectRouting", b.direct_routing.is_some()),
            ] {
                if set {
                    return Err(bad(field, "only applies to Type vxlan".into()));
                }
            }
            Ok(Backend::HostGw)
        }
        "udp" => {
            for (field, set) in [
                ("VNI", b.vni.is_some()),
                ("DirectRouting", b.direct_routing.is_some()),
            ] {
                if set {
                    return Err(bad(field, "only applies to Type vxlan".into()));
                }
            }
            let port = match b.port {
                None | Some(0) => DEFAULT_UDP_PORT,
                Some(p) => p,
            };
            Ok(Backend::Udp { port })
        }
        other => Err(bad(
            "Type",
            format!("{other:?} is not a backend (vxlan, host-gw or udp)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        NetConf::parse(json).unwrap_err().to_string()
    }

    #[test]
    fn flannel_defaults() {
        let c = NetConf::parse(r#"{"Network": "10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(
            c.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            }
        );
        assert_eq!(c.capacity(), 255);
        assert_eq!(c.subnet_at(0).to_string(), "10.244.1.0/24");
        assert_eq!(c.subnet_at(254).to_string(), "10.244.255.0/24");
        assert_eq!(c.backend.pod_mtu(1500), 1450);
    }

    #[test]
    fn dual_stack_pairs_each_ipv4_subnet_with_an_ipv6_one() {
        let raw = NetConf::raw_from_flags("10.244.0.0/16,fd00:10:244::/56", "vxlan").unwrap();
        let json = serde_json::to_string(&raw).unwrap();
        assert!(
            json.contains(r#""EnableIPv6":true,"IPv6Network":"fd00:10:244::/56""#),
            "{json}"
        );
        let c = NetConf::parse(&json).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(
            c.subnet6_for("10.244.3.0/24".parse().unwrap()),
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
        assert_eq!(
            c.subnet6_for("10.244.255.0/24".parse().unwrap()),
            Some("fd00:10:244:ff::/64".parse().unwrap())
        );
        assert_eq!(c.cluster_cidr(), "10.244.0.0/16,fd00:10:244::/56");
        // Either order, as kube-controller-manager takes it.
        let (v4, v6) = split_cluster_cidr("fd00::/48, 10.1.0.0/16").unwrap();
        assert_eq!(
            (v4.to_string(), v6.unwrap().to_string()),
            ("10.1.0.0/16".into(), "fd00::/48".into())
        );
        // Single-stack stays single-stack.
        let c = NetConf::parse(r#"{"Network": "10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.ipv6, None);
        assert_eq!(c.subnet6_for("10.244.3.0/24".parse().unwrap()), None);
        let c = NetConf::parse(
            r#"{"Network": "10.9.0.0/16", "SubnetLen": 26, "EnableIPv6": true, "IPv6Network": "fd00:9::/48", "IPv6SubnetLen": 80}"#,
        )
        .unwrap();
        assert_eq!(
            c.subnet6_for("10.9.1.64/26".parse().unwrap()),
            Some("fd00:9::5:0:0:0/80".parse().unwrap())
        );
    }

    #[test]
    fn bad_dual_stack_input_names_the_key() {
        let flags = |v: &str| NetConf::raw_from_flags(v, "vxlan").unwrap_err().to_string();
        assert!(flags("10.244.0.0/16,10.245.0.0/16")
            .contains("cluster-cidr: \"10.244.0.0/16,10.245.0.0/16\" has two IPv4 CIDRs"));
        assert!(flags("fd00::/56,fd01::/56").contains("two IPv6 CIDRs"));
        assert!(flags("10.244.0.0/16,fd00::/56,10.1.0.0/16").contains("has 3 CIDRs; at most two"));
        assert!(flags("10.244.0.0/16,fd00::zz/56")
            .contains("cluster-cidr: \"fd00::zz/56\" is not a CIDR"));
        assert!(flags("fd00::/56").contains("no IPv4 CIDR"));
        assert!(flags("10.244.0.0/16,fd00::1/56").contains("host bits"));
        let raw = NetConf::raw_from_flags("10.244.0.0/16,fd00::/60", "vxlan").unwrap();
        let e = NetConf::from_raw(&raw).unwrap_err().to_string();
        assert!(
            e.contains("IPv6SubnetLen: /64 subnets of IPv6Network fd00::/60 are 2^4, too few"),
            "{e}"
        );
        assert!(e.contains("at least /68"), "{e}");
        assert!(err(r#"{"Network": "10.0.0.0/16", "EnableIPv6": true}"#)
            .contains("IPv6Network: required"));
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "IPv6Network": "fd00::/48"}"#)
                .contains("without EnableIPv6")
        );
        assert!(err(
            r#"{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "10.1.0.0/16"}"#
        )
        .contains("IPv6Network: 10.1.0.0/16 is not an IPv6 CIDR"));
        assert!(err(r#"{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 124}"#).contains("IPv6SubnetLen: /124"));
        assert!(err(r#"{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/64", "IPv6SubnetLen": 48}"#).contains("IPv6SubnetLen: /48"));
    }

    #[test]
    fn udp_is_flannels_port_and_mtu() {
        let c =
            NetConf::parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#).unwrap();
        assert_eq!(c.backend, Backend::Udp { port: 8285 });
        assert_eq!(c.backend.type_name(), "udp");
        assert_eq!(c.backend.pod_mtu(1500), 1472);
        let c = NetConf::parse(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 9000}}"#,
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Udp { port: 9000 });
    }

    #[test]
    fn small_networks_get_two_more_bits() {
        let c = NetConf::parse(r#"{"Network": "10.9.0.0/23"}"#).unwrap();
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.capacity(), 3);
    }

    #[test]
    fn explicit_fields_are_kept() {
        let c = NetConf::parse(
            r#"{"Network": "10.1.0.0/16", "SubnetLen": 26, "SubnetMin": "10.1.4.0",
                "SubnetMax": "10.1.4.192", "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "DirectRouting": true}}"#,
        )
        .unwrap();
        assert_eq!(c.capacity(), 4);
        assert_eq!(
            c.backend,
            Backend::Vxlan {
                vni: 42,
                port: 4789,
                direct_routing: true
            }
        );
        assert!(c.is_leasable(&"10.1.4.64/26".parse().unwrap()));
        assert!(!c.is_leasable(&"10.1.5.0/26".parse().unwrap()));
        assert!(!c.is_leasable(&"10.1.4.0/24".parse().unwrap()));
    }

    #[test]
    fn invalid_combinations_name_the_field() {
        assert!(err("{}").contains("Network: required"));
        assert!(err(r#"{"Network": "10.244.0.1/16"}"#).contains("host bits"));
        assert!(err(r#"{"Network": "fd00::/64"}"#).contains("only IPv4"));
        assert!(err(r#"{"Network": "fd00::/64"}"#).contains("IPv6Network"));
        assert!(err(r#"{"Network": "10.0.0.0/16", "SubnetLen": 16}"#).contains("SubnetLen"));
        assert!(err(r#"{"Network": "10.0.0.0/16", "SubnetLen": 31}"#).contains("SubnetLen"));
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}"#).contains("SubnetMin")
        );
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "SubnetMax": "10.0.3.7"}"#).contains("SubnetMax")
        );
        assert!(err(
            r#"{"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"}"#
        )
        .contains("above SubnetMax"));
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}"#)
                .contains("Backend.VNI")
        );
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw", "VNI": 2}}"#)
                .contains("only applies to Type vxlan")
        );
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "ipip"}}"#)
                .contains("\"ipip\" is not a backend")
        );
        assert!(
            err(r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "udp", "VNI": 1}}"#)
                .contains("Backend.VNI: only applies to Type vxlan")
        );
        assert!(err(r#"{"Network": "10.0.0.0/16", "Subnetlen": 24}"#).contains("Subnetlen"));
    }
}
