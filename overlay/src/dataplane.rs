//! The kernel side of the overlay: the vxlan devices and, per peer and
//! address family, routes, neighbour and FDB entries. [`plan`] diffs what
//! peers want against what the kernel holds (pure); [`Dataplane`] observes
//! and applies, with the real [`Kernel`] over hostnet's netlink and a
//! [`Recorder`] fake.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostnet::netlink::{RouteRequest, VxlanRequest};
use hostnet::Netlink;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::backend::{Dev, Fdb, Neigh, PeerState, Via};
use crate::Result;

/// A vxlan device as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The node's public IP of the underlay family: the outer source address.
    pub local: IpAddr,
    /// The underlay interface's index.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// This node's VTEP addresses: `<subnet>.0/32`, and `<IPv6 subnet>::/128`
    /// on the device that carries IPv6 pod traffic.
    pub addrs: Vec<IpNet>,
}

/// The udp backend's TUN device as it must be. The data path makes the
/// device (by opening its queues); the kernel impl gives it the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunDevice {
    pub name: String,
    pub mtu: u32,
    /// `<subnet>.0/<network length>`: flannel's address for `flannel0`,
    /// whose connected route sends the whole cluster network to the TUN
    /// (the node's own, longer subnet stays on cni0).
    pub addr: Ipv4Net,
}

/// The overlay's entries the kernel holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub routes: BTreeSet<(IpNet, Via)>,
    pub neighs: BTreeSet<Neigh>,
    pub fdb: BTreeSet<Fdb>,
}

impl Observed {
    /// The entries `states` put in the kernel: diffing a peer's new state
    /// against its old one with [`plan`] gives just the changes.
    pub fn of(states: &[PeerState]) -> Observed {
        let mut o = Observed::default();
        for f in states.iter().flat_map(PeerState::families) {
            if !matches!(f.via, Via::Udp(_)) {
                o.routes.insert((f.subnet, f.via));
            }
            o.neighs.extend(f.neigh);
            o.fdb.extend(f.fdb);
        }
        o
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    SetRoute(IpNet, Via),
    DelRoute(IpNet, Via),
    SetNeigh(Dev, IpAddr, [u8; 6]),
    DelNeigh(Dev, IpAddr),
    SetFdb(Dev, [u8; 6], IpAddr),
    DelFdb(Dev, [u8; 6], IpAddr),
}

/// The ops that make `observed` hold exactly `want`.
pub fn plan(want: &[PeerState], observed: &Observed) -> Vec<Op> {
    let mut routes = BTreeMap::new();
    let mut neighs = BTreeMap::new();
    let mut fdb = BTreeSet::new();
    for f in want.iter().flat_map(PeerState::families) {
        // The udp path's peers live in its own table, not the kernel's.
        if !matches!(f.via, Via::Udp(_)) {
            routes.insert(f.subnet, f.via);
        }
        if let Some((dev, ip, mac)) = f.neigh {
            neighs.insert((dev, ip), mac);
        }
        if let Some(e) = f.fdb {
            fdb.insert(e);
        }
    }
    let mut ops = Vec::new();
    // Removals first: a stale FDB entry for a MAC must not outlive the
    // new one for the same MAC.
    for &(subnet, via) in &observed.routes {
        if !routes.contains_key(&subnet) {
            ops.push(Op::DelRoute(subnet, via));
        }
    }
    for &(dev, ip, _) in &observed.neighs {
        if !neighs.contains_key(&(dev, ip)) {
            ops.push(Op::DelNeigh(dev, ip));
        }
    }
    for &(dev, mac, dst) in &observed.fdb {
        if !fdb.contains(&(dev, mac, dst)) {
            ops.push(Op::DelFdb(dev, mac, dst));
        }
    }
    // Neighbour and FDB entries before the route that uses them, so the
    // first packet routed finds its way.
    for (&(dev, ip), &mac) in &neighs {
        if !observed.neighs.contains(&(dev, ip, mac)) {
            ops.push(Op::SetNeigh(dev, ip, mac));
        }
    }
    for &(dev, mac, dst) in &fdb {
        if !observed.fdb.contains(&(dev, mac, dst)) {
            ops.push(Op::SetFdb(dev, mac, dst));
        }
    }
    for (&subnet, &via) in &routes {
        if !observed.routes.contains(&(subnet, via)) {
            ops.push(Op::SetRoute(subnet, via));
        }
    }
    ops
}

/// The kernel as the overlay uses it.
pub trait Dataplane: Send {
    /// Makes the vxlan device match `dev` (created, or recreated when its
    /// VNI, port or underlay changed); returns true when it was (re)created.
    fn ensure_device(&mut self, dev: &VxlanDevice) -> Result<bool>;
    /// The overlay entries present now.
    fn observe(&mut self) -> Result<Observed>;
    /// Applies one op. Removing what is already gone is not an error.
    fn apply(&mut self, op: &Op) -> Result<()>;
    /// This node's subnets changed (its bridge routes are never the overlay's).
    fn set_own_subnet(&mut self, _subnet: Ipv4Net, _subnet6: Option<Ipv6Net>) {}
    /// Whether a link named `name` exists.
    fn has_link(&mut self, name: &str) -> Result<bool>;
    /// Gives the existing TUN device its address and MTU, and sets it up.
    fn configure_tun(&mut self, dev: &TunDevice) -> Result<()>;
}

/// What the kernel impl looks at: which routes are the overlay's.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The cluster network: routes inside it (but for our own subnet) are ours.
    pub network: Ipv4Net,
    /// This node's subnet (its bridge's connected route is not ours).
    pub own_subnet: Ipv4Net,
    /// The IPv6 network and this node's IPv6 subnet (dual-stack).
    pub network6: Option<Ipv6Net>,
    pub own_subnet6: Option<Ipv6Net>,
    pub underlay: u32,
    /// The vxlan device's name, for the vxlan backend.
    pub device: Option<String>,
    /// The IPv6-underlay vxlan device's name, when there is one.
    pub device6: Option<String>,
}

impl Scope {
    fn device_name(&self, dev: Dev) -> Option<&String> {
        match dev {
            Dev::V4 => self.device.as_ref(),
            Dev::V6 => self.device6.as_ref(),
        }
    }

    /// Whether a route to `dst` is one the overlay manages.
    fn owns(&self, dst: IpNet) -> bool {
        match dst {
            IpNet::V4(d) => self.network.contains(&d) && d != self.own_subnet,
            IpNet::V6(d) => {
                self.network6.is_some_and(|n| n.contains(&d)) && Some(d) != self.own_subnet6
            }
        }
    }
}

/// The real kernel, through rtnetlink.
pub struct Kernel {
    nl: Netlink,
    scope: Scope,
    /// The vxlan devices' indexes, by [`Dev`], as last looked up.
    device_index: [Option<u32>; 2],
}

impl Kernel {
    /// Opens netlink in the calling thread's namespace.
    pub fn new(scope: Scope) -> Result<Kernel> {
        Ok(Kernel {
            nl: Netlink::new()?,
            scope,
            device_index: [None; 2],
        })
    }

    fn device(&mut self, dev: Dev) -> Result<Option<u32>> {
        let Some(name) = self.scope.device_name(dev).cloned() else {
            return Ok(None);
        };
        let slot = dev as usize;
        if let Some(i) = self.device_index[slot] {
            if let Some(l) = self.nl.link().get_by_index(i)? {
                if l.name == name {
                    return Ok(Some(i));
                }
            }
        }
        self.device_index[slot] = self.nl.link().get_by_name(&name)?.map(|l| l.index);
        Ok(self.device_index[slot])
    }

    fn route_request(&mut self, subnet: IpNet, via: Via) -> Result<Option<RouteRequest>> {
        let (gw, oif, onlink) = match via {
            Via::Vxlan(dev, gw) => match self.device(dev)? {
                Some(i) => (gw, i, true),
                None => return Ok(None),
            },
            Via::Underlay(gw) => (gw, self.scope.underlay, false),
            Via::Udp(_) => return Ok(None),
        };
        let mut r = RouteRequest::new(subnet, Some(gw), Some(oif));
        r.onlink = onlink;
        r.replace = true;
        Ok(Some(r))
    }
}

impl Kernel {
    /// Leaves `want` the only addresses of link `index`, and the link up.
    fn only_addrs_and_up(&mut self, index: u32, want: &[IpNet]) -> Result<()> {
        let addrs = self.nl.addr().list(index)?;
        for a in &addrs {
            if !want.contains(a) {
                gone_ok(self.nl.addr().del(index, *a))?;
            }
        }
        for w in want {
            if !addrs.contains(w) {
                match self.nl.addr().add(index, *w) {
                    Err(e) if e.is_exists() => {}
                    other => other?,
                }
            }
        }
        self.nl.link().set_up(index, true)?;
        Ok(())
    }
}

/// Treats "already gone" as done.
fn gone_ok(r: hostnet::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => Ok(other?),
    }
}

impl Dataplane for Kernel {
    fn ensure_device(&mut self, dev: &VxlanDevice) -> Result<bool> {
        let mut created = false;
        let existing = self.nl.link().vxlan_info(&dev.name)?;
        let index = match existing {
            Some((link, Some(info)))
                if info.vni == dev.vni
                    && info.port == dev.port
                    && info.local == Some(dev.local)
                    && info.underlay == Some(dev.underlay)
                    && !info.learning =>
            {
                if link.mtu != dev.mtu {
                    self.nl.link().set_mtu(link.index, dev.mtu)?;
                }
                link.index
            }
            other => {
                if let Some((link, _)) = other {
                    tracing::info!(device = %dev.name, "recreating the vxlan device: its settings changed");
                    gone_ok(self.nl.link().del(link.index))?;
                }
                let req = VxlanRequest {
                    name: dev.name.clone(),
                    vni: dev.vni,
                    port: dev.port,
                    local: Some(dev.local),
                    underlay: Some(dev.underlay),
                    learning: false,
                    mtu: Some(dev.mtu),
                    mac: Some(dev.mac.to_vec()),
                };
                match self.nl.link().add_vxlan(&req) {
                    Err(e) if e.is_exists() => {}
                    other => other?,
                }
                created = true;
                self.nl
                    .link()
                    .get_by_name(&dev.name)?
                    .ok_or_else(|| {
                        crate::Error::Backend(format!("{} vanished after creation", dev.name))
                    })?
                    .index
            }
        };
        let slot = if self.scope.device6.as_ref() == Some(&dev.name) {
            Dev::V6
        } else {
            Dev::V4
        };
        self.device_index[slot as usize] = Some(index);
        self.only_addrs_and_up(index, &dev.addrs)?;
        Ok(created)
    }

    fn has_link(&mut self, name: &str) -> Result<bool> {
        Ok(self.nl.link().get_by_name(name)?.is_some())
    }

    fn configure_tun(&mut self, dev: &TunDevice) -> Result<()> {
        let link = self.nl.link().get_by_name(&dev.name)?.ok_or_else(|| {
            crate::Error::Backend(format!("TUN device {} does not exist", dev.name))
        })?;
        if link.mtu != dev.mtu {
            self.nl.link().set_mtu(link.index, dev.mtu)?;
        }
        // The path carries IPv4 only: no router solicitations or MLD
        // reports into the TUN (a kernel without IPv6 has no such key).
        let key = format!("net/ipv6/conf/{}/disable_ipv6", dev.name);
        if let Err(e) = hostnet::sysctl::ensure(&key, "1") {
            tracing::debug!(error = %e, "IPv6 stays on for the TUN device");
        }
        self.only_addrs_and_up(link.index, &[IpNet::V4(dev.addr)])
    }

    fn observe(&mut self) -> Result<Observed> {
        let devs = [
            (Dev::V4, self.device(Dev::V4)?),
            (Dev::V6, self.device(Dev::V6)?),
        ];
        let mut o = Observed::default();
        let v6 = self.scope.network6.is_some();
        let mut routes = self.nl.route().list(true)?;
        if v6 {
            routes.extend(self.nl.route().list(false)?);
        }
        for r in routes {
            if !self.scope.owns(r.dst) {
                continue;
            }
            let Some(gw) = r.gateway else { continue };
            if let Some((dev, _)) = devs.iter().find(|(_, i)| i.is_some() && *i == r.oif) {
                o.routes.insert((r.dst, Via::Vxlan(*dev, gw)));
            } else if r.oif == Some(self.scope.underlay) {
                o.routes.insert((r.dst, Via::Underlay(gw)));
            }
        }
        for (dev, index) in devs {
            let Some(i) = index else { continue };
            for n in self.nl.neigh().list(i)? {
                if let (true, Ok(mac)) = (n.permanent, <[u8; 6]>::try_from(n.mac.as_slice())) {
                    o.neighs.insert((dev, n.ip, mac));
                }
            }
            for f in self.nl.fdb().list(i)? {
                if let (Some(dst), Ok(mac)) = (f.dst, <[u8; 6]>::try_from(f.mac.as_slice())) {
                    o.fdb.insert((dev, mac, dst));
                }
            }
        }
        Ok(o)
    }

    fn apply(&mut self, op: &Op) -> Result<()> {
        match *op {
            Op::SetRoute(subnet, via) => {
                if let Some(r) = self.route_request(subnet, via)? {
                    self.nl.route().add(&r)?;
                }
            }
            Op::DelRoute(subnet, via) => {
                if let Some(r) = self.route_request(subnet, via)? {
                    gone_ok(self.nl.route().del(&r))?;
                }
            }
            Op::SetNeigh(dev, ip, mac) => {
                if let Some(i) = self.device(dev)? {
                    self.nl.neigh().replace(i, ip, &mac)?;
                }
            }
            Op::DelNeigh(dev, ip) => {
                if let Some(i) = self.device(dev)? {
                    gone_ok(self.nl.neigh().del(i, ip))?;
                }
            }
            Op::SetFdb(dev, mac, dst) => {
                if let Some(i) = self.device(dev)? {
                    self.nl.fdb().replace(i, &mac, dst)?;
                }
            }
            Op::DelFdb(dev, mac, dst) => {
                if let Some(i) = self.device(dev)? {
                    gone_ok(self.nl.fdb().del(i, &mac, Some(dst)))?;
                }
            }
        }
        Ok(())
    }

    fn set_own_subnet(&mut self, subnet: Ipv4Net, subnet6: Option<Ipv6Net>) {
        self.scope.own_subnet = subnet;
        self.scope.own_subnet6 = subnet6;
    }
}

/// A fake kernel that records what it was asked and keeps the state those
/// asks would leave, so a reconcile can be checked end to end in memory.
#[derive(Debug, Default)]
pub struct Recorder {
    pub ops: Vec<Op>,
    pub devices: Vec<VxlanDevice>,
    pub state: Observed,
    /// Every TUN configuration asked for.
    pub tuns: Vec<TunDevice>,
}

impl Dataplane for Recorder {
    fn ensure_device(&mut self, dev: &VxlanDevice) -> Result<bool> {
        let fresh = self.devices.last() != Some(dev);
        if fresh {
            self.devices.push(dev.clone());
        }
        Ok(fresh)
    }

    fn observe(&mut self) -> Result<Observed> {
        Ok(self.state.clone())
    }

    fn has_link(&mut self, name: &str) -> Result<bool> {
        Ok(self.tuns.iter().any(|t| t.name == name))
    }

    fn configure_tun(&mut self, dev: &TunDevice) -> Result<()> {
        self.tuns.push(dev.clone());
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<()> {
        self.ops.push(*op);
        let s = &mut self.state;
        match *op {
            Op::SetRoute(n, via) => {
                s.routes.retain(|(m, _)| *m != n);
                s.routes.insert((n, via));
            }
            Op::DelRoute(n, _) => s.routes.retain(|(m, _)| *m != n),
            Op::SetNeigh(dev, ip, mac) => {
                s.neighs.retain(|(d, i, _)| (*d, *i) != (dev, ip));
                s.neighs.insert((dev, ip, mac));
            }
            Op::DelNeigh(dev, ip) => s.neighs.retain(|(d, i, _)| (*d, *i) != (dev, ip)),
            Op::SetFdb(dev, mac, dst) => {
                s.fdb.retain(|(d, m, _)| (*d, *m) != (dev, mac));
                s.fdb.insert((dev, mac, dst));
            }
            Op::DelFdb(dev, mac, dst) => {
                s.fdb.remove(&(dev, mac, dst));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vx(subnet: &str, mac: u8, public: &str) -> PeerState {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        let m = [2, 0, 0, 0, 0, mac];
        let vtep = IpAddr::V4(subnet.network());
        PeerState {
            subnet,
            via: Via::Vxlan(Dev::V4, vtep),
            neigh: Some((Dev::V4, vtep, m)),
            fdb: Some((Dev::V4, m, public.parse().unwrap())),
            v6: None,
        }
    }

    /// `vx` with an IPv6 subnet riding the same device.
    fn vx6(subnet: &str, subnet6: &str, mac: u8, public: &str) -> PeerState {
        let mut p = vx(subnet, mac, public);
        let subnet6: Ipv6Net = subnet6.parse().unwrap();
        let vtep = IpAddr::V6(subnet6.network());
        p.v6 = Some(crate::backend::FamilyState {
            subnet: IpNet::V6(subnet6),
            via: Via::Vxlan(Dev::V4, vtep),
            neigh: Some((Dev::V4, vtep, [2, 0, 0, 0, 0, mac])),
            fdb: p.fdb,
        });
        p
    }

    #[test]
    fn a_dual_stack_peer_gets_two_routes_two_neighbours_one_fdb_entry_and_leaves_clean() {
        let p = vx6("10.244.2.0/24", "fd00:10:244:2::/64", 2, "198.18.0.12");
        let ops = plan(&[p], &Observed::default());
        assert_eq!(ops.len(), 5, "{ops:?}");
        assert!(ops.contains(&Op::SetRoute(
            "fd00:10:244:2::/64".parse().unwrap(),
            Via::Vxlan(Dev::V4, "fd00:10:244:2::".parse().unwrap())
        )));
        let mut k = Recorder::default();
        for op in ops {
            k.apply(&op).unwrap();
        }
        assert!(plan(&[p], &k.observe().unwrap()).is_empty());
        // The lease goes: both families' entries go.
        for op in plan(&[], &k.observe().unwrap()) {
            k.apply(&op).unwrap();
        }
        assert_eq!(k.observe().unwrap(), Observed::default());
    }

    #[test]
    fn a_fresh_node_gets_three_entries_per_peer_entries_before_routes() {
        let want = [
            vx("10.244.2.0/24", 2, "198.18.0.12"),
            vx("10.244.3.0/24", 3, "198.18.0.13"),
        ];
        let ops = plan(&want, &Observed::default());
        assert_eq!(ops.len(), 6);
        let first_route = ops
            .iter()
            .position(|o| matches!(o, Op::SetRoute(..)))
            .unwrap();
        assert!(ops[..first_route]
            .iter()
            .all(|o| matches!(o, Op::SetNeigh(..) | Op::SetFdb(..))));
    }

    #[test]
    fn converged_means_no_ops_and_stale_entries_go() {
        let want = [
            vx("10.244.2.0/24", 2, "198.18.0.12"),
            vx("10.244.3.0/24", 3, "198.18.0.13"),
        ];
        let mut k = Recorder::default();
        for op in plan(&want, &k.observe().unwrap()) {
            k.apply(&op).unwrap();
        }
        assert!(plan(&want, &k.observe().unwrap()).is_empty());
        // Peer 3 leaves; peer 2 moves to a new public IP.
        let want2 = [vx("10.244.2.0/24", 2, "198.18.0.22")];
        let ops = plan(&want2, &k.observe().unwrap());
        assert!(ops.contains(&Op::DelRoute(
            "10.244.3.0/24".parse().unwrap(),
            Via::Vxlan(Dev::V4, "10.244.3.0".parse().unwrap())
        )));
        assert!(ops.contains(&Op::DelNeigh(Dev::V4, "10.244.3.0".parse().unwrap())));
        assert!(ops.contains(&Op::DelFdb(
            Dev::V4,
            [2, 0, 0, 0, 0, 2],
            "198.18.0.12".parse().unwrap()
        )));
        assert!(ops.contains(&Op::SetFdb(
            Dev::V4,
            [2, 0, 0, 0, 0, 2],
            "198.18.0.22".parse().unwrap()
        )));
        assert!(!ops.iter().any(|o| matches!(o, Op::SetRoute(..))));
        for op in ops {
            k.apply(&op).unwrap();
        }
        assert!(plan(&want2, &k.observe().unwrap()).is_empty());
    }

    #[test]
    fn one_peer_at_a_time() {
        let p = vx("10.244.9.0/24", 9, "198.18.0.19");
        let mut k = Recorder::default();
        for op in plan(&[p], &Observed::default()) {
            k.apply(&op).unwrap();
        }
        assert_eq!(k.observe().unwrap(), Observed::of(&[p]));
        // The peer's public IP changes: only its FDB entry moves.
        let moved = vx("10.244.9.0/24", 9, "198.18.0.29");
        let ops = plan(&[moved], &Observed::of(&[p]));
        assert_eq!(
            ops,
            vec![
                Op::DelFdb(Dev::V4, [2, 0, 0, 0, 0, 9], "198.18.0.19".parse().unwrap()),
                Op::SetFdb(Dev::V4, [2, 0, 0, 0, 0, 9], "198.18.0.29".parse().unwrap()),
            ]
        );
        for op in plan(&[], &Observed::of(&[p])) {
            k.apply(&op).unwrap();
        }
        assert_eq!(k.observe().unwrap(), Observed::default());
    }
}
