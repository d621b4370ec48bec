//! The bridge plugin's link work: ensure the bridge and its gateway
//! addresses, create the veth pair straight into the container namespace,
//! address it and route it; and the reverse for DEL. No IPAM, no iptables.

use std::net::IpAddr;

use hostnet::netlink::{RouteRequest, VethRequest};
use hostnet::{Link, NetNs, Netlink};
use ipnet::IpNet;

use super::BridgeConf;
use crate::skel::{CniError, CniResult, Code, Context, Result};

/// MACs of the links ADD made or used.
pub struct Attached {
    pub bridge_mac: String,
    pub host_mac: String,
    pub container_mac: String,
}

/// Creates the bridge side and the container side for `result`'s IPs and routes.
pub fn attach(
    conf: &BridgeConf,
    netns: &NetNs,
    ifname: &str,
    host_veth: &str,
    result: &CniResult,
) -> Result<Attached> {
    let mut nl = Netlink::new().cni(Code::Netlink, || "open netlink".into())?;
    let bridge = ensure_bridge(&mut nl, conf)?;
    if conf.is_gateway {
        for ip in &result.ips {
            if let Some(gw) = ip.gateway {
                let want = IpNet::new(gw, ip.address.prefix_len())
                    .cni(Code::InvalidConfig, || {
                        format!("gateway {gw} for {}", ip.address)
                    })?;
                ensure_gateway_addr(&mut nl, conf, &bridge, want)?;
            }
        }
    }

    let req = VethRequest {
        name: host_veth.to_string(),
        peer_name: ifname.to_string(),
        peer_netns_fd: Some(netns.raw_fd()),
        mtu: conf.link_mtu(),
        master: Some(bridge.index),
        up: true,
    };
    if let Err(e) = nl.link().add_veth(&req) {
        if e.is_exists() {
            let host_taken = nl.link().get_by_name(host_veth).ok().flatten().is_some();
            let msg = if host_taken {
                format!("host interface {host_veth} already exists: an earlier ADD of this container was not deleted")
            } else {
                format!(
                    "container interface {ifname} already exists in {}",
                    netns.path().display()
                )
            };
            return Err(CniError::new(Code::Netlink, msg));
        }
        return Err(CniError::new(
            Code::Netlink,
            format!("create veth {host_veth} <-> {ifname}"),
        )
        .with_details(e));
    }
    let host = nl
        .link()
        .get_by_name(host_veth)
        .cni(Code::Netlink, || format!("look up {host_veth}"))?
        .ok_or_else(|| {
            CniError::new(
                Code::Netlink,
                format!("{host_veth} vanished after creation"),
            )
        })?;
    if conf.hairpin_mode {
        nl.link()
            .set_hairpin(host.index, true)
            .cni(Code::Netlink, || format!("set hairpin on {host_veth}"))?;
    }

    let mut cnl = Netlink::new_in(netns).cni(Code::Netlink, || {
        format!("open netlink in {}", netns.path().display())
    })?;
    let cont = cnl
        .link()
        .get_by_name(ifname)
        .cni(Code::Netlink, || format!("look up {ifname} in container"))?
        .ok_or_else(|| {
            CniError::new(
                Code::Netlink,
                format!("{ifname} missing in container after creation"),
            )
        })?;
    cnl.link()
        .set_up(cont.index, true)
        .cni(Code::Netlink, || format!("set {ifname} up"))?;
    for ip in &result.ips {
        cnl.addr()
            .add(cont.index, ip.address)
            .cni(Code::Netlink, || format!("add {} to {ifname}", ip.address))?;
    }
    for r in &result.routes {
        let v4 = r.dst.addr().is_ipv4();
        let gw = r.gw.or_else(|| family_gateway(result, v4));
        let mut req = RouteRequest::new(r.dst, gw, Some(cont.index));
        req.mtu = r.mtu;
        cnl.route().add(&req).cni(Code::Netlink, || match gw {
            Some(gw) => format!("add route {} via {gw} in container", r.dst),
            None => format!("add route {} in container", r.dst),
        })?;
    }
    Ok(Attached {
        bridge_mac: bridge.mac_string(),
        host_mac: host.mac_string(),
        container_mac: cont.mac_string(),
    })
}

/// The gateway of the first IP of the family, for routes that name none.
pub fn family_gateway(result: &CniResult, v4: bool) -> Option<IpAddr> {
    result
        .ips
        .iter()
        .find(|i| i.address.addr().is_ipv4() == v4)
        .and_then(|i| i.gateway)
}

fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link> {
    let name = conf.bridge.as_str();
    let mut br = nl
        .link()
        .get_by_name(name)
        .cni(Code::Netlink, || format!("look up bridge {name}"))?;
    let created = br.is_none();
    if created {
        match nl.link().add_bridge(name, conf.link_mtu()) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {} // a concurrent ADD made it
            Err(e) => {
                return Err(
                    CniError::new(Code::Netlink, format!("create bridge {name}")).with_details(e),
                )
            }
        }
        br = nl
            .link()
            .get_by_name(name)
            .cni(Code::Netlink, || format!("look up bridge {name}"))?;
    }
    let br = br.ok_or_else(|| {
        CniError::new(
            Code::Netlink,
            format!("bridge {name} vanished after creation"),
        )
    })?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "bridge: {name} exists and is a {} link, not a bridge",
                br.kind.as_deref().unwrap_or("plain")
            ),
        ));
    }
    if created {
        // A bridge whose address was never set takes the lowest address
        // of its ports, so a new pod's veth can change it; every pod's
        // cached gateway address is then wrong until its ARP entry
        // expires (cross-node and off-node traffic stops for seconds).
        // Setting it once, to itself, pins it (NET_ADDR_SET).
        nl.link()
            .set_mac(br.index, &br.mac)
            .cni(Code::Netlink, || {
                format!("pin the address of bridge {name}")
            })?;
    }
    if !br.up {
        nl.link()
            .set_up(br.index, true)
            .cni(Code::Netlink, || format!("set {name} up"))?;
    }
    if conf.promisc_mode && !br.promisc {
        nl.link()
            .set_promisc(br.index, true)
            .cni(Code::Netlink, || format!("set {name} promiscuous"))?;
    }
    Ok(br)
}

fn ensure_gateway_addr(nl: &mut Netlink, conf: &BridgeConf, br: &Link, want: IpNet) -> Result<()> {
    let have = nl.addr().list(br.index).cni(Code::Netlink, || {
        format!("list addresses of {}", conf.bridge)
    })?;
    if have.contains(&want) {
        return Ok(());
    }
    // Another address in the same subnet: only replaced with forceAddress.
    for other in have
        .iter()
        .filter(|a| a.trunc() == want.trunc() || a.contains(&want.addr()))
    {
        if !conf.force_address {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!(
                    "bridge {} already has address {other}, not gateway {want} (set forceAddress to replace it)",
                    conf.bridge
                ),
            ));
        }
        nl.addr().del(br.index, *other).cni(Code::Netlink, || {
            format!("remove {other} from {}", conf.bridge)
        })?;
    }
    match nl.addr().add(br.index, want) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()), // a concurrent ADD set it
        Err(e) => Err(CniError::new(
            Code::Netlink,
            format!("add gateway {want} to {}", conf.bridge),
        )
        .with_details(e)),
    }
}

/// Prefix of veth ends that DEL has detached and a background process is
/// deleting. GC deletes any left behind (if that process was killed).
pub const TOMBSTONE_PREFIX: &str = "kdel";

/// Removes the container interface (if its namespace is given) and the host
/// end; parts already gone are not an error.
///
/// Deleting a veth makes the kernel wait for RCU grace periods (15-20 ms on
/// a small VM, most of a DEL). So DEL frees both names at once (link down,
/// renamed to a `kdel*` tombstone, < 1 ms each) and leaves the delete itself
/// to a forked child: when DEL returns, `CNI_IFNAME` and the host name can be
/// reused at once and the pair is down; the kernel removes it moments later.
pub fn detach(netns: Option<&NetNs>, ifname: &str, host_veth: &str) -> Result<()> {
    let mut nl = Netlink::new().cni(Code::Netlink, || "open netlink".into())?;
    let mut victim: Option<(Netlink, u32)> = None;
    if let Some(l) = nl
        .link()
        .get_by_name(host_veth)
        .cni(Code::Netlink, || format!("look up {host_veth}"))?
    {
        tombstone(&mut nl, &l)?;
        victim = Some((nl, l.index));
    }
    if let Some(ns) = netns {
        let mut cnl = Netlink::new_in(ns).cni(Code::Netlink, || {
            format!("open netlink in {}", ns.path().display())
        })?;
        if let Some(l) = cnl
            .link()
            .get_by_name(ifname)
            .cni(Code::Netlink, || format!("look up {ifname}"))?
        {
            tombstone(&mut cnl, &l)?;
            if victim.is_none() {
                victim = Some((cnl, l.index));
            }
        }
    }
    match victim {
        Some((nl, index)) => reap(nl, index),
        None => Ok(()),
    }
}

/// Sets the link down and renames it to a unique tombstone name.
fn tombstone(nl: &mut Netlink, l: &Link) -> Result<()> {
    if l.up {
        match nl.link().set_up(l.index, false) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => {
                return Err(
                    CniError::new(Code::Netlink, format!("set {} down", l.name)).with_details(e)
                )
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tag = nanos ^ (std::process::id() << 12) ^ l.index.rotate_left(20);
    let name = format!("{TOMBSTONE_PREFIX}{tag:08x}");
    match nl.link().rename(l.index, &name) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        // A name clash is vanishingly rare; fall back to the slow, sure path.
        Err(_) => delete_index(nl, l.index, &l.name),
    }
}

/// Deletes link `index` from a forked child, so the caller does not wait for
/// the kernel. Falls back to deleting it here if fork fails.
fn reap(mut nl: Netlink, index: u32) -> Result<()> {
    // SAFETY: the plugin process is single-threaded, so the child starts with
    // a consistent heap; it only detaches its stdio, sends one netlink
    // request and _exits, never returning into the parent's code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            detach_stdio();
            let _ = nix::unistd::setsid();
            let _ = nl.link().del(index);
            // SAFETY: _exit ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(()),
        Err(_) => delete_index(&mut nl, index, &format!("#{index}")),
    }
}

/// Points the child's stdin/stdout/stderr at /dev/null: the runtime reads
/// the plugin's stdout until EOF, which must not wait for the child.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process; `null` stays open for the call.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn delete_index(nl: &mut Netlink, index: u32, name: &str) -> Result<()> {
    match nl.link().del(index) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(CniError::new(Code::Netlink, format!("delete {name}")).with_details(e)),
    }
}

/// Deletes the host end of a veth pair if it still exists (ADD's rollback).
pub fn remove_host_veth(name: &str) -> Result<()> {
    let mut nl = Netlink::new().cni(Code::Netlink, || "open netlink".into())?;
    match nl
        .link()
        .get_by_name(name)
        .cni(Code::Netlink, || format!("look up {name}"))?
    {
        Some(l) => delete_index(&mut nl, l.index, name),
        None => Ok(()),
    }
}

/// Deletes tombstones whose background delete never ran (GC).
pub fn sweep_tombstones() -> Result<()> {
    let mut nl = Netlink::new().cni(Code::Netlink, || "open netlink".into())?;
    let links = nl
        .link()
        .list()
        .cni(Code::Netlink, || "list links".into())?;
    for l in links
        .iter()
        .filter(|l| l.name.starts_with(TOMBSTONE_PREFIX))
    {
        delete_index(&mut nl, l.index, &l.name)?;
    }
    Ok(())
}
