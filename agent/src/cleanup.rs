//! `knode agent --cleanup`: removes what knode made on this node, part by
//! part (a part turned off with `--disable` is left alone, so a node that
//! keeps kube-proxy keeps its rules):
//!
//! - pods: every container in the agent's containerd namespace that
//!   carries our labels, with its CNI attachment (IP released), pinned
//!   netns, pod files, volumes, cgroups and logs, and the hostPort table
//!   `ip knode-hostport`;
//! - the pod network: `cni0`, the bridge plugin's `KNODE-MASQ-*` rules,
//!   and the default conflist with its IPAM store when it is the agent's
//!   own (an operator's conflist stays);
//! - the overlay: the `knode.<VNI>` vxlan device or the `knode0` TUN (its routes, neighbour
//!   and FDB entries go with it), host-gw routes into the cluster network,
//!   `KNODE-POSTRTG`/`KNODE-FWD`, and the subnet file;
//! - the proxy: every `KUBE-*` chain and the jumps to them, and nft table
//!   `ip kube-proxy` (both modes, whichever ran);
//! - dns: the `ip knode-dns` table and the DNS addresses on `lo`;
//! - network policy: the `ip knode-policy` table.
//!
//! It keeps the control-plane data (`data-dir`: on the embedded control
//! plane that is the cluster's state), the config and the images in
//! containerd, and says so. The agent must be stopped first.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use hostnet::Netlink;
use ipnet::IpNet;

use crate::config::Config;
use kubelet::cni;
use kubelet::pods::context::Host;
use kubelet::pods::{manager, sandbox};
use runtime::{labels, task, Runtime};

/// The pod bridge the default conflist names.
const BRIDGE: &str = "cni0";

pub async fn run(config: &Config) -> Result<ExitCode> {
    if std::os::unix::net::UnixStream::connect(config.socket()).is_ok() {
        bail!(
            "an agent is serving {}: stop it first (systemctl stop knode)",
            config.socket().display()
        );
    }
    let mut report = Vec::new();
    if config.enabled("pods") {
        report.push(pods(config).await?);
    }
    let ours = cni::remove_default_conflist(&config.cni_conf_dir)?;
    report.push(pod_network(ours)?);
    if config.enabled("overlay") {
        report.push(overlay(config)?);
    }
    if config.enabled("proxy") {
        let ipt = proxy::ExecIptables::new(proxy::Backend::detect());
        let removed = proxy::cleanup(&ipt).context("remove the proxy's rules")?;
        let table = match hostnet::nftables::NfTablesSocket::open() {
            Ok(nft) => proxy::nft::cleanup(&nft).context("remove table ip kube-proxy")?,
            Err(_) => false,
        };
        report.push(format!(
            "proxy: {}",
            match (removed, table) {
                (false, false) => "no rules",
                (true, false) => "KUBE-* chains removed",
                (false, true) => "nft table ip kube-proxy removed",
                (true, true) => "KUBE-* chains and nft table ip kube-proxy removed",
            }
        ));
    }
    if config.enabled("dns") {
        report.push(dns(config)?);
    }
    if config.enabled("network-policy") {
        let removed = match hostnet::nftables::NfTablesSocket::open() {
            Ok(nft) => netpol::cleanup(&nft).context("remove table ip knode-policy")?,
            Err(_) => false,
        };
        report.push(format!(
            "network policy: {}",
            if removed {
                "nft table ip knode-policy removed"
            } else {
                "no table"
            }
        ));
    }
    let _ = std::fs::remove_file(config.socket());
    for line in report {
        println!("{line}");
    }
    let state = if config.control_plane == "embedded" {
        format!(
            "the embedded control plane's data in {} (remove it to forget the cluster)",
            config.data_dir.display()
        )
    } else {
        format!("the cluster's objects in {}", config.control_plane)
    };
    println!("kept: {state}, the config file and containerd's images");
    Ok(ExitCode::SUCCESS)
}

/// Removes every pod found on the node; returns what it did.
async fn pods(config: &Config) -> Result<String> {
    let rt = match Runtime::connect(&config.containerd_socket, &config.containerd_namespace).await {
        Ok(rt) => rt,
        Err(e) => {
            return Ok(format!(
                "pods: containerd not reachable ({e:#}); containers left alone"
            ))
        }
    };
    let cni = cni::Cni::new(
        config.cni_bin_dir.clone(),
        config.cni_conf_dir.clone(),
        config.cni_cache_dir.clone(),
    );
    let kubelet = config.kubelet();
    // The whole hostPort table goes below, not element by element.
    let host = Host {
        rt: &rt,
        cni: &cni,
        config: &kubelet,
        hostports: None,
    };
    let mut uids = manager::uids_on_node(&host);
    for o in task::list_owned(&rt, labels::POD_UID).await? {
        if let Some(uid) = o.labels.get(labels::POD_UID) {
            uids.insert(uid.clone());
        }
    }
    uids.retain(|u| !u.is_empty());
    let mut failed = Vec::new();
    for uid in &uids {
        if let Err(e) = sandbox::remove_pod(&host, uid, None).await {
            failed.push(format!("{uid}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("pods: could not remove {}", failed.join("; "));
    }
    let table = match hostnet::nftables::NfTablesSocket::open() {
        Ok(nft) => hostnet::nftables::delete_table_if_present(&nft, &kubelet::hostport::table())
            .context("remove table ip knode-hostport")?,
        Err(_) => false,
    };
    Ok(format!(
        "pods: {} removed{}",
        uids.len(),
        if table {
            ", nft table ip knode-hostport removed"
        } else {
            ""
        }
    ))
}

/// The bridge, the bridge plugin's masquerade rules and (when `ours`) the
/// default network's IPAM store.
fn pod_network(ours: bool) -> Result<String> {
    let mut done = Vec::new();
    let mut nl = Netlink::new()?;
    if let Some(link) = nl.link().get_by_name(BRIDGE)? {
        nl.link().del(link.index)?;
        done.push(format!("{BRIDGE} deleted"));
    }
    if hostnet::iptables::remove_chains(hostnet::iptables::Family::V4, "nat", |c| {
        c.starts_with("KNODE-MASQ-")
    })? {
        done.push("KNODE-MASQ-* removed".into());
    }
    if ours {
        done.push("the default conflist removed".into());
        // The default conflist names no dataDir: host-local's default.
        let store = std::path::Path::new(cni::DEFAULT_IPAM_DIR).join(cni::DEFAULT_NETWORK);
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("remove {}", store.display()))?;
            done.push(format!("{} removed", store.display()));
        }
    }
    Ok(format!("pod network: {}", summary(done)))
}

/// The vxlan device or the udp backend's TUN, routes into the cluster network via a gateway
/// (host-gw's), the masquerade and forward rules, the subnet file.
fn overlay(config: &Config) -> Result<String> {
    let (network, network6) = crate::config::cluster_cidrs(&config.cluster_cidr)?;
    let mut done = Vec::new();
    let mut nl = Netlink::new()?;
    for link in nl.link().list()? {
        let vxlan = (link.name.starts_with("knode.") || link.name.starts_with("knode-v6."))
            && link.kind.as_deref() == Some("vxlan");
        // The udp backend's TUN device is persistent: it outlives the agent.
        let tun = link.name == overlay::udp::DEVICE && link.kind.as_deref() == Some("tun");
        if vxlan || tun {
            nl.link().del(link.index)?;
            done.push(format!("{} deleted", link.name));
        }
    }
    let mut routes = 0;
    let mut all = nl.route().list(true)?;
    if network6.is_some() {
        all.extend(nl.route().list(false)?);
    }
    for r in all {
        let ours = match r.dst {
            IpNet::V4(dst) => network.contains(&dst) && dst != network,
            IpNet::V6(dst) => network6.is_some_and(|n| n.contains(&dst) && dst != n),
        };
        if ours && r.gateway.is_some() {
            let req = hostnet::netlink::RouteRequest::new(r.dst, r.gateway, r.oif);
            nl.route().del(&req)?;
            routes += 1;
        }
    }
    if routes > 0 {
        done.push(format!("{routes} host-gw routes deleted"));
    }
    overlay::masq::remove().context("remove the overlay's iptables rules")?;
    if std::fs::remove_file(&config.subnet_file).is_ok() {
        done.push(format!("{} removed", config.subnet_file.display()));
    }
    Ok(format!("overlay: {}", summary(done)))
}

/// The NOTRACK table and the addresses on `lo`.
fn dns(config: &Config) -> Result<String> {
    let mut done = Vec::new();
    let nft = hostnet::nftables::NfTablesSocket::open().context("open nf_tables")?;
    if crate::dns::remove_rules(&nft).context("remove the DNS table")? {
        done.push(format!("table ip {} deleted", crate::dns::TABLE));
    }
    for a in crate::dns::remove_addresses(&crate::dns::addresses(config))
        .context("remove the DNS addresses from lo")?
    {
        done.push(format!("{a}/32 removed from lo"));
    }
    Ok(format!("dns: {}", summary(done)))
}

fn summary(done: Vec<String>) -> String {
    if done.is_empty() {
        "nothing there".into()
    } else {
        done.join(", ")
    }
}
