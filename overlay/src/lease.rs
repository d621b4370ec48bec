//! Subnet leases: acquiring one (this node's own lease by public IP, else
//! the subnet from the last run's subnet file, else a random free one),
//! renewing it, and noticing when it was lost. Two nodes never hold one
//! subnet because a lease is created only if its name (the subnet) is
//! free, and changed only at the revision it was read at.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use controlplane::objects::{Kind, Object, SubnetLease, SubnetLeaseSpec};
use controlplane::{ControlPlane, ObjectRef, Scope};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::config::NetConf;
use crate::{Error, Result};

/// The label naming the node that holds a lease.
pub const NODE_LABEL: &str = "knode.io/node";
/// How many times a lost race (a subnet taken meanwhile) is retried.
const ACQUIRE_TRIES: usize = 50;

/// What a node writes into its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub node: String,
    pub public_ip: IpAddr,
    pub backend_type: String,
    pub backend_data: Value,
    /// The node's IPv6 underlay address (dual-stack with an IPv6 underlay).
    pub public_ipv6: Option<IpAddr>,
    /// BackendV6Data: the IPv6 path's specifics (its VTEP MAC).
    pub backend_v6_data: Option<Value>,
}

/// The outcome of a renewal.
#[derive(Debug, Clone, PartialEq)]
pub enum Renewal {
    Renewed(Box<SubnetLease>),
    /// The lease is gone or held by someone else now.
    Lost(String),
}

/// Leases in one control plane, with one TTL.
#[derive(Clone)]
pub struct Leases {
    cp: Arc<dyn ControlPlane>,
    ttl: Duration,
}

impl Leases {
    pub fn new(cp: Arc<dyn ControlPlane>, ttl: Duration) -> Leases {
        Leases { cp, ttl }
    }

    /// Every lease, with the revision to watch from.
    pub async fn list(&self) -> Result<(Vec<SubnetLease>, u64)> {
        let list = self.cp.list(&Scope::all(Kind::SubnetLease)).await?;
        let leases = list
            .items
            .into_iter()
            .filter_map(|o| match o {
                Object::SubnetLease(l) => Some(*l),
                _ => None,
            })
            .collect();
        Ok((leases, list.revision))
    }

    /// Acquires a lease for `me`: its own (same public IP), else
    /// `previous` if still free, else a random free subnet.
    pub async fn acquire(
        &self,
        conf: &NetConf,
        me: &LeaseAttrs,
        previous: Option<Ipv4Net>,
    ) -> Result<SubnetLease> {
        for _ in 0..ACQUIRE_TRIES {
            let (leases, _) = self.list().await?;
            if let Some(own) = leases.iter().find(|l| l.spec.public_ip == me.public_ip) {
                if let (true, IpNet::V4(s)) = (conf.is_leasable(&own.spec.subnet), own.spec.subnet)
                {
                    match self.write(own, me, conf.subnet6_for(s)).await {
                        Ok(l) => return Ok(l),
                        Err(Error::ControlPlane(e)) if e.is_conflict() || e.is_not_found() => {
                            continue
                        }
                        Err(e) => return Err(e),
                    }
                }
                // Left over from another network config: give it back.
                tracing::info!(subnet = %own.spec.subnet, "releasing a lease outside the network config");
                match self.release(own).await {
                    Ok(()) => {}
                    Err(Error::ControlPlane(e)) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            let taken: BTreeSet<Ipv4Net> =
                leases.iter().filter_map(|l| v4(&l.spec.subnet)).collect();
            let wanted = previous
                .filter(|p| conf.is_leasable(&IpNet::V4(*p)) && !taken.contains(p))
                .or_else(|| choose_free(conf, &taken, random_u64()));
            let Some(subnet) = wanted else {
                return Err(Error::Lease(format!(
                    "acquire a subnet of {}: all {} /{} subnets are leased",
                    conf.network,
                    conf.capacity(),
                    conf.subnet_len
                )));
            };
            match self.create(subnet, conf.subnet6_for(subnet), me).await {
                Ok(l) => return Ok(l),
                Err(Error::ControlPlane(controlplane::Error::AlreadyExists { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Lease(format!(
            "acquire a subnet of {}: lost the race {ACQUIRE_TRIES} times to other nodes",
            conf.network
        )))
    }

    /// Renews `lease` (TTL restarted), unless it was lost.
    pub async fn renew(&self, lease: &SubnetLease, me: &LeaseAttrs) -> Result<Renewal> {
        let what = ObjectRef::new(
            Kind::SubnetLease,
            "",
            &SubnetLease::name_for(&lease.spec.subnet),
        );
        for _ in 0..3 {
            let current = match self.cp.get(&what).await {
                Ok(Object::SubnetLease(l)) => l,
                Ok(_) => return Err(Error::Lease(format!("{what} is not a SubnetLease"))),
                Err(e) if e.is_not_found() => {
                    return Ok(Renewal::Lost(format!(
                        "lease {} expired or was deleted",
                        lease.spec.subnet
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            if current.spec.public_ip != me.public_ip {
                return Ok(Renewal::Lost(format!(
                    "lease {} is now held by {}",
                    lease.spec.subnet, current.spec.public_ip
                )));
            }
            let subnet6 = current.spec.ipv6_subnet.and_then(|n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            });
            match self.write(&current, me, subnet6).await {
                Ok(l) => return Ok(Renewal::Renewed(Box::new(l))),
                Err(Error::ControlPlane(e)) if e.is_conflict() => continue,
                Err(Error::ControlPlane(e)) if e.is_not_found() => {
                    return Ok(Renewal::Lost(format!(
                        "lease {} expired while being renewed",
                        lease.spec.subnet
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Lease(format!(
            "renew lease {}: it kept changing underneath",
            lease.spec.subnet
        )))
    }

    async fn create(
        &self,
        subnet: Ipv4Net,
        subnet6: Option<Ipv6Net>,
        me: &LeaseAttrs,
    ) -> Result<SubnetLease> {
        let subnet = IpNet::V4(subnet);
        let lease = SubnetLease {
            metadata: ObjectMeta {
                name: Some(SubnetLease::name_for(&subnet)),
                labels: Some(BTreeMap::from([(NODE_LABEL.to_string(), me.node.clone())])),
                ..Default::default()
            },
            spec: spec(subnet, subnet6, me),
        };
        let created = self.cp.create(Object::from(lease), Some(self.ttl)).await?;
        into_lease(created)
    }

    /// Rewrites `current` with `me`'s attributes and IPv6 subnet at its
    /// revision (TTL renewed).
    async fn write(
        &self,
        current: &SubnetLease,
        me: &LeaseAttrs,
        subnet6: Option<Ipv6Net>,
    ) -> Result<SubnetLease> {
        let mut next = current.clone();
        next.spec = spec(current.spec.subnet, subnet6, me);
        next.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(NODE_LABEL.to_string(), me.node.clone());
        let updated = self.cp.update(Object::from(next), Some(self.ttl)).await?;
        into_lease(updated)
    }

    async fn release(&self, lease: &SubnetLease) -> Result<()> {
        let rev = lease
            .metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok());
        let what = ObjectRef::new(
            Kind::SubnetLease,
            "",
            &SubnetLease::name_for(&lease.spec.subnet),
        );
        self.cp.delete(&what, rev).await?;
        Ok(())
    }
}

fn spec(subnet: IpNet, subnet6: Option<Ipv6Net>, me: &LeaseAttrs) -> SubnetLeaseSpec {
    SubnetLeaseSpec {
        subnet,
        public_ip: me.public_ip,
        backend_type: me.backend_type.clone(),
        backend_data: me.backend_data.clone(),
        // IPv6 attributes only on a dual-stack lease: a single-stack one
        // stays exactly what it was.
        ipv6_subnet: subnet6.map(IpNet::V6),
        public_ipv6: subnet6.and(me.public_ipv6),
        backend_v6_data: subnet6.and(me.backend_v6_data.clone()),
    }
}

fn into_lease(o: Object) -> Result<SubnetLease> {
    match o {
        Object::SubnetLease(l) => Ok(*l),
        other => Err(Error::Lease(format!(
            "the control plane returned a {} for a SubnetLease",
            other.kind()
        ))),
    }
}

fn v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

/// A free subnet, starting the search at a position drawn from `seed` so
/// that nodes starting together rarely try the same one.
pub fn choose_free(conf: &NetConf, taken: &BTreeSet<Ipv4Net>, seed: u64) -> Option<Ipv4Net> {
    let n = conf.capacity();
    if taken.len() as u64 >= u64::from(n) && taken.iter().all(|t| conf.is_leasable(&IpNet::V4(*t)))
    {
        return None;
    }
    let start = (seed % u64::from(n)) as u32;
    (0..n)
        .map(|i| conf.subnet_at((start + i) % n))
        .find(|s| !taken.contains(s))
}

/// 64 random bits from the process's hasher seed and the clock (enough to
/// spread subnet picks; nothing here is secret).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json).unwrap()
    }

    #[test]
    fn picks_a_free_subnet_from_anywhere() {
        let c = conf(r#"{"Network": "10.1.0.0/22", "SubnetLen": 24}"#);
        let taken: BTreeSet<Ipv4Net> = ["10.1.1.0/24", "10.1.2.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for seed in 0..10 {
            assert_eq!(
                choose_free(&c, &taken, seed),
                Some("10.1.3.0/24".parse().unwrap())
            );
        }
        let all: BTreeSet<Ipv4Net> = (0..c.capacity()).map(|i| c.subnet_at(i)).collect();
        assert_eq!(choose_free(&c, &all, 7), None);
    }

    /// An embedded control plane in a fresh temp dir (removed on drop).
    struct Cp(Arc<dyn ControlPlane>, std::path::PathBuf);

    impl Drop for Cp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    async fn embedded(tag: &str) -> Cp {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "knode-lease-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let alloc =
            controlplane::registry::Allocators::parse("10.96.0.0/12", "30000-32767").unwrap();
        let cp =
            controlplane::backend::open(&controlplane::backend::Backend::Embedded, &dir, alloc)
                .await
                .unwrap();
        Cp(cp, dir)
    }

    fn me(n: u8) -> LeaseAttrs {
        LeaseAttrs {
            node: format!("node-{n}"),
            public_ip: IpAddr::from([198, 18, 0, n]),
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}),
            public_ipv6: None,
            backend_v6_data: None,
        }
    }

    #[tokio::test]
    async fn dual_stack_leases_carry_the_paired_ipv6_subnet_and_single_stack_ones_do_not() {
        let cp = embedded("dual").await;
        let dual = conf(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#,
        );
        let leases = Leases::new(cp.0.clone(), Duration::from_secs(60));
        let mut attrs = me(1);
        attrs.public_ipv6 = Some("fd00:198:18::11".parse().unwrap());
        attrs.backend_v6_data = Some(serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:06"}));
        let l = leases
            .acquire(&dual, &attrs, Some("10.244.7.0/24".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(
            l.spec.ipv6_subnet,
            Some("fd00:10:244:7::/64".parse().unwrap())
        );
        let json = serde_json::to_value(&l.spec).unwrap();
        assert_eq!(json["IPv6Subnet"], "fd00:10:244:7::/64");
        assert_eq!(json["PublicIPv6"], "fd00:198:18::11");
        assert_eq!(json["BackendV6Data"]["VtepMAC"], "02:00:00:00:00:06");
        let Renewal::Renewed(r) = leases.renew(&l, &attrs).await.unwrap() else {
            panic!("not renewed")
        };
        assert_eq!(r.spec.ipv6_subnet, l.spec.ipv6_subnet);
        // A single-stack lease has none of the IPv6 fields.
        let single = conf(r#"{"Network": "10.244.0.0/16"}"#);
        let s = leases.acquire(&single, &me(2), None).await.unwrap();
        let json = serde_json::to_value(&s.spec).unwrap();
        for k in ["IPv6Subnet", "PublicIPv6", "BackendV6Data"] {
            assert!(json.get(k).is_none(), "{k} in {json}");
        }
        // The node's own lease turns dual-stack when the network does.
        let again = leases.acquire(&dual, &me(2), None).await.unwrap();
        assert_eq!(again.spec.subnet, s.spec.subnet);
        assert!(again.spec.ipv6_subnet.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acquires_never_share_and_a_full_network_says_so() {
        let cp = embedded("race").await;
        let conf = conf(r#"{"Network": "10.9.0.0/19", "SubnetLen": 24, "SubnetMin": "10.9.0.0"}"#);
        assert_eq!(conf.capacity(), 32);
        let leases = Leases::new(cp.0.clone(), Duration::from_secs(60));
        let tasks: Vec<_> = (1..=32u8)
            .map(|n| {
                let l = leases.clone();
                tokio::spawn(async move { l.acquire(&conf, &me(n), None).await })
            })
            .collect();
        let mut got = BTreeSet::new();
        for t in tasks {
            let l = t.await.unwrap().unwrap();
            assert!(
                got.insert(l.spec.subnet),
                "{} handed out twice",
                l.spec.subnet
            );
        }
        let e = leases.acquire(&conf, &me(33), None).await.unwrap_err();
        assert!(
            e.to_string().contains("all 32 /24 subnets are leased"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn own_lease_then_previous_subnet_then_any() {
        let cp = embedded("order").await;
        let conf = conf(r#"{"Network": "10.244.0.0/16"}"#);
        let leases = Leases::new(cp.0.clone(), Duration::from_secs(60));
        let wanted: Ipv4Net = "10.244.77.0/24".parse().unwrap();
        let a = leases.acquire(&conf, &me(1), Some(wanted)).await.unwrap();
        assert_eq!(a.spec.subnet, IpNet::V4(wanted));
        // The same node (same public IP) gets its own lease back, whatever
        // its subnet file says; the VTEP MAC it reports is updated.
        let mut again = me(1);
        again.backend_data = serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:09"});
        let b = leases
            .acquire(&conf, &again, Some("10.244.5.0/24".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(b.spec.subnet, a.spec.subnet);
        assert_eq!(b.spec.backend_data["VtepMAC"], "02:00:00:00:00:09");
        // Another node asking for a taken subnet gets another one.
        let c = leases.acquire(&conf, &me(2), Some(wanted)).await.unwrap();
        assert_ne!(c.spec.subnet, a.spec.subnet);
        assert!(conf.is_leasable(&c.spec.subnet));
    }

    #[tokio::test]
    async fn renewal_notices_a_deleted_or_stolen_lease() {
        let cp = embedded("renew").await;
        let conf = conf(r#"{"Network": "10.244.0.0/16"}"#);
        let leases = Leases::new(cp.0.clone(), Duration::from_secs(60));
        let a = leases.acquire(&conf, &me(1), None).await.unwrap();
        assert!(matches!(
            leases.renew(&a, &me(1)).await.unwrap(),
            Renewal::Renewed(_)
        ));
        let what = ObjectRef::new(Kind::SubnetLease, "", a.metadata.name.as_deref().unwrap());
        cp.0.delete(&what, None).await.unwrap();
        let Renewal::Lost(why) = leases.renew(&a, &me(1)).await.unwrap() else {
            panic!("a deleted lease was renewed")
        };
        assert!(why.contains("expired or was deleted"), "{why}");
        // Someone else takes the subnet meanwhile.
        let prev = match a.spec.subnet {
            IpNet::V4(n) => n,
            IpNet::V6(_) => unreachable!(),
        };
        leases.acquire(&conf, &me(2), Some(prev)).await.unwrap();
        let Renewal::Lost(why) = leases.renew(&a, &me(1)).await.unwrap() else {
            panic!("a stolen lease was renewed")
        };
        assert!(why.contains("now held by 198.18.0.2"), "{why}");
        // Reacquiring prefers the old subnet but cannot have it.
        let b = leases.acquire(&conf, &me(1), Some(prev)).await.unwrap();
        assert_ne!(b.spec.subnet, a.spec.subnet);
    }

    #[test]
    fn different_seeds_spread() {
        let c = conf(r#"{"Network": "10.244.0.0/16"}"#);
        let picks: BTreeSet<Ipv4Net> = (0..50u64)
            .filter_map(|s| {
                choose_free(&c, &BTreeSet::new(), s.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            })
            .collect();
        assert!(picks.len() > 40, "{picks:?}");
    }
}
