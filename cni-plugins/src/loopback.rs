//! knode-loopback: brings `lo` up in the container's namespace on ADD and
//! down on DEL, reporting 127.0.0.1/8 and ::1/128 as the reference plugin does.
//! It never touches any other interface.

use hostnet::{NetNs, Netlink};

use crate::skel::{
    CmdArgs, CniError, CniResult, Code, Context, Interface, IpConfig, Plugin, Result,
};

/// The loopback plugin.
pub struct Loopback;

fn lo_netlink(ns_path: &std::path::Path) -> Result<Netlink> {
    let ns = NetNs::open(ns_path).cni(Code::InvalidEnv, || {
        format!("CNI_NETNS: open {}", ns_path.display())
    })?;
    Netlink::new_in(&ns).cni(Code::Netlink, || {
        format!("open netlink in {}", ns_path.display())
    })
}

fn netns(args: &CmdArgs) -> Result<&std::path::Path> {
    args.netns
        .as_deref()
        .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_NETNS: required"))
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let path = netns(args)?;
        let mut nl = lo_netlink(path)?;
        let lo = nl
            .link()
            .get_by_name("lo")
            .cni(Code::Netlink, || "look up lo".into())?;
        let lo =
            lo.ok_or_else(|| CniError::new(Code::Netlink, format!("no lo in {}", path.display())))?;
        nl.link()
            .set_up(lo.index, true)
            .cni(Code::Netlink, || "set lo up".into())?;
        let mut addrs = nl
            .addr()
            .list(lo.index)
            .cni(Code::Netlink, || "list lo addresses".into())?;
        if addrs.is_empty() {
            addrs = vec![
                "127.0.0.1/8".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ];
        }
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                mtu: None,
                sandbox: path.display().to_string(),
            }],
            ips: addrs
                .into_iter()
                .map(|address| IpConfig {
                    address,
                    gateway: None,
                    interface: Some(0),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        // DEL must succeed when the namespace is already gone.
        let Some(path) = args.netns.as_deref() else {
            return Ok(());
        };
        if !path.exists() {
            return Ok(());
        }
        let mut nl = lo_netlink(path)?;
        if let Some(lo) = nl
            .link()
            .get_by_name("lo")
            .cni(Code::Netlink, || "look up lo".into())?
        {
            nl.link()
                .set_up(lo.index, false)
                .cni(Code::Netlink, || "set lo down".into())?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let path = netns(args)?;
        let mut nl = lo_netlink(path)?;
        match nl
            .link()
            .get_by_name("lo")
            .cni(Code::Netlink, || "look up lo".into())?
        {
            Some(lo) if lo.up => Ok(()),
            Some(_) => Err(CniError::new(Code::CheckFailed, "lo is down")),
            None => Err(CniError::new(Code::CheckFailed, "lo is missing")),
        }
    }
}
