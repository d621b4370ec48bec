//! Cluster DNS placed on this node: `cluster-dns` and `node-local-dns` as
//! /32 addresses on `lo`, NOTRACK for DNS to and from them in our own
//! nf_tables table (`ip knode-dns`, raw priority), the `dns` crate's
//! server bound on both, its zone fed from the agent's own watches of
//! Services, EndpointSlices and Pods, forwarding to the upstreams of
//! `resolv-conf` (re-read when the file changes). A periodic check puts
//! back addresses and rules someone removed. It never touches another
//! table or another link's addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use controlplane::api::{ObjectRef, Scope, WatchEvent};
use controlplane::endpoints::{from_slices, SliceIndex};
use controlplane::objects::{Kind, Object};
use controlplane::watcher::{Update, Watcher};
use controlplane::ControlPlane;
use dns::forward::ResolvConfWatch;
use dns::{ForwardConfig, Forwarder, Server, ServerConfig, SharedZone, Sockets, Zone, ZoneConfig};
use hostnet::nftables::{
    Batch, Chain, ChainType, DataType, Elem, Expr, Family, Field, Hook, MetaKey, NfTables,
    NfTablesSocket, Reg, Set, Table, Value,
};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Service;

use crate::config::Config;

/// Our nf_tables table (family `ip`).
pub const TABLE: &str = "knode-dns";
/// The set of addresses the server answers on.
const ADDRS_SET: &str = "dns-addrs";
/// The raw priority (`NF_IP_PRI_RAW`): before conntrack (-200) and the
/// proxy's NAT.
const RAW_PRIORITY: i32 = -300;
/// The link the addresses live on.
const LOOPBACK: &str = "lo";
/// How often addresses and rules are checked.
const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// The addresses the node's DNS answers on: `cluster-dns`, `node-local-dns`.
pub fn addresses(config: &Config) -> [Ipv4Addr; 2] {
    [config.cluster_dns, config.node_local_dns]
}

fn table() -> Table {
    Table::new(Family::Ip, TABLE)
}

fn addrs_set() -> Set {
    Set::new(ADDRS_SET, &[DataType::Ipv4Addr])
}

/// The whole table as one transaction that replaces whatever it held:
/// chains `prerouting` and `output` at raw priority, in each for UDP and
/// TCP `ip daddr @dns-addrs th dport 53 notrack` and `ip saddr
/// @dns-addrs th sport 53 notrack` (queries and answers, from pods and
/// from the node itself). Untracked packets skip every NAT chain, so the
/// proxy's DNAT for the kube-dns ClusterIP never applies to them.
pub fn ruleset(addrs: &[Ipv4Addr]) -> Batch {
    let t = table();
    let mut b = Batch::new();
    // add + delete + add: one transaction that works whether or not it exists.
    b.add_table(&t).delete_table(&t).add_table(&t);
    b.add_set(&t, addrs_set());
    let elems = addrs
        .iter()
        .map(|a| Elem::key(Value::of(&[Field::Ipv4(*a)])))
        .collect();
    b.add_elements(&t, &addrs_set(), elems);
    for (name, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
        b.add_chain(&t, Chain::base(name, ChainType::Filter, hook, RAW_PRIORITY));
        for proto in [libc::IPPROTO_UDP as u8, libc::IPPROTO_TCP as u8] {
            // (address loaded, port loaded): to the server, from the server.
            for (addr, port, what) in [
                (Expr::ip_daddr(Reg::R1), Expr::th_dport(Reg::R1), "query"),
                (Expr::ip_saddr(Reg::R1), Expr::th_sport(Reg::R1), "answer"),
            ] {
                let proto_name = if proto == libc::IPPROTO_UDP as u8 {
                    "udp"
                } else {
                    "tcp"
                };
                b.push(hostnet::nftables::Op::AddRule {
                    table: t.clone(),
                    chain: name.to_string(),
                    exprs: vec![
                        Expr::meta(MetaKey::L4Proto, Reg::R1),
                        Expr::cmp_eq(Reg::R1, &[proto]),
                        addr,
                        Expr::lookup(ADDRS_SET, Reg::R1),
                        port,
                        Expr::cmp_eq(Reg::R1, &53u16.to_be_bytes()),
                        Expr::Notrack,
                    ],
                    comment: Some(format!("cluster DNS {proto_name} {what}: no conntrack")),
                });
            }
        }
    }
    b
}

/// Applies [`ruleset`] unless the table is there with both chains;
/// returns whether it wrote.
pub fn ensure_rules(nft: &dyn NfTables, addrs: &[Ipv4Addr]) -> hostnet::nftables::Result<bool> {
    let t = table();
    if nft.table(&t)?.is_some() {
        let chains = nft.chains(&t)?;
        let has = |n: &str| chains.iter().any(|c| c.name == n && c.base);
        let elems = nft.elements(&t, ADDRS_SET).unwrap_or_default();
        if has("prerouting") && has("output") && elems.len() == addrs.len() {
            return Ok(false);
        }
    }
    nft.apply(&ruleset(addrs))?;
    Ok(true)
}

/// Deletes our table; true if it was there.
pub fn remove_rules(nft: &dyn NfTables) -> hostnet::nftables::Result<bool> {
    let t = table();
    if nft.table(&t)?.is_none() {
        return Ok(false);
    }
    let mut b = Batch::new();
    b.delete_table(&t);
    nft.apply(&b)?;
    Ok(true)
}

/// Puts each address on `lo` as a /32 unless it is there; returns those added.
pub fn ensure_addresses(addrs: &[Ipv4Addr]) -> hostnet::Result<Vec<Ipv4Addr>> {
    let mut nl = hostnet::Netlink::new()?;
    let lo = loopback(&mut nl)?;
    let have = nl.addr().list(lo)?;
    let mut added = Vec::new();
    for a in addrs {
        let net = IpNet::V4(Ipv4Net::from(*a));
        if have.contains(&net) {
            continue;
        }
        match nl.addr().add(lo, net) {
            Ok(()) => added.push(*a),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(added)
}

/// Removes the /32s from `lo`; returns those removed.
pub fn remove_addresses(addrs: &[Ipv4Addr]) -> hostnet::Result<Vec<Ipv4Addr>> {
    let mut nl = hostnet::Netlink::new()?;
    let lo = loopback(&mut nl)?;
    let have = nl.addr().list(lo)?;
    let mut removed = Vec::new();
    for a in addrs {
        let net = IpNet::V4(Ipv4Net::from(*a));
        if have.contains(&net) {
            nl.addr().del(lo, net)?;
            removed.push(*a);
        }
    }
    Ok(removed)
}

fn loopback(nl: &mut hostnet::Netlink) -> hostnet::Result<u32> {
    nl.link()
        .get_by_name(LOOPBACK)?
        .map(|l| l.index)
        .ok_or_else(|| hostnet::Error::Io {
            what: "find link lo".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// Places and starts the node's DNS: addresses, rules, the server on both
/// addresses, the zone's watches and the periodic check. Returns its tasks.
pub async fn start(
    config: &Config,
    cp: Arc<dyn ControlPlane>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let addrs = addresses(config);
    let nft: Arc<dyn NfTables> = Arc::new(NfTablesSocket::open().context("dns: open nf_tables")?);
    ensure_addresses(&addrs).context("dns: put the DNS addresses on lo")?;
    ensure_rules(nft.as_ref(), &addrs).context("dns: install the NOTRACK rules")?;

    let zone: SharedZone = Arc::new(RwLock::new(
        Zone::new(&ZoneConfig {
            domain: config.cluster_domain.clone(),
            ..ZoneConfig::default()
        })
        .context("cluster-domain")?,
    ));
    // With no upstream now, the forwarder waits for resolv-conf to name one.
    let forwarder = Arc::new(Forwarder::new(ForwardConfig::new(
        upstreams(&config.resolv_conf, &addrs).unwrap_or_default(),
    )));
    let server = Server::new(
        zone.clone(),
        Some(forwarder.clone()),
        ServerConfig::default(),
    );
    let listen: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::new(IpAddr::V4(*a), 53))
        .collect();
    let sockets = Sockets::bind(&listen)
        .await
        .context("dns: bind port 53 on the DNS addresses")?;
    let running = server.spawn(sockets);
    tracing::info!(addresses = ?listen, domain = %config.cluster_domain, "cluster DNS serving");

    let mut tasks = vec![tokio::spawn(feed(cp, zone))];
    if !config.resolv_conf.as_os_str().is_empty() {
        tasks.push(tokio::spawn(follow_resolv_conf(
            config.resolv_conf.clone(),
            addrs,
            forwarder,
        )));
    }
    tasks.push(tokio::spawn(async move {
        // The server's tasks stop when `running` is dropped with this one.
        let _running = running;
        let mut tick = tokio::time::interval(CHECK_PERIOD);
        tick.tick().await;
        loop {
            tick.tick().await;
            let nft = nft.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<()> {
                let added = ensure_addresses(&addrs)?;
                if !added.is_empty() {
                    tracing::warn!(?added, "dns: addresses were gone from lo; put back");
                }
                if ensure_rules(nft.as_ref(), &addrs)? {
                    tracing::warn!(table = TABLE, "dns: NOTRACK rules were gone; put back");
                }
                Ok(())
            })
            .await;
            match r {
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "dns: check placement"),
                Err(e) => tracing::error!(error = %e, "dns: placement check failed"),
                Ok(Ok(())) => {}
            }
        }
    }));
    Ok(tasks)
}

/// The upstreams of `resolv-conf`, minus our own addresses (a host whose
/// resolv.conf names cluster DNS must not make us ask ourselves); `None`
/// (names outside the zone refused) when there are none.
fn upstreams(resolv_conf: &Path, ours: &[Ipv4Addr]) -> Option<Vec<SocketAddr>> {
    if resolv_conf.as_os_str().is_empty() {
        tracing::warn!("resolv-conf is empty: DNS answers cluster names only");
        return None;
    }
    let systemd = Path::new(dns::forward::SYSTEMD_RESOLV_CONF);
    match dns::forward::upstreams_from_resolv_conf(resolv_conf, systemd) {
        Ok(list) => {
            let list: Vec<SocketAddr> = list
                .into_iter()
                .filter(|s| !matches!(s.ip(), IpAddr::V4(ip) if ours.contains(&ip)))
                .collect();
            if list.is_empty() {
                tracing::warn!(file = %resolv_conf.display(), "no upstream DNS server besides our own: DNS answers cluster names only");
                return None;
            }
            tracing::info!(upstreams = ?list, "DNS forwards other names");
            Some(list)
        }
        Err(e) => {
            tracing::warn!(error = %e, "DNS answers cluster names only");
            None
        }
    }
}

/// Re-reads the upstreams whenever `resolv-conf` (or systemd-resolved's
/// real file) is rewritten or replaced, checked every [`CHECK_PERIOD`].
async fn follow_resolv_conf(path: PathBuf, ours: [Ipv4Addr; 2], forwarder: Arc<Forwarder>) {
    let systemd = Path::new(dns::forward::SYSTEMD_RESOLV_CONF);
    let mut watch = ResolvConfWatch::new(&path, systemd);
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    loop {
        tick.tick().await;
        if watch.changed() {
            let now = upstreams(&path, &ours).unwrap_or_default();
            if now != forwarder.upstreams() {
                tracing::info!(file = %path.display(), upstreams = ?now, "resolv-conf changed: new DNS upstreams");
                forwarder.set_upstreams(now);
            }
        }
    }
}

/// What one of the watches said.
enum Fed {
    Service(Update),
    Slice(Update),
    Pod(Update),
}

/// Keeps the zone in step with Services, their EndpointSlices (the
/// endpoints with their readiness, kept by the EndpointSlice controller)
/// and Pods (pod records, hostnames). A slice change recomputes only its
/// own Service from its own slices. Runs until the agent stops.
async fn feed(cp: Arc<dyn ControlPlane>, zone: SharedZone) {
    let mut services = Watcher::new(cp.clone(), Scope::all(Kind::Service));
    let mut slices = Watcher::new(cp.clone(), Scope::all(Kind::EndpointSlice));
    let mut pods = Watcher::new(cp, Scope::all(Kind::Pod)).with_transform(dns::zone::strip_pod);
    let mut index = SliceIndex::default();
    loop {
        let fed = tokio::select! {
            u = services.next() => Fed::Service(u),
            u = slices.next() => Fed::Slice(u),
            u = pods.next() => Fed::Pod(u),
        };
        let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
        match fed {
            Fed::Service(Update::Event(ev)) => {
                let Object::Service(svc) = ev.object() else {
                    continue;
                };
                let (ns, name) = key(&svc.metadata.namespace, &svc.metadata.name);
                if matches!(ev, WatchEvent::Deleted(_)) {
                    z.remove_service(ns, name);
                } else {
                    z.upsert_service(svc);
                    refresh_endpoints(&mut z, svc, &index, slices.store());
                }
            }
            Fed::Slice(Update::Event(ev)) => {
                let o = ev.object();
                let now = match ev {
                    WatchEvent::Deleted(_) => None,
                    _ => SliceIndex::service_label(o.meta()),
                };
                for (ns, name) in index.set(o.namespace(), o.name(), now) {
                    let svc = services
                        .store()
                        .get(&ObjectRef::new(Kind::Service, &ns, &name));
                    if let Some(Object::Service(svc)) = svc {
                        refresh_endpoints(&mut z, svc, &index, slices.store());
                    }
                }
            }
            Fed::Pod(Update::Event(ev)) => {
                let Object::Pod(pod) = ev.object() else {
                    continue;
                };
                let (ns, name) = key(&pod.metadata.namespace, &pod.metadata.name);
                if matches!(ev, WatchEvent::Deleted(_)) {
                    z.remove_pod(ns, name);
                } else {
                    z.upsert_pod(pod);
                }
            }
            Fed::Service(Update::Synced)
            | Fed::Slice(Update::Synced)
            | Fed::Pod(Update::Synced) => {}
        }
    }
}

/// Recomputes `svc`'s endpoints from its slices.
fn refresh_endpoints(
    zone: &mut Zone,
    svc: &Service,
    index: &SliceIndex,
    slices: &BTreeMap<ObjectRef, Object>,
) {
    let (ns, name) = key(&svc.metadata.namespace, &svc.metadata.name);
    let own = index.slices_of(ns, name).filter_map(|s| {
        match slices.get(&ObjectRef::new(Kind::EndpointSlice, ns, s)) {
            Some(Object::EndpointSlice(s)) => Some(s.as_ref()),
            _ => None,
        }
    });
    zone.set_endpoints(ns, name, &from_slices(svc, own));
}

fn key<'a>(ns: &'a Option<String>, name: &'a Option<String>) -> (&'a str, &'a str) {
    (
        ns.as_deref().unwrap_or("default"),
        name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostnet::nftables::{Op, RecordingNfTables};

    const ADDRS: [Ipv4Addr; 2] = [
        Ipv4Addr::new(10, 96, 0, 10),
        Ipv4Addr::new(169, 254, 20, 10),
    ];

    #[test]
    fn the_ruleset_notracks_dns_both_ways_in_raw_chains_of_its_own_table() {
        let b = ruleset(&ADDRS);
        let ops = b.ops();
        let chains: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                Op::AddChain { table, chain } => {
                    assert_eq!(table.name, TABLE);
                    let base = chain.base.expect("base chain");
                    Some((chain.name.clone(), base.hook, base.priority))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            chains,
            [
                ("prerouting".into(), Hook::Prerouting, -300),
                ("output".into(), Hook::Output, -300)
            ]
        );
        let rules: Vec<&Vec<Expr>> = ops
            .iter()
            .filter_map(|o| match o {
                Op::AddRule { exprs, .. } => Some(exprs),
                _ => None,
            })
            .collect();
        // 2 chains x (udp, tcp) x (query, answer), each ending in notrack.
        assert_eq!(rules.len(), 8);
        assert!(rules.iter().all(|r| r.last() == Some(&Expr::Notrack)));
        assert!(rules.iter().any(|r| r.contains(&Expr::th_sport(Reg::R1))));
        assert!(rules
            .iter()
            .any(|r| r.contains(&Expr::cmp_eq(Reg::R1, &[6]))));
        let elems = ops.iter().find_map(|o| match o {
            Op::AddElements { elems, .. } => Some(elems.len()),
            _ => None,
        });
        assert_eq!(elems, Some(2));
    }

    #[test]
    fn rules_are_written_once_and_put_back_after_a_flush() {
        let nft = RecordingNfTables::new();
        assert!(ensure_rules(&nft, &ADDRS).unwrap());
        assert!(!ensure_rules(&nft, &ADDRS).unwrap(), "nothing to do");
        assert_eq!(nft.batches().len(), 1);
        nft.remove_table(&table());
        assert!(ensure_rules(&nft, &ADDRS).unwrap(), "restored");
        assert!(remove_rules(&nft).unwrap());
        assert!(!remove_rules(&nft).unwrap());
    }

    #[test]
    fn our_own_addresses_are_never_upstreams() {
        let dir = std::env::temp_dir().join(format!("knode-dns-rc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("resolv.conf");
        std::fs::write(&f, "nameserver 10.96.0.10\nnameserver 192.0.2.53\n").unwrap();
        assert_eq!(
            upstreams(&f, &ADDRS),
            Some(vec!["192.0.2.53:53".parse().unwrap()])
        );
        std::fs::write(&f, "nameserver 169.254.20.10\n").unwrap();
        assert_eq!(upstreams(&f, &ADDRS), None);
        assert_eq!(upstreams(Path::new(""), &ADDRS), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
