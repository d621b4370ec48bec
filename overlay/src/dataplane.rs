//! The kernel side of the overlay: the vxlan device and, per peer, routes,
//! neighbour and FDB entries. [`plan`] diffs what peers want against what
//! the kernel holds (pure); [`Dataplane`] observes and applies, with the
//! real [`Kernel`] over hostnet's netlink and a [`Recorder`] fake.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use hostnet::netlink::{RouteRequest, VxlanRequest};
use hostnet::Netlink;
use ipnet::{IpNet, Ipv4Net};

use crate::backend::{PeerState, Via};
use crate::Result;

/// The vxlan device as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The node's public IP: the outer source address.
    pub local: Ipv4Addr,
    /// The underlay interface's index.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// `<subnet>.0/32`: this node's VTEP address.
    pub addr: Ipv4Net,
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
    pub routes: BTreeSet<(Ipv4Net, Via)>,
    pub neighs: BTreeSet<(Ipv4Addr, [u8; 6])>,
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
}

impl Observed {
    /// The entries `states` put in the kernel: diffing a peer's new state
    /// against its old one with [`plan`] gives just the changes.
    pub fn of(states: &[PeerState]) -> Observed {
        let mut o = Observed::default();
        for p in states {
            if !matches!(p.via, Via::Udp(_)) {
                o.routes.insert((p.subnet, p.via));
            }
            o.neighs.extend(p.neigh);
            o.fdb.extend(p.fdb);
        }
        o
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    SetRoute(Ipv4Net, Via),
    DelRoute(Ipv4Net, Via),
    SetNeigh(Ipv4Addr, [u8; 6]),
    DelNeigh(Ipv4Addr),
    SetFdb([u8; 6], Ipv4Addr),
    DelFdb([u8; 6], Ipv4Addr),
}

/// The ops that make `observed` hold exactly `want`.
pub fn plan(want: &[PeerState], observed: &Observed) -> Vec<Op> {
    let mut routes = BTreeMap::new();
    let mut neighs = BTreeMap::new();
    let mut fdb = BTreeSet::new();
    for p in want {
        // The udp path's peers live in its own table, not the kernel's.
        if !matches!(p.via, Via::Udp(_)) {
            routes.insert(p.subnet, p.via);
        }
        if let Some((ip, mac)) = p.neigh {
            neighs.insert(ip, mac);
        }
        if let Some(f) = p.fdb {
            fdb.insert(f);
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
    for &(ip, _) in &observed.neighs {
        if !neighs.contains_key(&ip) {
            ops.push(Op::DelNeigh(ip));
        }
    }
    for &(mac, dst) in &observed.fdb {
        if !fdb.contains(&(mac, dst)) {
            ops.push(Op::DelFdb(mac, dst));
        }
    }
    // Neighbour and FDB entries before the route that uses them, so the
    // first packet routed finds its way.
    for (&ip, &mac) in &neighs {
        if !observed.neighs.contains(&(ip, mac)) {
            ops.push(Op::SetNeigh(ip, mac));
        }
    }
    for &(mac, dst) in &fdb {
        if !observed.fdb.contains(&(mac, dst)) {
            ops.push(Op::SetFdb(mac, dst));
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
    /// This node's subnet changed (its bridge route is never the overlay's).
    fn set_own_subnet(&mut self, _subnet: Ipv4Net) {}
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
    pub underlay: u32,
    /// The vxlan device's name, for the vxlan backend.
    pub device: Option<String>,
}

/// The real kernel, through rtnetlink.
pub struct Kernel {
    nl: Netlink,
    scope: Scope,
    device_index: Option<u32>,
}

impl Kernel {
    /// Opens netlink in the calling thread's namespace.
    pub fn new(scope: Scope) -> Result<Kernel> {
        Ok(Kernel {
            nl: Netlink::new()?,
            scope,
            device_index: None,
        })
    }

    fn device(&mut self) -> Result<Option<u32>> {
        let Some(name) = self.scope.device.clone() else {
            return Ok(None);
        };
        if let Some(i) = self.device_index {
            if let Some(l) = self.nl.link().get_by_index(i)? {
                if l.name == name {
                    return Ok(Some(i));
                }
            }
        }
        self.device_index = self.nl.link().get_by_name(&name)?.map(|l| l.index);
        Ok(self.device_index)
    }

    fn route_request(&mut self, subnet: Ipv4Net, via: Via) -> Result<Option<RouteRequest>> {
        let (gw, oif, onlink) = match via {
            Via::Vxlan(gw) => match self.device()? {
                Some(i) => (gw, i, true),
                None => return Ok(None),
            },
            Via::Underlay(gw) => (gw, self.scope.underlay, false),
            Via::Udp(_) => return Ok(None),
        };
        let mut r = RouteRequest::new(IpNet::V4(subnet), Some(IpAddr::V4(gw)), Some(oif));
        r.onlink = onlink;
        r.replace = true;
        Ok(Some(r))
    }
}

impl Kernel {
    /// Leaves `want` the only address of link `index`, and the link up.
    fn only_addr_and_up(&mut self, index: u32, want: Ipv4Net) -> Result<()> {
        let want = IpNet::V4(want);
        let addrs = self.nl.addr().list(index)?;
        for a in &addrs {
            if *a != want {
                gone_ok(self.nl.addr().del(index, *a))?;
            }
        }
        if !addrs.contains(&want) {
            match self.nl.addr().add(index, want) {
                Err(e) if e.is_exists() => {}
                other => other?,
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
                    && info.local == Some(IpAddr::V4(dev.local))
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
                    local: Some(IpAddr::V4(dev.local)),
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
        self.device_index = Some(index);
        self.only_addr_and_up(index, dev.addr)?;
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
        self.only_addr_and_up(link.index, dev.addr)
    }

    fn observe(&mut self) -> Result<Observed> {
        let dev = self.device()?;
        let mut o = Observed::default();
        for r in self.nl.route().list(true)? {
            let IpNet::V4(dst) = r.dst else { continue };
            if !self.scope.network.contains(&dst) || dst == self.scope.own_subnet {
                continue;
            }
            let Some(IpAddr::V4(gw)) = r.gateway else {
                continue;
            };
            if dev.is_some() && r.oif == dev {
                o.routes.insert((dst, Via::Vxlan(gw)));
            } else if r.oif == Some(self.scope.underlay) {
                o.routes.insert((dst, Via::Underlay(gw)));
            }
        }
        if let Some(i) = dev {
            for n in self.nl.neigh().list(i)? {
                if let (IpAddr::V4(ip), true, Ok(mac)) =
                    (n.ip, n.permanent, <[u8; 6]>::try_from(n.mac.as_slice()))
                {
                    o.neighs.insert((ip, mac));
                }
            }
            for f in self.nl.fdb().list(i)? {
                if let (Some(IpAddr::V4(dst)), Ok(mac)) =
                    (f.dst, <[u8; 6]>::try_from(f.mac.as_slice()))
                {
                    o.fdb.insert((mac, dst));
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
            Op::SetNeigh(ip, mac) => {
                if let Some(i) = self.device()? {
                    self.nl.neigh().replace(i, IpAddr::V4(ip), &mac)?;
                }
            }
            Op::DelNeigh(ip) => {
                if let Some(i) = self.device()? {
                    gone_ok(self.nl.neigh().del(i, IpAddr::V4(ip)))?;
                }
            }
            Op::SetFdb(mac, dst) => {
                if let Some(i) = self.device()? {
                    self.nl.fdb().replace(i, &mac, IpAddr::V4(dst))?;
                }
            }
            Op::DelFdb(mac, dst) => {
                if let Some(i) = self.device()? {
                    gone_ok(self.nl.fdb().del(i, &mac, Some(IpAddr::V4(dst))))?;
                }
            }
        }
        Ok(())
    }

    fn set_own_subnet(&mut self, subnet: Ipv4Net) {
        self.scope.own_subnet = subnet;
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
            Op::SetNeigh(ip, mac) => {
                s.neighs.retain(|(i, _)| *i != ip);
                s.neighs.insert((ip, mac));
            }
            Op::DelNeigh(ip) => s.neighs.retain(|(i, _)| *i != ip),
            Op::SetFdb(mac, dst) => {
                s.fdb.retain(|(m, _)| *m != mac);
                s.fdb.insert((mac, dst));
            }
            Op::DelFdb(mac, dst) => {
                s.fdb.remove(&(mac, dst));
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
        PeerState {
            subnet,
            via: Via::Vxlan(subnet.network()),
            neigh: Some((subnet.network(), m)),
            fdb: Some((m, public.parse().unwrap())),
        }
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
            Via::Vxlan("10.244.3.0".parse().unwrap())
        )));
        assert!(ops.contains(&Op::DelNeigh("10.244.3.0".parse().unwrap())));
        assert!(ops.contains(&Op::DelFdb(
            [2, 0, 0, 0, 0, 2],
            "198.18.0.12".parse().unwrap()
        )));
        assert!(ops.contains(&Op::SetFdb(
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
                Op::DelFdb([2, 0, 0, 0, 0, 9], "198.18.0.19".parse().unwrap()),
                Op::SetFdb([2, 0, 0, 0, 0, 9], "198.18.0.29".parse().unwrap()),
            ]
        );
        for op in plan(&[], &Observed::of(&[p])) {
            k.apply(&op).unwrap();
        }
        assert_eq!(k.observe().unwrap(), Observed::default());
    }
}
