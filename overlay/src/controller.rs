//! The overlay controller inside `knode agent`: read the network config,
//! choose the underlay, take a lease, set up the device, then keep it all
//! true: renew the lease, follow peers' leases from a watch (one peer's
//! entries at a time), and repair what someone else removed, on a link
//! monitor's word or at the periodic resync.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use controlplane::objects::{Kind, Object, SubnetLease};
use controlplane::watcher::{Update, Watcher};
use controlplane::{ControlPlane, ObjectRef, Scope, WatchEvent};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{self, Local, Peer, PeerState, Via};
use crate::config::{
    Backend, NetConf, CONFIGMAP_KEY, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, VXLAN6_OVERHEAD,
};
use crate::dataplane::{self, Dataplane, Kernel, Observed, TunDevice, VxlanDevice};
use crate::iface::{self, Underlay};
use crate::lease::{LeaseAttrs, Leases, Renewal};
use crate::masq;
use crate::subnet_env::{self, SubnetEnv};
use crate::udp::{self, UdpPath};
use crate::{Error, Result};

/// What the agent tells the overlay (flags and config keys).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    /// Network proposed when the control plane holds no config yet.
    pub cluster_cidr: String,
    /// Backend proposed with it (`vxlan`, `host-gw` or `udp`).
    pub backend: String,
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 underlay address (dual-stack); found on `iface` when unset.
    pub public_ipv6: Option<Ipv6Addr>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    /// Renew this long before the lease would expire.
    pub renew_margin: Duration,
    /// How often the kernel state and the masquerade rules are checked.
    pub resync: Duration,
    pub ip_masq: bool,
}

impl Settings {
    /// Checks the timing settings against each other.
    pub fn validate(&self) -> Result<()> {
        if self.lease_ttl.is_zero() {
            return Err(Error::Config("subnet-lease-ttl: must be above zero".into()));
        }
        if self.renew_margin >= self.lease_ttl {
            return Err(Error::Config(format!(
                "subnet-lease-renew-margin: {:?} must be shorter than subnet-lease-ttl {:?}",
                self.renew_margin, self.lease_ttl
            )));
        }
        if self.resync.is_zero() {
            return Err(Error::Config(
                "overlay-resync-period: must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// This node's pod subnets: the IPv4 lease and, on a dual-stack network,
/// its IPv6 partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

/// The running overlay of one node.
pub struct Overlay {
    cp: Arc<dyn ControlPlane>,
    settings: Settings,
    conf: NetConf,
    underlay: Underlay,
    /// The IPv6 underlay address and network, when the node has one.
    underlay6: Option<Ipv6Net>,
    leases: Leases,
    attrs: LeaseAttrs,
    lease: SubnetLease,
    local: Local,
    device: Option<VxlanDevice>,
    /// The IPv6-underlay vxlan device (dual-stack with an IPv6 underlay).
    device6: Option<VxlanDevice>,
    /// The udp backend's TUN device, and its running data path.
    tun: Option<TunDevice>,
    udp: Option<UdpPath>,
    /// The udp path's drop counters when last logged.
    udp_drops_logged: u64,
    kernel: Box<dyn Dataplane>,
    /// What is programmed for each peer, by subnet.
    peers: BTreeMap<Ipv4Net, PeerState>,
    subnet_tx: watch::Sender<Subnets>,
}

impl Overlay {
    /// Everything up to a working data plane for the peers known now: the
    /// config, the underlay, the lease, the device, masquerading and the
    /// subnet file.
    pub async fn start(cp: Arc<dyn ControlPlane>, settings: Settings) -> Result<Overlay> {
        settings.validate()?;
        let conf = load_config(cp.as_ref(), &settings).await?;
        let underlay = iface::detect(settings.iface.as_deref(), settings.public_ip)?;
        let underlay6 = match conf.ipv6 {
            Some(_) => iface::detect6(&underlay, settings.public_ipv6)?,
            None => None,
        };
        check_dual_stack(&conf, &underlay, underlay6)?;
        let (backend_data, device) = match conf.backend {
            Backend::Vxlan { vni, port, .. } => {
                let mac = backend::vtep_mac(&settings.node, vni);
                let dev = VxlanDevice {
                    name: format!("knode.{vni}"),
                    vni,
                    port,
                    local: IpAddr::V4(underlay.ip),
                    underlay: underlay.index,
                    mtu: conf.backend.pod_mtu(underlay.mtu),
                    mac,
                    // Set once the lease is known.
                    addrs: Vec::new(),
                };
                (backend::vxlan_backend_data(vni, &mac), Some(dev))
            }
            Backend::HostGw | Backend::Udp { .. } => (serde_json::Value::Null, None),
        };
        // flannel's layout: IPv6 pod traffic over an IPv6 underlay gets a
        // device of its own (a vxlan device has one underlay family).
        let device6 = match (conf.backend, underlay6) {
            (Backend::Vxlan { vni, port, .. }, Some(u6)) => Some(VxlanDevice {
                name: format!("knode-v6.{vni}"),
                vni,
                port,
                local: IpAddr::V6(u6.addr()),
                underlay: underlay.index,
                mtu: underlay.mtu.saturating_sub(VXLAN6_OVERHEAD),
                mac: backend::vtep_mac(&format!("{}/v6", settings.node), vni),
                addrs: Vec::new(),
            }),
            _ => None,
        };
        let backend_v6_data = device6
            .as_ref()
            .map(|d| backend::vxlan_backend_data(d.vni, &d.mac));
        let tun = matches!(conf.backend, Backend::Udp { .. }).then(|| TunDevice {
            name: udp::DEVICE.to_string(),
            mtu: conf.backend.pod_mtu(underlay.mtu),
            // Set once the lease is known.
            addr: conf.network,
        });
        let attrs = LeaseAttrs {
            node: settings.node.clone(),
            public_ip: IpAddr::V4(underlay.ip),
            backend_type: conf.backend.type_name().to_string(),
            backend_data,
            public_ipv6: underlay6.map(|n| IpAddr::V6(n.addr())),
            backend_v6_data,
        };
        let leases = Leases::new(cp.clone(), settings.lease_ttl);
        let local = Local {
            backend: conf.backend,
            underlay_net: underlay.net,
            dual_stack: conf.ipv6.is_some(),
            underlay_net6: underlay6,
        };
        let (existing, _) = leases.list().await?;
        if conf.backend == Backend::HostGw {
            refuse_off_segment_peers(&local, &existing, underlay.ip)?;
        }
        let previous = subnet_env::previous_subnet(&settings.subnet_file);
        let lease = leases.acquire(&conf, &attrs, previous).await?;
        let subnet = lease_subnet(&lease)?;
        let kernel = Kernel::new(dataplane::Scope {
            network: conf.network,
            own_subnet: subnet,
            network6: conf.ipv6.map(|v| v.network),
            own_subnet6: conf.subnet6_for(subnet),
            underlay: underlay.index,
            device: device.as_ref().map(|d| d.name.clone()),
            device6: device6.as_ref().map(|d| d.name.clone()),
        })?;
        let udp = None;
        let (subnet_tx, _) = watch::channel(Subnets {
            v4: subnet,
            v6: conf.subnet6_for(subnet),
        });
        let mut o = Overlay {
            cp,
            settings,
            conf,
            underlay,
            underlay6,
            leases,
            attrs,
            lease,
            local,
            device,
            device6,
            tun,
            udp,
            udp_drops_logged: 0,
            kernel: Box::new(kernel),
            peers: BTreeMap::new(),
            subnet_tx,
        };
        o.set_own_subnet(subnet)?;
        // Known peers go in with one diff against the kernel (after a
        // restart, most entries are there already).
        for l in &existing {
            if o.is_own_subnet(l) {
                continue;
            }
            match o.peer_state_of(l) {
                Ok(s) => {
                    o.peers.insert(s.subnet, s);
                }
                Err(why) => tracing::warn!(peer = %l.spec.subnet, "{why}"),
            }
        }
        o.full_sync()?;
        tracing::info!(
            subnet = %subnet,
            subnet6 = ?o.subnets().v6,
            public_ipv6 = ?o.underlay6.map(|n| n.addr()),
            network = %o.conf.cluster_cidr(),
            backend = o.conf.backend.type_name(),
            iface = %o.underlay.name,
            public_ip = %o.underlay.ip,
            mtu = o.mtu(),
            peers = o.peers.len(),
            "overlay ready"
        );
        Ok(o)
    }

    /// This node's leased subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet_tx.borrow().v4
    }

    /// This node's subnets (IPv4 and, dual-stack, IPv6).
    pub fn subnets(&self) -> Subnets {
        *self.subnet_tx.borrow()
    }

    /// The cluster network.
    pub fn network(&self) -> Ipv4Net {
        self.conf.network
    }

    /// The MTU pods get: one for both families, so the smaller of the
    /// two paths' (the IPv6 underlay's vxlan headers are 20 bytes longer).
    pub fn mtu(&self) -> u32 {
        let v4 = self.conf.backend.pod_mtu(self.underlay.mtu);
        match &self.device6 {
            Some(d) => v4.min(d.mtu),
            None => v4,
        }
    }

    /// The node's public IP (the underlay address).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.underlay.ip
    }

    /// Told each time the node's subnet changes (a lost lease replaced).
    pub fn subscribe(&self) -> watch::Receiver<Subnets> {
        self.subnet_tx.subscribe()
    }

    /// Keeps the overlay true until the task is dropped. Returns only when
    /// the node cannot hold a lease any more.
    pub async fn run(mut self) -> Result<()> {
        let mut watcher = Watcher::new(self.cp.clone(), Scope::all(Kind::SubnetLease));
        let renew_every = self.settings.lease_ttl - self.settings.renew_margin;
        let mut renew_at = Instant::now() + renew_every;
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (kick_tx, mut kick_rx) = mpsc::channel(1);
        let devices = [&self.device, &self.device6]
            .into_iter()
            .flatten()
            .map(|d| d.name.clone())
            .chain(self.tun.as_ref().map(|t| t.name.clone()))
            .collect();
        spawn_monitor(
            self.conf.network,
            self.conf.ipv6.map(|v| v.network),
            devices,
            kick_tx,
        );
        loop {
            tokio::select! {
                u = watcher.next() => match u {
                    Update::Event(WatchEvent::Added(Object::SubnetLease(l)))
                    | Update::Event(WatchEvent::Modified(Object::SubnetLease(l))) => {
                        if self.is_own_subnet(&l) {
                            if l.spec.public_ip != self.attrs.public_ip {
                                self.reacquire(format!("lease {} is now held by {}", l.spec.subnet, l.spec.public_ip)).await?;
                                renew_at = Instant::now() + renew_every;
                            }
                        } else {
                            self.upsert_peer(&l);
                        }
                    }
                    Update::Event(WatchEvent::Deleted(Object::SubnetLease(l))) => {
                        if self.is_own_subnet(&l) {
                            self.reacquire(format!("lease {} was deleted", l.spec.subnet)).await?;
                            renew_at = Instant::now() + renew_every;
                        } else {
                            self.remove_peer(&l);
                        }
                    }
                    Update::Event(_) => {}
                    Update::Synced => self.log_sync("relist"),
                },
                _ = tokio::time::sleep_until(renew_at) => {
                    renew_at = Instant::now() + match self.renew().await {
                        Ok(()) => renew_every,
                        Err(e) => {
                            tracing::warn!(error = %e, "renew the subnet lease; retrying");
                            (self.settings.renew_margin / 4).clamp(Duration::from_millis(200), Duration::from_secs(30))
                        }
                    };
                }
                _ = resync.tick() => {
                    self.log_sync("periodic resync");
                    self.log_udp_drops();
                }
                Some(()) = kick_rx.recv() => self.log_sync("kernel change"),
            }
        }
    }

    fn is_own_subnet(&self, l: &SubnetLease) -> bool {
        l.spec.subnet == IpNet::V4(self.subnet())
    }

    async fn renew(&mut self) -> Result<()> {
        match self.leases.renew(&self.lease, &self.attrs).await? {
            Renewal::Renewed(l) => {
                self.lease = *l;
                Ok(())
            }
            Renewal::Lost(why) => self.reacquire(why).await,
        }
    }

    /// Takes a new lease after losing ours; the same subnet if still free.
    async fn reacquire(&mut self, why: String) -> Result<()> {
        let old = self.subnet();
        tracing::warn!(subnet = %old, reason = %why, "subnet lease lost; acquiring one again");
        let lease = self
            .leases
            .acquire(&self.conf, &self.attrs, Some(old))
            .await
            .map_err(|e| {
                Error::Lease(format!(
                    "the subnet lease {old} was lost ({why}) and none could be acquired again: {e}"
                ))
            })?;
        let subnet = lease_subnet(&lease)?;
        self.lease = lease;
        if subnet != old {
            tracing::warn!(old = %old, new = %subnet, "this node's subnet changed: pods started before keep addresses in the old one");
            self.peers.remove(&subnet);
            self.set_own_subnet(subnet)?;
            self.full_sync()?;
        }
        Ok(())
    }

    /// Points everything local at `subnet`: device address, kernel view,
    /// masquerade rules, the subnet file.
    fn set_own_subnet(&mut self, subnet: Ipv4Net) -> Result<()> {
        let subnet6 = self.conf.subnet6_for(subnet);
        let vtep6 = subnet6.map(|s| IpNet::V6(Ipv6Net::new(s.network(), 128).expect("valid")));
        if let Some(dev) = self.device.as_mut() {
            dev.addrs = vec![IpNet::V4(
                Ipv4Net::new(subnet.network(), 32).expect("valid"),
            )];
            // Without an IPv6 underlay this device carries IPv6 too.
            if self.device6.is_none() {
                dev.addrs.extend(vtep6);
            }
        }
        if let Some(dev) = self.device6.as_mut() {
            dev.addrs = vtep6.into_iter().collect();
        }
        if let Some(tun) = self.tun.as_mut() {
            tun.addr = Ipv4Net::new(subnet.network(), self.conf.network.prefix_len())
                .expect("the network's length is valid");
        }
        self.kernel.set_own_subnet(subnet, subnet6);
        self.subnet_tx.send_replace(Subnets {
            v4: subnet,
            v6: subnet6,
        });
        SubnetEnv {
            network: self.conf.network,
            subnet,
            mtu: self.mtu(),
            ipmasq: self.settings.ip_masq,
            ipv6: self.conf.ipv6.map(|v| v.network).zip(subnet6),
        }
        .write(&self.settings.subnet_file)?;
        Ok(())
    }

    /// What a peer's lease wants programmed, or why it cannot be used.
    fn peer_state_of(&self, l: &SubnetLease) -> Result<PeerState, String> {
        if l.spec.public_ip == self.attrs.public_ip {
            return Err(format!(
                "lease {} has this node's public IP {} but is not its lease; ignoring it",
                l.spec.subnet, l.spec.public_ip
            ));
        }
        Peer::from_lease(l).and_then(|p| backend::peer_state(&self.local, &p))
    }

    fn upsert_peer(&mut self, l: &SubnetLease) {
        if self.is_own_subnet(l) {
            return;
        }
        let Ok(subnet) = lease_subnet(l) else { return };
        let old = self.peers.get(&subnet).copied();
        match self.peer_state_of(l) {
            Ok(new) if old == Some(new) => {}
            Ok(new) => {
                let ops = dataplane::plan(&[new], &Observed::of(old.as_slice()));
                match self.apply_all(&ops) {
                    Ok(()) => {
                        tracing::info!(peer = %subnet, public_ip = %l.spec.public_ip, "peer programmed")
                    }
                    Err(e) => {
                        tracing::warn!(peer = %subnet, error = %e, "program peer; the resync retries")
                    }
                }
                self.peers.insert(subnet, new);
                self.push_udp_table();
            }
            Err(why) => {
                tracing::warn!(peer = %subnet, "{why}");
                if let Some(old) = old {
                    self.drop_peer(old);
                }
            }
        }
    }

    fn remove_peer(&mut self, l: &SubnetLease) {
        let Ok(subnet) = lease_subnet(l) else { return };
        if let Some(old) = self.peers.get(&subnet).copied() {
            self.drop_peer(old);
            tracing::info!(peer = %subnet, "peer removed");
        }
    }

    fn drop_peer(&mut self, old: PeerState) {
        self.peers.remove(&old.subnet);
        self.push_udp_table();
        let ops = dataplane::plan(&[], &Observed::of(&[old]));
        if let Err(e) = self.apply_all(&ops) {
            tracing::warn!(peer = %old.subnet, error = %e, "remove peer; the resync retries");
        }
    }

    /// The udp data path's table: this node's subnet and every udp peer.
    fn udp_table(&self) -> udp::Table {
        let peers = self.peers.values().filter_map(|p| match p.via {
            Via::Udp(ip) => Some((p.subnet, ip)),
            _ => None,
        });
        udp::Table::new(self.subnet(), peers)
    }

    /// Logs the udp path's counters when it dropped packets since the last time.
    fn log_udp_drops(&mut self) {
        let Some(path) = &self.udp else { return };
        let c = path.counters().snapshot();
        let drops: u64 = c
            .iter()
            .filter(|(name, _)| name.starts_with("drop_"))
            .map(|(_, v)| v)
            .sum();
        if drops != self.udp_drops_logged {
            self.udp_drops_logged = drops;
            let fields: Vec<String> = c.iter().map(|(n, v)| format!("{n}={v}")).collect();
            tracing::warn!(counters = %fields.join(" "), "udp data path dropped packets");
        }
    }

    /// Hands the data path the current peers (a peer gone is gone at once).
    fn push_udp_table(&self) {
        if let Some(path) = &self.udp {
            path.set_table(self.udp_table());
        }
    }

    /// Starts the udp data path when it is not running or its device went
    /// (the device is made by opening its queues), then configures the device.
    fn ensure_udp(&mut self) -> Result<()> {
        let Some(tun) = self.tun.clone() else {
            return Ok(());
        };
        let Backend::Udp { port } = self.conf.backend else {
            return Ok(());
        };
        let running = self.udp.as_ref().is_some_and(UdpPath::is_running);
        if !running || !self.kernel.has_link(&tun.name)? {
            // The old workers stop (and let go of their queues) first.
            self.udp = None;
            let setup = udp::Setup {
                device: tun.name.clone(),
                local: self.underlay.ip,
                port,
                workers: 0,
            };
            self.udp = Some(UdpPath::start(&setup, self.udp_table())?);
        }
        self.kernel.configure_tun(&tun)?;
        self.push_udp_table();
        Ok(())
    }

    fn apply_all(&mut self, ops: &[dataplane::Op]) -> Result<()> {
        for op in ops {
            self.kernel.apply(op)?;
        }
        Ok(())
    }

    fn log_sync(&mut self, why: &str) {
        if let Err(e) = self.full_sync() {
            tracing::warn!(error = %e, trigger = why, "overlay resync failed; retrying at the next one");
        }
    }

    /// Makes the kernel match: device, every peer's entries, no stale
    /// entries, masquerade rules.
    fn full_sync(&mut self) -> Result<()> {
        for dev in [&self.device, &self.device6].into_iter().flatten() {
            if self.kernel.ensure_device(dev)? {
                tracing::info!(device = %dev.name, "vxlan device created");
            }
        }
        self.ensure_udp()?;
        let want: Vec<PeerState> = self.peers.values().copied().collect();
        let observed = self.kernel.observe()?;
        let ops = dataplane::plan(&want, &observed);
        if !ops.is_empty() {
            tracing::info!(
                changes = ops.len(),
                peers = want.len(),
                "overlay entries repaired"
            );
        }
        self.apply_all(&ops)?;
        let subnets = self.subnets();
        let mut families = vec![(IpNet::V4(self.conf.network), IpNet::V4(subnets.v4))];
        if let (Some(v6), Some(s6)) = (self.conf.ipv6, subnets.v6) {
            families.push((IpNet::V6(v6.network), IpNet::V6(s6)));
        }
        for (network, subnet) in families {
            if masq::ensure(network, subnet, self.settings.ip_masq)? {
                tracing::info!(%network, "masquerade and forward rules (re)installed");
            }
        }
        Ok(())
    }
}

/// What a dual-stack network needs of the backend and the underlay.
fn check_dual_stack(conf: &NetConf, underlay: &Underlay, underlay6: Option<Ipv6Net>) -> Result<()> {
    if conf.ipv6.is_none() {
        return Ok(());
    }
    match conf.backend {
        Backend::Udp { .. } => Err(Error::Config(
            "Backend.Type: udp carries IPv4 only; a dual-stack network (EnableIPv6) needs vxlan or host-gw".into(),
        )),
        Backend::HostGw if underlay6.is_none() => Err(Error::Backend(format!(
            "host-gw routes IPv6 pod subnets via peers' IPv6 underlay addresses, and iface {} has no global IPv6 address; add one (or pass --public-ipv6), or use vxlan, which carries IPv6 over an IPv4 underlay",
            underlay.name
        ))),
        _ => Ok(()),
    }
}

/// host-gw cannot reach a peer off this node's segment: refuse to start.
fn refuse_off_segment_peers(local: &Local, leases: &[SubnetLease], me: Ipv4Addr) -> Result<()> {
    for l in leases {
        if l.spec.public_ip == IpAddr::V4(me) {
            continue;
        }
        if let Ok(p) = Peer::from_lease(l) {
            if p.backend_type == "host-gw" {
                backend::peer_state(local, &p).map_err(Error::Backend)?;
            }
        }
    }
    Ok(())
}

fn lease_subnet(l: &SubnetLease) -> Result<Ipv4Net> {
    match l.spec.subnet {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(n) => Err(Error::Lease(format!("lease {n}: only IPv4 is supported"))),
    }
}

/// Reads the network config from the control plane, proposing one from
/// the flags when none is stored (the first node's flags win; later nodes
/// whose flags differ are told so).
async fn load_config(cp: &dyn ControlPlane, s: &Settings) -> Result<NetConf> {
    let what = ObjectRef::new(Kind::ConfigMap, CONFIGMAP_NAMESPACE, CONFIGMAP_NAME);
    let cm = match cp.get(&what).await {
        Ok(Object::ConfigMap(cm)) => *cm,
        Ok(_) => return Err(Error::Config(format!("{what} is not a ConfigMap"))),
        Err(e) if e.is_not_found() => {
            let proposed = NetConf::raw_from_flags(&s.cluster_cidr, &s.backend)?;
            // Validate before storing: a bad flag must not poison the cluster.
            NetConf::from_raw(&proposed).map_err(|e| {
                Error::Config(format!(
                    "from --cluster-cidr/--backend: {}",
                    e.to_string().trim_start_matches("network config: ")
                ))
            })?;
            create_config(cp, &serde_json::to_string(&proposed).expect("serializes")).await?
        }
        Err(e) => return Err(e.into()),
    };
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIGMAP_KEY))
        .ok_or_else(|| Error::Config(format!("{what}: has no key {CONFIGMAP_KEY}")))?;
    let conf = NetConf::parse(json).map_err(|e| {
        Error::Config(format!(
            "{what}: {}",
            e.to_string().trim_start_matches("network config: ")
        ))
    })?;
    let same_network = crate::config::split_cluster_cidr(&s.cluster_cidr)
        .is_ok_and(|(v4, v6)| v4 == conf.network && v6 == conf.ipv6.map(|c| c.network));
    if !same_network || conf.backend.type_name() != s.backend {
        tracing::warn!(
            stored_network = %conf.cluster_cidr(),
            stored_backend = conf.backend.type_name(),
            flag_network = %s.cluster_cidr,
            flag_backend = %s.backend,
            "the cluster's network config differs from this node's flags; the stored config wins"
        );
    }
    Ok(conf)
}

async fn create_config(cp: &dyn ControlPlane, json: &str) -> Result<ConfigMap> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match cp.create(Object::from(ns), None).await {
        Ok(_) | Err(controlplane::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(CONFIGMAP_NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CONFIGMAP_KEY.to_string(),
            json.to_string(),
        )])),
        ..Default::default()
    };
    match cp.create(Object::from(cm), None).await {
        Ok(Object::ConfigMap(cm)) => Ok(*cm),
        Ok(_) => Err(Error::Config(
            "the control plane returned a non-ConfigMap".into(),
        )),
        // Another node stored one first: use theirs.
        Err(controlplane::Error::AlreadyExists { .. }) => {
            let what = ObjectRef::new(Kind::ConfigMap, CONFIGMAP_NAMESPACE, CONFIGMAP_NAME);
            match cp.get(&what).await? {
                Object::ConfigMap(cm) => Ok(*cm),
                _ => Err(Error::Config(format!("{what} is not a ConfigMap"))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Watches links, routes and neighbours on a thread of its own and kicks
/// a resync when something of ours is removed.
fn spawn_monitor(
    network: Ipv4Net,
    network6: Option<Ipv6Net>,
    devices: Vec<String>,
    kick: mpsc::Sender<()>,
) {
    let spawned = std::thread::Builder::new()
        .name("overlay-monitor".into())
        .spawn(move || {
            let mut mon = match hostnet::netlink::Monitor::new() {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "netlink monitor unavailable; relying on the periodic resync");
                    return;
                }
            };
            let mut device_index: Vec<u32> = Vec::new();
            loop {
                if kick.is_closed() {
                    return;
                }
                let changes = match mon.recv_timeout(Duration::from_secs(1)) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink monitor failed; relying on the periodic resync");
                        return;
                    }
                };
                use hostnet::netlink::Change;
                let ours = changes.iter().any(|c| match c {
                    Change::LinkRemoved { name, .. } => devices.contains(name),
                    Change::LinkChanged { index, name, up } => {
                        if devices.contains(name) {
                            if !device_index.contains(index) {
                                device_index.push(*index);
                            }
                            !*up
                        } else {
                            false
                        }
                    }
                    Change::RouteRemoved(r) => match r.dst {
                        IpNet::V4(d) => network.contains(&d),
                        IpNet::V6(d) => network6.is_some_and(|n| n.contains(&d)),
                    },
                    Change::NeighRemoved { ifindex, .. } => device_index.contains(ifindex),
                    // An overrun or something unrelated: the periodic resync covers it.
                    Change::Other => false,
                });
                if ours {
                    // A full channel means a resync is already due.
                    let _ = kick.try_send(());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "start the netlink monitor; relying on the periodic resync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            ip: "198.18.0.11".parse().unwrap(),
            net: "198.18.0.0/24".parse().unwrap(),
        }
    }

    fn conf(backend: &str) -> NetConf {
        NetConf::from_raw(
            &NetConf::raw_from_flags("10.244.0.0/16,fd00:10:244::/56", backend).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn dual_stack_needs_a_backend_and_underlay_that_carry_ipv6() {
        let u6: Ipv6Net = "fd00:198:18::b/64".parse().unwrap();
        assert!(check_dual_stack(&conf("vxlan"), &underlay(), None).is_ok());
        assert!(check_dual_stack(&conf("host-gw"), &underlay(), Some(u6)).is_ok());
        let e = check_dual_stack(&conf("host-gw"), &underlay(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("iface eth0 has no global IPv6 address"), "{e}");
        let e = check_dual_stack(&conf("udp"), &underlay(), Some(u6))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Backend.Type: udp carries IPv4 only"), "{e}");
        // Single-stack: nothing to check.
        let single =
            NetConf::parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#).unwrap();
        assert!(check_dual_stack(&single, &underlay(), None).is_ok());
    }
}
