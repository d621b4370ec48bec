//! knode-bridge: attaches a container to a Linux bridge with a veth pair and
//! applies the IPAM result, as the reference bridge plugin does, with one
//! ipMasq rule set per network. ADD rolls back what it made on failure; DEL
//! succeeds when parts are already gone. Link work lives in `links`.

mod check;
pub mod config;
mod links;
pub mod masq;

use std::net::IpAddr;
use std::path::Path;

use hostnet::NetNs;
use ipnet::IpNet;

pub use config::BridgeConf;
pub use links::TOMBSTONE_PREFIX;

use crate::delegate;
use crate::skel::{
    CmdArgs, CniError, CniResult, Code, Command, Context, Interface, Plugin, Result, Route,
};

/// The bridge plugin.
pub struct Bridge;

/// The host-side veth name for an attachment: stable, so DEL and CHECK can
/// find it without the container's namespace.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{network}\0{container_id}\0{ifname}").as_bytes());
    let hex: String = h.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("veth{hex}")
}

fn open_netns(path: &Path) -> Result<NetNs> {
    NetNs::open(path).cni(Code::InvalidEnv, || {
        format!("CNI_NETNS: open {}", path.display())
    })
}

/// The gateway an IP uses: the IPAM's, else the subnet's first address.
fn gateway_for(address: &IpNet) -> IpAddr {
    match address.network() {
        IpAddr::V4(n) => IpAddr::V4((u32::from(n).wrapping_add(1)).into()),
        IpAddr::V6(n) => IpAddr::V6((u128::from(n).wrapping_add(1)).into()),
    }
}

fn default_route(v4: bool) -> IpNet {
    if v4 {
        "0.0.0.0/0".parse().expect("literal")
    } else {
        "::/0".parse().expect("literal")
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = BridgeConf::parse(&args.stdin)?;
        let netns = open_netns(args.netns.as_deref().unwrap_or(Path::new("")))?;

        // IPAM first: an exhausted range fails before any link exists.
        let mut result = match conf.ipam_type() {
            Some(t) => delegate::call(args, t, Command::Add)?.unwrap_or_default(),
            None => CniResult::default(),
        };
        match attach(args, &conf, &netns, &mut result) {
            Ok(()) => Ok(result),
            Err(e) => {
                // Roll back: no veth and no IP is left behind.
                let _ = links::remove_host_veth(&host_veth_name(
                    &conf.name,
                    &args.container_id,
                    &args.ifname,
                ));
                if let Some(t) = conf.ipam_type() {
                    let _ = delegate::call(args, t, Command::Del);
                }
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::parse(&args.stdin)?;
        // Release the IP first: it must be freed even if the links are half gone.
        let ipam = match conf.ipam_type() {
            Some(t) => delegate::call(args, t, Command::Del).map(|_| ()),
            None => Ok(()),
        };
        let ns = args
            .netns
            .as_deref()
            .filter(|p| p.exists())
            .and_then(|p| NetNs::open(p).ok());
        let links = links::detach(
            ns.as_ref(),
            &args.ifname,
            &host_veth_name(&conf.name, &args.container_id, &args.ifname),
        );
        ipam.and(links)
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::parse(&args.stdin)?;
        let prev = args
            .conf
            .prev()?
            .ok_or_else(|| CniError::new(Code::InvalidConfig, "prevResult: required for CHECK"))?;
        if let Some(t) = conf.ipam_type() {
            delegate::call(args, t, Command::Check)?;
        }
        let netns = open_netns(args.netns.as_deref().unwrap_or(Path::new("")))?;
        check::check(args, &conf, &netns, &prev)
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::parse(&args.stdin)?;
        match conf.ipam_type() {
            Some(t) => delegate::call(args, t, Command::Status).map(|_| ()),
            None => Ok(()),
        }
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::parse(&args.stdin)?;
        links::sweep_tombstones()?;
        match conf.ipam_type() {
            Some(t) => delegate::call(args, t, Command::Gc).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// Everything ADD does after IPAM; fills the result's interfaces and routes.
fn attach(args: &CmdArgs, conf: &BridgeConf, netns: &NetNs, result: &mut CniResult) -> Result<()> {
    // Gateways: the IPAM's, or the subnet's first address when we are the gateway.
    if conf.is_gateway {
        for ip in &mut result.ips {
            if ip.gateway.is_none() {
                ip.gateway = Some(gateway_for(&ip.address));
            }
        }
    }
    if conf.is_default_gateway {
        for v4 in [true, false] {
            let gw = result
                .ips
                .iter()
                .find(|i| i.address.addr().is_ipv4() == v4)
                .and_then(|i| i.gateway);
            let dst = default_route(v4);
            if gw.is_some() && !result.routes.iter().any(|r| r.dst == dst) {
                result.routes.push(Route::new(dst, gw));
            }
        }
    }

    let host_veth = host_veth_name(&conf.name, &args.container_id, &args.ifname);
    let attached = links::attach(conf, netns, &args.ifname, &host_veth, result)?;
    result.interfaces = vec![
        Interface {
            name: conf.bridge.clone(),
            mac: attached.bridge_mac,
            ..Default::default()
        },
        Interface {
            name: host_veth,
            mac: attached.host_mac,
            ..Default::default()
        },
        Interface {
            name: args.ifname.clone(),
            mac: attached.container_mac,
            mtu: conf.link_mtu(),
            sandbox: netns.path().display().to_string(),
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }

    if !result.ips.is_empty() {
        hostnet::sysctl::ensure("net/ipv4/ip_forward", "1")
            .cni(Code::Io, || "enable ip_forward".into())?;
        if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            hostnet::sysctl::ensure("net/ipv6/conf/all/forwarding", "1")
                .cni(Code::Io, || "enable IPv6 forwarding".into())?;
        }
    }
    if conf.ip_masq {
        let addrs: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
        masq::ensure(
            &masq::MasqRules::for_addresses(&conf.name, &addrs),
            Path::new(masq::STATE_DIR),
        )?;
    }
    Ok(())
}
