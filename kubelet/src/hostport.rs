//! Containers' `hostPort`s, in the table `ip knode-hostport` of our own
//! (as the CNI portmap plugin does it, but one static ruleset whose maps
//! change by element): a connection to a node address on a host port is
//! DNATed to the pod's address and container port; with a `hostIP`, only
//! on that address. Pods add and remove their elements; a restarted agent
//! keeps what the kernel holds, pods re-claim theirs as they are adopted,
//! and the first sweep removes what belongs to no live pod. A pod reaching
//! its own host port through a node address is masqueraded (hairpin).
//! IPv4 only.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hostnet::nftables::{
    ct_status, Batch, Chain, ChainType, CmpOp, CtKey, DataType, Elem, ElemData, Expr, Family,
    Field, Hook, KeyType, LookupDest, MapData, MetaKey, NatKind, NfTables, Reg, Set, Table, Value,
    Verdict, RTN_LOCAL,
};
use k8s_openapi::api::core::v1::Pod;

/// The table.
pub const TABLE: &str = "knode-hostport";
/// `ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service`:
/// ports bound to one `hostIP`.
pub const BY_ADDRESS: &str = "hostports-ip";
/// `inet_proto . inet_service : ipv4_addr . inet_service`: ports on every
/// node address.
pub const ANY_ADDRESS: &str = "hostports";
/// `ipv4_addr . ipv4_addr`: (pod, pod) for every pod with a host port,
/// so a pod reaching its own host port through a node address is
/// masqueraded (its reply must come back through the node).
pub const HAIRPIN: &str = "hostport-hairpin";
const CHAIN: &str = "hostports";

/// One host port of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// `None`: every address of the node.
    pub host_ip: Option<Ipv4Addr>,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// Why a port cannot be mapped: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

/// The host ports the pod's containers ask for, at `pod_ip` (kubelet's
/// hostport mappings: app containers' ports with a `hostPort`). An IPv6
/// pod address or `hostIP` has none here.
pub fn mappings(pod: &Pod, pod_ip: &str) -> std::result::Result<Vec<Mapping>, Invalid> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let bad = |field: String, message: String| Invalid { field, message };
    let mut out = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let f = format!("spec.containers[{i}].ports[{j}]");
            let Some(hp) = p.host_port.filter(|h| *h != 0) else {
                continue;
            };
            let host_port = u16::try_from(hp)
                .ok()
                .filter(|h| *h > 0)
                .ok_or_else(|| bad(format!("{f}.hostPort"), format!("{hp} is not 1-65535")))?;
            let container_port = u16::try_from(p.container_port)
                .ok()
                .filter(|h| *h > 0)
                .ok_or_else(|| {
                    bad(
                        format!("{f}.containerPort"),
                        format!("{} is not 1-65535", p.container_port),
                    )
                })?;
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => 6,
                "UDP" => 17,
                "SCTP" => 132,
                other => {
                    return Err(bad(
                        format!("{f}.protocol"),
                        format!("{other:?} is not TCP, UDP or SCTP"),
                    ))
                }
            };
            let host_ip = match p.host_ip.as_deref().unwrap_or_default() {
                "" | "0.0.0.0" => None,
                s => match s.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(a)) => Some(a),
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(bad(
                            format!("{f}.hostIP"),
                            format!("{s:?} is not an IP address"),
                        ))
                    }
                },
            };
            let Ok(pod_ip) = pod_ip.parse::<Ipv4Addr>() else {
                continue;
            };
            out.push(Mapping {
                host_ip,
                proto,
                host_port,
                pod_ip,
                container_port,
            });
        }
    }
    Ok(out)
}

/// The table.
pub fn table() -> Table {
    Table::new(Family::Ip, TABLE)
}

fn map_of(name: &str, key: &[DataType]) -> Set {
    use DataType::{InetService, Ipv4Addr as A};
    Set::map(name, key, MapData::Value(KeyType(vec![A, InetService])))
}

fn by_address() -> Set {
    use DataType::{InetProto, InetService, Ipv4Addr as A};
    map_of(BY_ADDRESS, &[A, InetProto, InetService])
}

fn any_address() -> Set {
    use DataType::{InetProto, InetService};
    map_of(ANY_ADDRESS, &[InetProto, InetService])
}

fn hairpin() -> Set {
    Set::new(HAIRPIN, &[DataType::Ipv4Addr, DataType::Ipv4Addr])
}

fn hairpin_elem(ip: Ipv4Addr) -> Elem {
    Elem::key(Value::of(&[Field::Ipv4(ip), Field::Ipv4(ip)]))
}

fn r(slot: u8) -> Reg {
    Reg::new(slot)
}

/// `dnat to <key> map @map`, `key` loaded into the first registers.
fn dnat(mut key: Vec<Expr>, map: &str) -> Vec<Expr> {
    key.push(Expr::Lookup {
        set: map.into(),
        sreg: r(0),
        dreg: Some(LookupDest::Data(r(0))),
        invert: false,
    });
    key.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: Family::Ip,
        addr: Some(r(0)),
        port: Some(r(1)),
        fully_random: false,
    });
    key
}

/// The whole table, maps empty: `prerouting` and `output` (dstnat) jump
/// to `hostports`, which DNATs by the exact address first, then any
/// local address but 127.0.0.0/8.
pub fn skeleton(b: &mut Batch) {
    let t = table();
    b.add_table(&t);
    b.add_set(&t, by_address());
    b.add_set(&t, any_address());
    b.add_set(&t, hairpin());
    b.add_chain(&t, Chain::regular(CHAIN));
    b.add_rule(
        &t,
        CHAIN,
        dnat(
            vec![
                Expr::ip_daddr(r(0)),
                Expr::meta(MetaKey::L4Proto, r(1)),
                Expr::th_dport(r(2)),
            ],
            BY_ADDRESS,
        ),
        Some("hostPort with a hostIP"),
    );
    b.add_rule(
        &t,
        CHAIN,
        dnat(
            vec![
                Expr::FibDaddrType { dreg: r(0) },
                Expr::cmp_eq(r(0), &RTN_LOCAL.to_ne_bytes()),
                Expr::ip_daddr(r(0)),
                Expr::Bitwise {
                    sreg: r(0),
                    dreg: r(0),
                    mask: vec![255, 0, 0, 0],
                    xor: vec![0; 4],
                },
                Expr::Cmp {
                    sreg: r(0),
                    op: CmpOp::Neq,
                    data: vec![127, 0, 0, 0],
                },
                Expr::meta(MetaKey::L4Proto, r(0)),
                Expr::th_dport(r(1)),
            ],
            ANY_ADDRESS,
        ),
        Some("hostPort on every node address"),
    );
    for (name, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
        b.add_chain(&t, Chain::base(name, ChainType::Nat, hook, -100));
        b.add_rule(
            &t,
            name,
            vec![Expr::Verdict(Verdict::Jump(CHAIN.into()))],
            None,
        );
    }
    b.add_chain(
        &t,
        Chain::base("postrouting", ChainType::Nat, Hook::Postrouting, 100),
    );
    b.add_rule(
        &t,
        "postrouting",
        vec![
            Expr::Ct {
                key: CtKey::Status,
                dreg: r(0),
            },
            Expr::Bitwise {
                sreg: r(0),
                dreg: r(0),
                mask: ct_status::DNAT.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: r(0),
                op: CmpOp::Neq,
                data: vec![0; 4],
            },
            Expr::ip_saddr(r(0)),
            Expr::ip_daddr(r(1)),
            Expr::lookup(HAIRPIN, r(0)),
            Expr::Masquerade {
                fully_random: false,
            },
        ],
        Some("a pod to its own hostPort"),
    );
}

/// The map and element of one mapping.
fn element(m: &Mapping) -> (Set, Elem) {
    let data = Value::of(&[Field::Ipv4(m.pod_ip), Field::Port(m.container_port)]);
    match m.host_ip {
        Some(ip) => (
            by_address(),
            Elem::map(
                Value::of(&[
                    Field::Ipv4(ip),
                    Field::Proto(m.proto),
                    Field::Port(m.host_port),
                ]),
                data,
            ),
        ),
        None => (
            any_address(),
            Elem::map(
                Value::of(&[Field::Proto(m.proto), Field::Port(m.host_port)]),
                data,
            ),
        ),
    }
}

/// The key a mapping occupies (two pods cannot hold one).
fn slot(m: &Mapping) -> (Option<Ipv4Addr>, u8, u16) {
    (m.host_ip, m.proto, m.host_port)
}

/// The node's host ports: what each pod holds, kept in the kernel.
pub struct HostPorts {
    nft: Arc<dyn NfTables>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The table exists (made or found).
    ready: bool,
    /// Mappings by pod uid.
    pods: BTreeMap<String, Vec<Mapping>>,
}

/// Errors of the kernel side.
pub type Result<T> = std::result::Result<T, hostnet::nftables::Error>;

impl HostPorts {
    pub fn new(nft: Arc<dyn NfTables>) -> HostPorts {
        HostPorts {
            nft,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the table unless it is there (an earlier agent's is kept,
    /// elements and all, so host ports keep answering across a restart).
    fn ensure(&self, inner: &mut Inner) -> Result<()> {
        if inner.ready && self.nft.table(&table())?.is_some() {
            return Ok(());
        }
        if self.nft.table(&table())?.is_none() {
            let mut b = Batch::new();
            skeleton(&mut b);
            self.nft.apply(&b)?;
        }
        inner.ready = true;
        Ok(())
    }

    /// Pod `uid` holds `mappings` now (replacing what it held). A port
    /// another pod holds stays that pod's; it is left out and named in
    /// the returned list.
    pub fn set(&self, uid: &str, mappings: Vec<Mapping>) -> Result<Vec<Mapping>> {
        let mut inner = self.lock();
        let old = inner.pods.get(uid).cloned().unwrap_or_default();
        if old == mappings && (mappings.is_empty() || inner.ready) {
            return Ok(Vec::new());
        }
        let taken: HashSet<_> = inner
            .pods
            .iter()
            .filter(|(u, _)| u.as_str() != uid)
            .flat_map(|(_, ms)| ms.iter().map(slot))
            .collect();
        let (keep, refused): (Vec<_>, Vec<_>) = mappings
            .into_iter()
            .partition(|m| !taken.contains(&slot(m)));
        if keep.is_empty() && old.is_empty() {
            return Ok(refused);
        }
        self.ensure(&mut inner)?;
        let mut b = Batch::new();
        let t = table();
        let ips = |ms: &[Mapping]| ms.iter().map(|m| m.pod_ip).collect::<HashSet<_>>();
        let (old_ips, new_ips) = (ips(&old), ips(&keep));
        for ip in old_ips.difference(&new_ips) {
            b.delete_elements(&t, &hairpin(), vec![hairpin_elem(*ip)]);
        }
        for ip in new_ips.difference(&old_ips) {
            b.add_elements(&t, &hairpin(), vec![hairpin_elem(*ip)]);
        }
        for m in old.iter().filter(|m| !keep.contains(m)) {
            let (set, e) = element(m);
            b.delete_elements(&t, &set, vec![e]);
        }
        // The kernel may hold a key from before a restart with other data:
        // replace what this pod's keys map to.
        for m in keep.iter().filter(|m| !old.contains(m)) {
            let (set, e) = element(m);
            if let Some(stale) = self.current(&set, &e)? {
                b.delete_elements(&t, &set, vec![stale]);
            }
            b.add_elements(&t, &set, vec![e]);
        }
        tracing::debug!(
            uid,
            held = keep.len(),
            released = old.len(),
            ops = b.ops().len(),
            "hostPorts"
        );
        if !b.is_empty() {
            self.nft.apply(&b)?;
        }
        if keep.is_empty() {
            inner.pods.remove(uid);
        } else {
            inner.pods.insert(uid.to_string(), keep);
        }
        Ok(refused)
    }

    /// The kernel's element with `e`'s key when its data differs.
    fn current(&self, set: &Set, e: &Elem) -> Result<Option<Elem>> {
        Ok(self
            .nft
            .elements(&table(), &set.name)?
            .into_iter()
            .find(|x| x.key == e.key && x.data != e.data))
    }

    /// Pod `uid` (last at `ip`) is gone: its host ports are released,
    /// also those it held before an agent restart and has not re-claimed
    /// (deleted before its worker got that far): the kernel's elements
    /// leading to `ip`.
    pub fn remove(&self, uid: &str, ip: Option<Ipv4Addr>) -> Result<()> {
        self.set(uid, Vec::new())?;
        let Some(ip) = ip else {
            return Ok(());
        };
        // Another pod at this address now (the IP was reused) keeps it.
        let reused = self.lock().pods.values().flatten().any(|m| m.pod_ip == ip);
        if reused || self.nft.table(&table())?.is_none() {
            return Ok(());
        }
        self.delete_where(|data_ip, _| data_ip == Some(ip))
            .map(drop)
    }

    /// Deletes the kernel's elements for which `doomed(data address,
    /// claimed by a pod)` holds; returns how many.
    fn delete_where(&self, doomed: impl Fn(Option<Ipv4Addr>, bool) -> bool) -> Result<usize> {
        let pods: Vec<Mapping> = self.lock().pods.values().flatten().copied().collect();
        let mut mine: Vec<(Set, Elem)> = pods.iter().map(element).collect();
        mine.extend(pods.iter().map(|m| (hairpin(), hairpin_elem(m.pod_ip))));
        let first_ip = |v: &Value| {
            v.0.get(..4)
                .and_then(|o| <[u8; 4]>::try_from(o).ok())
                .map(Ipv4Addr::from)
        };
        let mut b = Batch::new();
        let mut n = 0;
        for set in [by_address(), any_address(), hairpin()] {
            for e in self.nft.elements(&table(), &set.name)? {
                let claimed = mine
                    .iter()
                    .any(|(s, m)| s.name == set.name && m.key == e.key);
                let ip = match &e.data {
                    Some(ElemData::Value(v)) => first_ip(v),
                    // The hairpin set's key is (pod, pod).
                    _ if set.name == HAIRPIN => first_ip(&e.key),
                    _ => None,
                };
                if doomed(ip, claimed) {
                    b.delete_elements(&table(), &set, vec![e]);
                    n += 1;
                }
            }
        }
        if !b.is_empty() {
            self.nft.apply(&b)?;
        }
        Ok(n)
    }

    /// After a restart, once every live pod has its worker: removes the
    /// kernel's elements that lead to none of `live_ips` (pods deleted
    /// while the agent was down) and that no pod claimed.
    pub fn sweep(&self, live_ips: &HashSet<Ipv4Addr>) -> Result<usize> {
        if self.nft.table(&table())?.is_none() {
            return Ok(0);
        }
        self.delete_where(|ip, claimed| !claimed && !ip.is_some_and(|ip| live_ips.contains(&ip)))
    }
}

#[cfg(test)]
mod tests {
    use hostnet::nftables::{Op, RecordingNfTables};
    use serde_json::json;

    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": containers}}))
        .unwrap()
    }

    fn m(host_ip: Option<[u8; 4]>, proto: u8, hp: u16, ip: [u8; 4], cp: u16) -> Mapping {
        Mapping {
            host_ip: host_ip.map(Ipv4Addr::from),
            proto,
            host_port: hp,
            pod_ip: Ipv4Addr::from(ip),
            container_port: cp,
        }
    }

    #[test]
    fn mappings_follow_the_containers_ports() {
        let p = pod(json!([
            {"name": "a", "image": "b", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.10"},
                {"containerPort": 9090},
                {"containerPort": 81, "hostPort": 8081, "hostIP": "::1"},
            ]},
            {"name": "c", "image": "b", "ports": [{"containerPort": 70, "hostPort": 7070, "hostIP": "0.0.0.0"}]},
        ]));
        assert_eq!(
            mappings(&p, "10.244.0.5").unwrap(),
            [
                m(None, 6, 8080, [10, 244, 0, 5], 80),
                m(Some([192, 0, 2, 10]), 17, 5353, [10, 244, 0, 5], 53),
                m(None, 6, 7070, [10, 244, 0, 5], 70),
            ]
        );
        assert!(mappings(&p, "fd00::5").unwrap().is_empty());
        let e = mappings(
            &pod(json!([{"name": "a", "image": "b", "ports": [
                {"containerPort": 80, "hostPort": 70000}]}])),
            "10.244.0.5",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.containers[0].ports[0].hostPort: 70000 is not 1-65535"
        );
        let e = mappings(
            &pod(json!([{"name": "a", "image": "b", "ports": [
                {"containerPort": 80, "hostPort": 80, "hostIP": "nope"}]}])),
            "10.244.0.5",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.containers[0].ports[0].hostIP");
    }

    fn elements(nft: &RecordingNfTables, set: &str) -> Vec<Elem> {
        nft.elements(&table(), set).unwrap()
    }

    #[test]
    fn pods_add_and_release_their_elements() {
        let nft = Arc::new(RecordingNfTables::new());
        let h = HostPorts::new(nft.clone());
        let web = m(None, 6, 8080, [10, 244, 0, 5], 80);
        let dns = m(Some([192, 0, 2, 10]), 17, 53, [10, 244, 0, 5], 53);
        assert!(h.set("u1", vec![web, dns]).unwrap().is_empty());
        assert_eq!(elements(&nft, ANY_ADDRESS), vec![element(&web).1]);
        assert_eq!(elements(&nft, BY_ADDRESS), vec![element(&dns).1]);
        let rules = nft.batches()[0]
            .ops()
            .iter()
            .filter(|o| matches!(o, Op::AddRule { .. }))
            .count();
        assert_eq!(
            rules, 5,
            "two DNAT rules, two jumps, the hairpin masquerade"
        );
        assert_eq!(
            elements(&nft, HAIRPIN),
            vec![hairpin_elem(Ipv4Addr::new(10, 244, 0, 5))]
        );
        // A second pod wanting the same port does not get it.
        let clash = m(None, 6, 8080, [10, 244, 0, 6], 80);
        assert_eq!(h.set("u2", vec![clash]).unwrap(), vec![clash]);
        assert_eq!(elements(&nft, ANY_ADDRESS), vec![element(&web).1]);
        // Only elements change after the first batch.
        h.remove("u1", None).unwrap();
        assert!(elements(&nft, ANY_ADDRESS).is_empty() && elements(&nft, BY_ADDRESS).is_empty());
        assert!(elements(&nft, HAIRPIN).is_empty());
        assert!(nft.batches()[1..].iter().all(|b| b.only_elements()));
        // Now it is free.
        assert!(h.set("u2", vec![clash]).unwrap().is_empty());
        assert_eq!(elements(&nft, ANY_ADDRESS), vec![element(&clash).1]);
    }

    #[test]
    fn a_restarted_agent_keeps_live_ports_and_sweeps_the_rest() {
        let nft = Arc::new(RecordingNfTables::new());
        let live = m(None, 6, 8080, [10, 244, 0, 5], 80);
        let gone = m(None, 6, 9090, [10, 244, 0, 9], 90);
        let before = HostPorts::new(nft.clone());
        before.set("u1", vec![live]).unwrap();
        before.set("u2", vec![gone]).unwrap();
        drop(before);
        let after = HostPorts::new(nft.clone());
        // The pod is adopted with the same mapping: nothing to change, and
        // the table is not rebuilt.
        after.set("u1", vec![live]).unwrap();
        assert_eq!(elements(&nft, ANY_ADDRESS).len(), 2);
        let ips = HashSet::from([Ipv4Addr::new(10, 244, 0, 5)]);
        assert_eq!(
            after.sweep(&ips).unwrap(),
            2,
            "the gone pod's port and hairpin"
        );
        assert_eq!(
            elements(&nft, HAIRPIN),
            vec![hairpin_elem(Ipv4Addr::new(10, 244, 0, 5))]
        );
        assert_eq!(elements(&nft, ANY_ADDRESS), vec![element(&live).1]);
        // A key held from before with other data is replaced, not refused.
        let moved = m(None, 6, 8080, [10, 244, 0, 7], 80);
        let fresh = HostPorts::new(nft.clone());
        fresh.set("u3", vec![moved]).unwrap();
        assert_eq!(elements(&nft, ANY_ADDRESS), vec![element(&moved).1]);
        // Deleted before it was re-claimed: released by its address.
        let again = HostPorts::new(nft.clone());
        again
            .remove("u3", Some(Ipv4Addr::new(10, 244, 0, 7)))
            .unwrap();
        assert!(elements(&nft, ANY_ADDRESS).is_empty());
        assert!(!elements(&nft, HAIRPIN).contains(&hairpin_elem(Ipv4Addr::new(10, 244, 0, 7))));
    }
}
