//! CHECK for the bridge plugin: compares the container interface, its
//! addresses and routes, the host veth and the ipMasq rules against
//! `prevResult`, and says exactly what differs. It changes nothing.

use std::path::Path;

use hostnet::{NetNs, Netlink};

use super::links::family_gateway;
use super::{masq, BridgeConf};
use crate::skel::{CmdArgs, CniError, CniResult, Code, Context, Result};

fn fail(msg: String) -> CniError {
    CniError::new(Code::CheckFailed, msg)
}

/// Verifies the attachment described by `prev`.
pub fn check(args: &CmdArgs, conf: &BridgeConf, netns: &NetNs, prev: &CniResult) -> Result<()> {
    let ifname = args.ifname.as_str();
    let sandbox = netns.path().display().to_string();
    let idx = prev
        .interfaces
        .iter()
        .position(|i| {
            i.name == ifname && (i.sandbox.is_empty() || Path::new(&i.sandbox) == netns.path())
        })
        .ok_or_else(|| fail(format!("prevResult has no interface {ifname} in {sandbox}")))?;
    let want = &prev.interfaces[idx];

    let mut cnl =
        Netlink::new_in(netns).cni(Code::Netlink, || format!("open netlink in {sandbox}"))?;
    let link = cnl
        .link()
        .get_by_name(ifname)
        .cni(Code::Netlink, || format!("look up {ifname}"))?
        .ok_or_else(|| fail(format!("interface {ifname} is missing in {sandbox}")))?;
    if !want.mac.is_empty() && !link.mac_string().eq_ignore_ascii_case(&want.mac) {
        return Err(fail(format!(
            "interface {ifname} has MAC {}, prevResult says {}",
            link.mac_string(),
            want.mac
        )));
    }
    if !link.up {
        return Err(fail(format!("interface {ifname} is down")));
    }

    let addrs = cnl
        .addr()
        .list(link.index)
        .cni(Code::Netlink, || format!("list addresses of {ifname}"))?;
    for ip in prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|n| n == idx))
    {
        if !addrs.contains(&ip.address) {
            return Err(fail(format!(
                "address {} is missing from {ifname}",
                ip.address
            )));
        }
    }

    for v4 in [true, false] {
        let wanted: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| r.dst.addr().is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let have = cnl
            .route()
            .list(v4)
            .cni(Code::Netlink, || "list container routes".into())?;
        for r in wanted {
            let gw = r.gw.or_else(|| family_gateway(prev, v4));
            let found = have
                .iter()
                .any(|h| h.dst == r.dst.trunc() && (gw.is_none() || h.gateway == gw));
            if !found {
                return Err(fail(match gw {
                    Some(gw) => format!("route {} via {gw} is missing in {sandbox}", r.dst),
                    None => format!("route {} is missing in {sandbox}", r.dst),
                }));
            }
        }
    }

    // Host side: the bridge and our veth attached to it.
    let mut nl = Netlink::new().cni(Code::Netlink, || "open netlink".into())?;
    let br = nl
        .link()
        .get_by_name(&conf.bridge)
        .cni(Code::Netlink, || format!("look up {}", conf.bridge))?
        .ok_or_else(|| fail(format!("bridge {} is missing", conf.bridge)))?;
    let host_name = super::host_veth_name(&conf.name, &args.container_id, ifname);
    let host = nl
        .link()
        .get_by_name(&host_name)
        .cni(Code::Netlink, || format!("look up {host_name}"))?
        .ok_or_else(|| fail(format!("host interface {host_name} is missing")))?;
    if host.master != Some(br.index) {
        return Err(fail(format!(
            "host interface {host_name} is not attached to {}",
            conf.bridge
        )));
    }

    if conf.ip_masq {
        let addrs: Vec<_> = prev.ips.iter().map(|i| i.address).collect();
        masq::verify(&masq::MasqRules::for_addresses(&conf.name, &addrs))?;
    }
    Ok(())
}
