//! The API server's duties over raw [`Storage`]: defaulting, validation,
//! uid/creationTimestamp/resourceVersion, ClusterIP and NodePort claims,
//! status-only writes, namespace checks and cascade, TTLs. Both the
//! embedded and the etcd backends are a `Registry` over their storage, so
//! they behave the same by construction.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::alloc::{AllocError, IpAllocator, PortAllocator};
use crate::api::{
    revision_of, ControlPlane, DeleteOptions, Error, Expiry, ObjectList, ObjectRef, Result, Scope,
    Watch, WatchEvent,
};
use crate::defaults::{self, DEFAULT_NAMESPACE};
use crate::objects::{Kind, Object};
use crate::storage::dry_run::DryRun;
use crate::storage::{Precondition, RawEvent, Storage, Stored, Write, WriteError};
use crate::validate;

const CLAIM_IP: &str = "claims/clusterip/";
const CLAIM_PORT: &str = "claims/nodeport/";
/// How often an automatic pick is retried when another writer took the
/// same value between our read and our write.
const ALLOC_TRIES: usize = 16;

/// Where cluster add-ons live.
pub const SYSTEM_NAMESPACE: &str = "kube-system";
/// The cluster DNS Service's name, in [`SYSTEM_NAMESPACE`].
pub const KUBE_DNS: &str = "kube-dns";

fn namespace_json(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The API server's Service, in [`DEFAULT_NAMESPACE`].
pub const KUBERNETES: &str = "kubernetes";

/// `default/kubernetes` as kube-apiserver keeps it: the first address of
/// the service CIDR, 443/TCP `https`, no selector (its EndpointSlice lists
/// the agents that serve the API).
fn kubernetes_json(ip: IpAddr) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": KUBERNETES, "namespace": DEFAULT_NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"}
        },
        "spec": {
            "clusterIP": ip.to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
        }
    })
}

/// `kube-system/kube-dns` as kubeadm's CoreDNS add-on names it.
fn kube_dns_json(ip: IpAddr) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": KUBE_DNS, "namespace": SYSTEM_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KNodeDNS"}
        },
        "spec": {
            "clusterIP": ip.to_string(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}
            ]
        }
    })
}

/// The storage key of one object.
pub fn key_of(what: &ObjectRef) -> String {
    if what.kind.namespaced() {
        format!("{}/{}/{}", what.kind.plural(), what.namespace, what.name)
    } else {
        format!("{}/{}", what.kind.plural(), what.name)
    }
}

/// The storage prefix of a scope (ends with `/`).
pub fn prefix_of(scope: &Scope) -> String {
    match &scope.namespace {
        Some(ns) if scope.kind.namespaced() => format!("{}/{}/", scope.kind.plural(), ns),
        _ => format!("{}/", scope.kind.plural()),
    }
}

/// Decodes a stored value, setting `resourceVersion` from its revision.
pub fn decode(stored: &Stored) -> Result<Object> {
    decode_at(stored, stored.revision)
}

fn decode_at(stored: &Stored, revision: u64) -> Result<Object> {
    let v: Value = serde_json::from_slice(&stored.value)
        .map_err(|e| Error::Internal(format!("stored {}: not JSON: {e}", stored.key)))?;
    let mut obj = Object::from_value(v)
        .map_err(|e| Error::Internal(format!("stored {}: {e}", stored.key)))?;
    obj.meta_mut().resource_version = Some(revision.to_string());
    Ok(obj)
}

/// Encodes an object for storage (without `resourceVersion`, which the
/// storage's revision supplies on read).
pub fn encode(obj: &Object) -> Vec<u8> {
    let mut obj = obj.clone();
    obj.meta_mut().resource_version = None;
    serde_json::to_vec(&obj.to_value()).unwrap_or_default()
}

/// Where Services get their ClusterIPs and NodePorts.
#[derive(Debug, Clone)]
pub struct Allocators {
    /// The primary service range: a Service's first family by default.
    pub service_ips: IpAllocator,
    /// The secondary range of a dual-stack cluster (the other family).
    pub secondary_service_ips: Option<IpAllocator>,
    pub node_ports: PortAllocator,
    /// The cluster DNS address (`cluster-dns`), when it lies in a
    /// service range: the ClusterIP of `kube-system/kube-dns`, which
    /// [`Registry::bootstrap`] keeps, and never an automatic pick.
    pub dns_service_ip: Option<IpAddr>,
}

impl Allocators {
    /// From the `service-cidr` (kube-apiserver's
    /// `--service-cluster-ip-range`: one CIDR, or an IPv4 and an IPv6 one
    /// separated by a comma, the first being the primary family) and
    /// `service-node-port-range` settings.
    pub fn parse(service_cidr: &str, node_port_range: &str) -> Result<Allocators> {
        let bad = |why: String| Error::BadRequest(format!("service-cidr {service_cidr:?}: {why}"));
        let mut ranges = Vec::new();
        for part in service_cidr.split(',') {
            let cidr: ipnet::IpNet = part
                .trim()
                .parse()
                .map_err(|e| bad(format!("{part:?}: {e}")))?;
            ranges.push(IpAllocator::new(cidr).map_err(|e| bad(e.to_string()))?);
        }
        if ranges.len() > 2 {
            return Err(bad("at most two CIDRs (one IPv4, one IPv6)".into()));
        }
        let secondary_service_ips = ranges.get(1).cloned();
        if let Some(second) = &secondary_service_ips {
            if second.cidr().addr().is_ipv6() == ranges[0].cidr().addr().is_ipv6() {
                return Err(bad(
                    "a dual-stack range needs one IPv4 and one IPv6 CIDR, not two of one family"
                        .into(),
                ));
            }
        }
        let node_ports = PortAllocator::parse(node_port_range)
            .map_err(|e| Error::BadRequest(format!("service-node-port-range: {e}")))?;
        Ok(Allocators {
            service_ips: ranges.swap_remove(0),
            secondary_service_ips,
            node_ports,
            dns_service_ip: None,
        })
    }

    /// The same allocators keeping `ip` for `kube-system/kube-dns`. An
    /// address outside the service ranges is refused (the caller says so).
    pub fn with_dns_service_ip(mut self, ip: IpAddr) -> Result<Allocators> {
        if self.range(IpFamily::of(ip)).is_none_or(|r| !r.contains(ip)) {
            return Err(Error::BadRequest(format!(
                "cluster-dns {ip} is outside the service CIDR {}",
                self.cidrs()
            )));
        }
        self.dns_service_ip = Some(ip);
        Ok(self)
    }

    /// The families of the service ranges, primary first.
    pub fn families(&self) -> Vec<IpFamily> {
        std::iter::once(&self.service_ips)
            .chain(&self.secondary_service_ips)
            .map(|r| IpFamily::of(r.cidr().addr()))
            .collect()
    }

    /// The range of `family`, if the cluster has one.
    pub fn range(&self, family: IpFamily) -> Option<&IpAllocator> {
        std::iter::once(&self.service_ips)
            .chain(&self.secondary_service_ips)
            .find(|r| IpFamily::of(r.cidr().addr()) == family)
    }

    /// The ranges as configured: `10.96.0.0/12` or `10.96.0.0/12,fd00:10:96::/108`.
    pub fn cidrs(&self) -> String {
        std::iter::once(&self.service_ips)
            .chain(&self.secondary_service_ips)
            .map(|r| r.cidr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for Allocators {
    fn default() -> Self {
        Allocators {
            // 10.96.0.0/12 is a valid, large range: new() cannot fail.
            service_ips: IpAllocator::new("10.96.0.0/12".parse().expect("literal CIDR"))
                .expect("default service CIDR"),
            secondary_service_ips: None,
            node_ports: PortAllocator::default(),
            dns_service_ip: None,
        }
    }
}

/// A control plane over raw storage.
pub struct Registry {
    storage: Arc<dyn Storage>,
    alloc: Allocators,
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, alloc: Allocators) -> Registry {
        Registry { storage, alloc }
    }

    /// Creates the `default` and `kube-system` namespaces, the
    /// `default/kubernetes` Service (the range's first address, which only
    /// it may hold) and, with a
    /// [`Allocators::dns_service_ip`], the `kube-system/kube-dns` Service
    /// (that ClusterIP, ports 53/UDP `dns` and 53/TCP `dns-tcp`, no
    /// selector: every node's agent answers on it) if they are missing.
    /// Every backend calls this once at start; it is idempotent across
    /// nodes and leaves an existing object as its owner edited it.
    pub async fn bootstrap(&self) -> Result<()> {
        let mut objects = vec![
            namespace_json(DEFAULT_NAMESPACE),
            namespace_json(SYSTEM_NAMESPACE),
            kubernetes_json(self.alloc.service_ips.kubernetes_service_ip()),
        ];
        if let Some(ip) = self.alloc.dns_service_ip {
            objects.push(kube_dns_json(ip));
        }
        for value in objects {
            let obj = Object::from_value(value).map_err(|e| Error::Internal(e.to_string()))?;
            let what = ObjectRef::of(&obj);
            if self.get(&what).await.is_ok() {
                continue;
            }
            if let Err(e) = self.create(obj, None).await {
                // Another node may have made it between the read and the write.
                if self.get(&what).await.is_ok() {
                    continue;
                }
                if what.kind != Kind::Service {
                    return Err(e);
                }
                // Its address taken by a user's Service: report, not fatal.
                tracing::warn!(error = %e, service = %what.name, "cannot keep a system Service");
            }
        }
        Ok(())
    }

    async fn stored(&self, what: &ObjectRef) -> Result<(Stored, Object)> {
        let stored = self
            .storage
            .get(&key_of(what))
            .await?
            .ok_or_else(|| not_found(what))?;
        let obj = decode(&stored)?;
        Ok((stored, obj))
    }

    async fn require_namespace(&self, obj: &Object) -> Result<()> {
        if !obj.kind().namespaced() {
            return Ok(());
        }
        let ns = ObjectRef::new(Kind::Namespace, "", obj.namespace());
        match self.storage.get(&key_of(&ns)).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                kind: Kind::Namespace,
                name: obj.namespace().to_string(),
            }),
        }
    }

    /// The claims in use under `prefix`, parsed.
    async fn used<T: std::str::FromStr + Ord>(&self, prefix: &str) -> Result<BTreeSet<T>> {
        let (claims, _) = self.storage.list(prefix).await?;
        Ok(claims
            .iter()
            .filter_map(|c| c.key.strip_prefix(prefix)?.parse().ok())
            .collect())
    }

    /// Fills a Service's ClusterIP and NodePorts (keeping what `old`, the
    /// stored version, had) and returns the claims the write must take.
    async fn assign(&self, svc: &mut Service, old: Option<&Service>) -> Result<Vec<String>> {
        let name = describe_svc(svc);
        let Some(spec) = svc.spec.as_mut() else {
            return Ok(Vec::new());
        };
        let old_spec = old.and_then(|o| o.spec.as_ref());
        let ty = spec.type_.clone().unwrap_or_default();
        let mut claims = Vec::new();

        if ty == "ExternalName" {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
            spec.ip_families = None;
            spec.ip_family_policy = None;
        } else {
            claims = self.assign_ips(&name, spec, old_spec).await?;
        }

        let Some(spec) = svc.spec.as_mut() else {
            return Ok(claims);
        };
        let wants_ports = ty == "NodePort" || ty == "LoadBalancer";
        let old_ports: HashMap<(i32, String), i32> = old_spec
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| Some(((p.port, p.protocol.clone()?), p.node_port?)))
            .collect();
        let old_held: BTreeSet<i32> = old_ports.values().copied().collect();
        let mut used: Option<BTreeSet<u16>> = None;
        let mut taken_here: BTreeSet<u16> = BTreeSet::new();
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            if !wants_ports {
                port.node_port = None;
                continue;
            }
            if port.node_port.is_none() {
                let key = (port.port, port.protocol.clone().unwrap_or_default());
                port.node_port = old_ports.get(&key).copied();
            }
            let field = format!("spec.ports[{i}].nodePort");
            let requested = match port.node_port {
                None => None,
                Some(p) => Some(u16::try_from(p).map_err(|_| {
                    Error::invalid(
                        name.clone(),
                        &field,
                        format!("Invalid value: {p}: must be between 1 and 65535"),
                    )
                })?),
            };
            if let Some(p) = requested {
                if old_held.contains(&i32::from(p)) || taken_here.contains(&p) {
                    continue;
                }
            }
            let in_use = match &mut used {
                Some(u) => u,
                None => used.insert(self.used::<u16>(CLAIM_PORT).await?),
            };
            let chosen = self
                .alloc
                .node_ports
                .allocate(in_use, requested)
                .map_err(|e| alloc_invalid(&name, &field, &e))?;
            in_use.insert(chosen);
            taken_here.insert(chosen);
            port.node_port = Some(i32::from(chosen));
            claims.push(format!("{CLAIM_PORT}{chosen}"));
        }
        Ok(claims)
    }

    /// Settles a Service's IP families and addresses ([`service_ips::plan`])
    /// and allocates the missing ones, one per family from that family's
    /// range; returns the claims of the addresses it did not hold before.
    async fn assign_ips(
        &self,
        name: &str,
        spec: &mut ServiceSpec,
        old_spec: Option<&ServiceSpec>,
    ) -> Result<Vec<String>> {
        let cluster = self.alloc.families();
        let old = old_spec.map(Fields::of);
        let plan = service_ips::plan(&Fields::of(spec), old.as_ref(), &cluster)
            .map_err(|(path, reason)| Error::invalid(name, &path, reason))?;
        let mut claims = Vec::new();
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut used: Option<BTreeSet<IpAddr>> = None;
        for (i, (want, family)) in plan.ips.iter().zip(&plan.families).enumerate() {
            let field = if i == 0 {
                "spec.clusterIP".to_string()
            } else {
                format!("spec.clusterIPs[{i}]")
            };
            let requested = match *want {
                service_ips::Want::Kept(ip) => {
                    ips.push(ip);
                    continue;
                }
                service_ips::Want::Requested(ip) => Some(ip),
                service_ips::Want::Allocate => None,
            };
            let range = self.alloc.range(*family).ok_or_else(|| {
                Error::invalid(name, &field, format!("no {} service range", family.name()))
            })?;
            let in_use = match &mut used {
                Some(u) => u,
                None => used.insert(self.used::<IpAddr>(CLAIM_IP).await?),
            };
            let mut avoid = in_use.clone();
            if requested.is_none() {
                // Kept for kube-dns even while it does not exist.
                avoid.extend(self.alloc.dns_service_ip);
            }
            let kubernetes = range.kubernetes_service_ip();
            let ip = if name == format!("Service/{DEFAULT_NAMESPACE}/{KUBERNETES}")
                && requested == Some(kubernetes)
                && !avoid.contains(&kubernetes)
            {
                // The one Service the reserved address is for.
                kubernetes
            } else {
                range
                    .allocate(&avoid, requested)
                    .map_err(|e| alloc_invalid(name, &field, &e))?
            };
            in_use.insert(ip);
            claims.push(format!("{CLAIM_IP}{ip}"));
            ips.push(ip);
        }
        let texts: Vec<String> = if plan.headless {
            vec!["None".into()]
        } else {
            ips.iter().map(IpAddr::to_string).collect()
        };
        spec.cluster_ip = texts.first().cloned();
        spec.cluster_ips = Some(texts);
        spec.ip_families = Some(plan.families.iter().map(|f| f.name().to_string()).collect());
        spec.ip_family_policy = Some(plan.policy.to_string());
        Ok(claims)
    }

    /// Creates or updates a Service, retrying automatic picks that lost a
    /// race; a requested value that is taken fails at once.
    async fn write_service(
        &self,
        svc: Service,
        old: Option<(&Service, u64)>,
        expiry: Expiry,
    ) -> Result<Object> {
        let mut last = None;
        for _ in 0..ALLOC_TRIES {
            let mut candidate = svc.clone();
            let claims = self.assign(&mut candidate, old.map(|(s, _)| s)).await?;
            let release = match old {
                Some((o, _)) => released(o, &candidate),
                None => Vec::new(),
            };
            let obj = Object::from(candidate);
            let precondition = match old {
                Some((_, rev)) => Precondition::Revision(rev),
                None => Precondition::Absent,
            };
            match self.put(&obj, precondition, expiry, claims, release).await {
                Err(WriteError::ClaimTaken { claim, owner }) => {
                    last = Some((claim, owner));
                    continue;
                }
                other => return self.finish(obj, other),
            }
        }
        let (claim, owner) = last.unwrap_or_default();
        Err(Error::Conflict {
            kind: Kind::Service,
            name: describe_svc(&svc),
            reason: format!("{claim} kept being taken (last by {owner})"),
        })
    }

    async fn put(
        &self,
        obj: &Object,
        precondition: Precondition,
        expiry: Expiry,
        claim: Vec<String>,
        release: Vec<String>,
    ) -> Result<u64, WriteError> {
        self.storage
            .write(Write {
                key: key_of(&ObjectRef::of(obj)),
                value: encode(obj),
                precondition,
                expiry,
                claim,
                release,
            })
            .await
    }

    /// Maps a write's outcome to the object as stored, or an API error.
    fn finish(&self, mut obj: Object, r: Result<u64, WriteError>) -> Result<Object> {
        let what = ObjectRef::of(&obj);
        match r {
            Ok(rev) => {
                // 0: a dry-run create, never stored, has no revision.
                obj.meta_mut().resource_version = (rev != 0).then(|| rev.to_string());
                Ok(obj)
            }
            Err(WriteError::Exists) => Err(Error::AlreadyExists {
                kind: what.kind,
                name: what.name,
            }),
            Err(WriteError::NotFound) => Err(not_found(&what)),
            Err(WriteError::RevisionMismatch { .. }) => Err(conflict(&what)),
            Err(WriteError::ClaimTaken { claim, owner }) => Err(Error::invalid(
                obj.describe(),
                "spec",
                format!("{claim} is already allocated to {owner}"),
            )),
            Err(WriteError::Other(e)) => Err(e),
        }
    }

    pub(crate) async fn delete_one(
        &self,
        what: &ObjectRef,
        revision: Option<u64>,
    ) -> Result<Object> {
        for _ in 0..ALLOC_TRIES {
            let (stored, obj) = self.stored(what).await?;
            if let Some(want) = revision {
                if want != stored.revision {
                    return Err(conflict(what));
                }
            }
            let release = match &obj {
                Object::Service(s) => claims_of(s),
                _ => Vec::new(),
            };
            match self
                .storage
                .delete(&stored.key, Some(stored.revision), release)
                .await
            {
                Ok((last, rev)) => return decode_at(&last, rev),
                // Changed between our read and the delete: read again so
                // the claims we release are the ones it holds.
                Err(WriteError::RevisionMismatch { .. }) if revision.is_none() => continue,
                Err(WriteError::RevisionMismatch { .. }) => return Err(conflict(what)),
                Err(WriteError::NotFound) => return Err(not_found(what)),
                Err(WriteError::Other(e)) => return Err(e),
                Err(e) => return Err(Error::Internal(format!("delete {what}: {e}"))),
            }
        }
        Err(conflict(what))
    }
}

#[async_trait]
impl ControlPlane for Registry {
    async fn get(&self, what: &ObjectRef) -> Result<Object> {
        Ok(self.stored(what).await?.1)
    }

    async fn list(&self, scope: &Scope) -> Result<ObjectList> {
        let (items, revision) = self.storage.list(&prefix_of(scope)).await?;
        let items = items.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(ObjectList { items, revision })
    }

    async fn create(&self, mut obj: Object, ttl: Option<Duration>) -> Result<Object> {
        check_ttl(&obj, ttl)?;
        defaults::apply(&mut obj);
        let meta = obj.meta_mut();
        meta.uid = Some(new_uid());
        meta.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        meta.generation = Some(1);
        meta.resource_version = None;
        meta.deletion_timestamp = None;
        // As kube-apiserver: prepare (reset status, generate a Job's
        // selector from its uid), then validate.
        if let Some(prepare) = obj.kind().info().strategy.prepare_create {
            prepare(&mut obj);
        }
        validate::validate(&obj)?;
        self.require_namespace(&obj).await?;
        let expiry = ttl.map_or(Expiry::Never, Expiry::After);
        match obj {
            Object::Service(svc) => self.write_service(*svc, None, expiry).await,
            obj => {
                let r = self
                    .put(&obj, Precondition::Absent, expiry, Vec::new(), Vec::new())
                    .await;
                self.finish(obj, r)
            }
        }
    }

    async fn update(&self, mut obj: Object, ttl: Option<Duration>) -> Result<Object> {
        check_ttl(&obj, ttl)?;
        defaults::apply(&mut obj);
        validate::validate(&obj)?;
        let what = ObjectRef::of(&obj);
        let (stored, current) = self.stored(&what).await?;
        let rev = match revision_of(&obj)? {
            Some(r) if r != stored.revision => return Err(conflict(&what)),
            _ => stored.revision,
        };
        validate::validate_update(&current, &obj)?;
        let spec_changed = !same_spec(&current, &{
            let mut o = obj.clone();
            carry_assigned(&current, &mut o);
            o
        });
        keep_server_fields(&current, &mut obj);
        if spec_changed {
            let g = current.meta().generation.unwrap_or(1);
            obj.meta_mut().generation = Some(g + 1);
        }
        let expiry = ttl.map_or(Expiry::Never, Expiry::After);
        match (obj, current) {
            (Object::Service(svc), Object::Service(old)) => {
                self.write_service(*svc, Some((&old, rev)), expiry).await
            }
            (obj, _) => {
                let r = self
                    .put(
                        &obj,
                        Precondition::Revision(rev),
                        expiry,
                        Vec::new(),
                        Vec::new(),
                    )
                    .await;
                self.finish(obj, r)
            }
        }
    }

    async fn update_status(&self, obj: Object) -> Result<Object> {
        let what = ObjectRef::of(&obj);
        let (stored, mut current) = self.stored(&what).await?;
        let rev = match revision_of(&obj)? {
            Some(r) if r != stored.revision => return Err(conflict(&what)),
            _ => stored.revision,
        };
        let Some(copy_status) = what.kind.info().strategy.status else {
            return Err(Error::BadRequest(format!(
                "{} has no status subresource",
                what.kind
            )));
        };
        copy_status(&obj, &mut current);
        if what.kind.info().strategy.status_annotations {
            current.meta_mut().annotations = obj.meta().annotations.clone();
        }
        let r = self
            .put(
                &current,
                Precondition::Revision(rev),
                Expiry::Keep,
                Vec::new(),
                Vec::new(),
            )
            .await;
        self.finish(current, r)
    }

    async fn delete(&self, what: &ObjectRef, revision: Option<u64>) -> Result<Object> {
        let opts = DeleteOptions {
            revision,
            ..Default::default()
        };
        self.delete_with(what, &opts).await
    }

    async fn delete_with(&self, what: &ObjectRef, opts: &DeleteOptions) -> Result<Object> {
        if let Some(g) = opts.grace_period_seconds.filter(|g| *g < 0) {
            return Err(Error::invalid(
                what.to_string(),
                "gracePeriodSeconds",
                format!("Invalid value: {g}: must be greater than or equal to 0"),
            ));
        }
        if what.kind == Kind::Pod {
            return self.delete_pod(what, opts).await;
        }
        let revision = opts.revision;
        if what.kind == Kind::Namespace {
            if what.name == DEFAULT_NAMESPACE {
                return Err(Error::BadRequest(format!(
                    "namespace {DEFAULT_NAMESPACE:?} cannot be deleted"
                )));
            }
            self.stored(what).await?;
            for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let list = self.list(&Scope::namespaced(kind, &what.name)).await?;
                for item in list.items {
                    match self.delete_one(&ObjectRef::of(&item), None).await {
                        Ok(_) | Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.delete_one(what, revision).await
    }

    async fn watch(&self, scope: &Scope, revision: u64) -> Result<Watch> {
        let mut raw = self.storage.watch(&prefix_of(scope), revision).await?;
        let (tx, watch) = Watch::channel(256);
        tokio::spawn(async move {
            loop {
                // Stop (and drop the backend's watch) as soon as the
                // consumer goes away, not at the next event.
                let ev = tokio::select! {
                    ev = raw.recv() => ev,
                    _ = tx.closed() => return,
                };
                let Some(ev) = ev else { return };
                let ev = ev.and_then(|ev| match ev {
                    RawEvent::Put { stored, created } => {
                        let o = decode(&stored)?;
                        Ok(if created {
                            WatchEvent::Added(o)
                        } else {
                            WatchEvent::Modified(o)
                        })
                    }
                    RawEvent::Delete { last, revision } => {
                        Ok(WatchEvent::Deleted(decode_at(&last, revision)?))
                    }
                });
                let end = ev.is_err();
                if tx.send(ev).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(watch)
    }

    fn dry_run(&self) -> Option<Arc<dyn ControlPlane>> {
        Some(Arc::new(Registry {
            storage: Arc::new(DryRun::new(self.storage.clone())),
            alloc: self.alloc.clone(),
        }))
    }
}

/// TTLs are for what a node keeps alive by heartbeat (Lease, SubnetLease,
/// Node) and for Events (kube's event TTL): an expiring Service would leave its ClusterIP and NodePort
/// claims behind, and an expiring Pod its containers.
fn check_ttl(obj: &Object, ttl: Option<Duration>) -> Result<()> {
    match ttl {
        Some(_) if !obj.kind().info().ttl => {
            let allowed: Vec<&str> = Kind::ALL
                .into_iter()
                .filter(|k| k.info().ttl)
                .map(Kind::name)
                .collect();
            Err(Error::BadRequest(format!(
                "{}: a TTL is only allowed on {} objects",
                obj.describe(),
                allowed.join(", ")
            )))
        }
        Some(t) if t.is_zero() => Err(Error::BadRequest(format!(
            "{}: the TTL must be positive",
            obj.describe()
        ))),
        _ => Ok(()),
    }
}

fn not_found(what: &ObjectRef) -> Error {
    Error::NotFound {
        kind: what.kind,
        name: what.name.clone(),
    }
}

fn conflict(what: &ObjectRef) -> Error {
    Error::Conflict {
        kind: what.kind,
        name: what.name.clone(),
        reason: "the object has been modified; please apply your changes to the latest version and try again".into(),
    }
}

fn describe_svc(svc: &Service) -> String {
    let m = &svc.metadata;
    format!(
        "Service/{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

fn alloc_invalid(object: &str, field: &str, e: &AllocError) -> Error {
    Error::invalid(object, field, e.to_string())
}

/// The claim keys a stored Service holds.
fn claims_of(svc: &Service) -> Vec<String> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ips: BTreeSet<IpAddr> = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let mut out: Vec<String> = ips.iter().map(|ip| format!("{CLAIM_IP}{ip}")).collect();
    let ports: BTreeSet<i32> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    out.extend(ports.into_iter().map(|p| format!("{CLAIM_PORT}{p}")));
    out
}

/// Claims `old` holds that `new` no longer does.
fn released(old: &Service, new: &Service) -> Vec<String> {
    let keep: BTreeSet<String> = claims_of(new).into_iter().collect();
    claims_of(old)
        .into_iter()
        .filter(|c| !keep.contains(c))
        .collect()
}

/// Copies what the server owns (identity, timestamps, status) from the
/// stored object onto an update.
fn keep_server_fields(current: &Object, obj: &mut Object) {
    let cm = current.meta().clone();
    let m = obj.meta_mut();
    m.uid = cm.uid;
    m.creation_timestamp = cm.creation_timestamp;
    m.generation = cm.generation;
    m.deletion_timestamp = cm.deletion_timestamp;
    m.deletion_grace_period_seconds = cm.deletion_grace_period_seconds;
    if let Some(copy_status) = current.kind().info().strategy.status {
        copy_status(current, obj);
    }
}

/// Copies onto `want` everything the server assigned to `current` that a
/// manifest leaves out: identity, revision, status, and what the kind's
/// `carry` hook keeps (a Service's ClusterIP and NodePorts, a Pod's node,
/// a Job's generated selector).
pub fn carry_assigned(current: &Object, want: &mut Object) {
    keep_server_fields(current, want);
    want.meta_mut().resource_version = current.meta().resource_version.clone();
    if let Some(carry) = current.kind().info().strategy.carry {
        carry(current, want);
    }
}

/// Whether two versions of an object differ only in revision.
pub fn same_spec(a: &Object, b: &Object) -> bool {
    let strip = |o: &Object| {
        let mut o = o.clone();
        o.meta_mut().resource_version = None;
        o.meta_mut().generation = None;
        o.to_value()
    };
    strip(a) == strip(b)
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // Unique enough without the random device: time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b = (t ^ (u128::from(n) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

mod graceful;
pub mod service_ips;

use service_ips::{Fields, IpFamily};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(
            key_of(&ObjectRef::new(Kind::Pod, "default", "web")),
            "pods/default/web"
        );
        assert_eq!(key_of(&ObjectRef::new(Kind::Node, "x", "n1")), "nodes/n1");
        assert_eq!(prefix_of(&Scope::all(Kind::Pod)), "pods/");
        assert_eq!(prefix_of(&Scope::namespaced(Kind::Pod, "a")), "pods/a/");
        assert_eq!(prefix_of(&Scope::namespaced(Kind::Node, "a")), "nodes/");
    }

    #[test]
    fn uids_look_like_uuids() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uid());
    }

    fn temp_registry(alloc: Allocators) -> (Registry, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("knode-reg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::storage::embedded::Embedded::open(&dir).unwrap();
        (Registry::new(Arc::new(store), alloc), dir)
    }

    fn service(name: &str, cluster_ip: Option<&str>) -> Object {
        let mut spec = serde_json::json!({"ports": [{"port": 80}]});
        if let Some(ip) = cluster_ip {
            spec["clusterIP"] = ip.into();
        }
        Object::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn bootstrap_keeps_kube_dns_and_no_automatic_pick_takes_its_ip() {
        let dns: IpAddr = "10.96.0.10".parse().unwrap();
        // A /28: 13 allocatable addresses, one of them kept for DNS.
        let alloc = Allocators::parse("10.96.0.0/28", "30000-32767")
            .unwrap()
            .with_dns_service_ip(dns)
            .unwrap();
        let (reg, dir) = temp_registry(alloc);
        reg.bootstrap().await.unwrap();
        reg.bootstrap().await.unwrap();
        let got = reg
            .get(&ObjectRef::new(Kind::Service, SYSTEM_NAMESPACE, KUBE_DNS))
            .await
            .unwrap();
        let Object::Service(svc) = got else {
            panic!("not a Service")
        };
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".into(), 53, "UDP".into()),
                ("dns-tcp".into(), 53, "TCP".into())
            ]
        );
        // Even with kube-dns deleted, automatic picks skip its address.
        reg.delete(
            &ObjectRef::new(Kind::Service, SYSTEM_NAMESPACE, KUBE_DNS),
            None,
        )
        .await
        .unwrap();
        for i in 0..12 {
            let created = reg
                .create(service(&format!("s{i}"), None), None)
                .await
                .unwrap();
            let Object::Service(s) = created else {
                panic!()
            };
            assert_ne!(s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
        }
        // Asked for by name, it is given (kube-dns recreated by a user).
        reg.create(service("dns", Some("10.96.0.10")), None)
            .await
            .unwrap();
        // default/kubernetes holds the range's first address, which no
        // other Service may ask for.
        let k = reg
            .get(&ObjectRef::new(
                Kind::Service,
                DEFAULT_NAMESPACE,
                KUBERNETES,
            ))
            .await
            .unwrap();
        let Object::Service(k) = k else { panic!() };
        let spec = k.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
        assert_eq!(spec.ports.unwrap()[0].port, 443);
        let e = reg
            .create(service("imposter", Some("10.96.0.1")), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("spec.clusterIP"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn spec_of(o: Object) -> ServiceSpec {
        let Object::Service(s) = o else {
            panic!("not a Service")
        };
        s.spec.expect("spec")
    }

    fn dual_service(name: &str, spec: Value) -> Object {
        let mut spec = spec;
        spec["ports"] = serde_json::json!([{"port": 80}]);
        Object::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn dual_stack_services_hold_one_address_per_family_and_give_both_back() {
        // A /126 of IPv6: 2 allocatable addresses besides the first.
        let alloc = Allocators::parse("10.96.0.0/28,fd00:96::/125", "30000-32767").unwrap();
        let (reg, dir) = temp_registry(alloc);
        reg.bootstrap().await.unwrap();
        let k = spec_of(
            reg.get(&ObjectRef::new(
                Kind::Service,
                DEFAULT_NAMESPACE,
                KUBERNETES,
            ))
            .await
            .unwrap(),
        );
        assert_eq!(k.cluster_ips.unwrap(), ["10.96.0.1"]);
        assert_eq!(k.ip_families.unwrap(), ["IPv4"]);

        let s = spec_of(
            reg.create(
                dual_service(
                    "a",
                    serde_json::json!({"ipFamilyPolicy": "RequireDualStack",
                    "clusterIPs": ["10.96.0.5", "fd00:96::5"]}),
                ),
                None,
            )
            .await
            .unwrap(),
        );
        assert_eq!(s.cluster_ip.as_deref(), Some("10.96.0.5"));
        assert_eq!(s.cluster_ips.unwrap(), ["10.96.0.5", "fd00:96::5"]);
        assert_eq!(s.ip_families.unwrap(), ["IPv4", "IPv6"]);
        // The IPv6 address is held: asking for it again fails by field.
        let e = reg
            .create(
                dual_service(
                    "b",
                    serde_json::json!({"ipFamilies": ["IPv6"], "clusterIP": "fd00:96::5"}),
                ),
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.clusterIP") && e.contains("already allocated"),
            "{e}"
        );
        // PreferDualStack gets a picked address of each family.
        let s = spec_of(
            reg.create(
                dual_service(
                    "c",
                    serde_json::json!({"ipFamilyPolicy": "PreferDualStack"}),
                ),
                None,
            )
            .await
            .unwrap(),
        );
        let ips = s.cluster_ips.unwrap();
        assert_eq!(ips.len(), 2);
        assert!(ips[1].parse::<IpAddr>().unwrap().is_ipv6(), "{ips:?}");
        // Headless: families, no addresses, no claims.
        let s = spec_of(
            reg.create(
                dual_service(
                    "h",
                    serde_json::json!({"clusterIP": "None", "ipFamilyPolicy": "RequireDualStack"}),
                ),
                None,
            )
            .await
            .unwrap(),
        );
        assert_eq!(s.cluster_ips.unwrap(), ["None"]);
        assert_eq!(s.ip_families.unwrap(), ["IPv4", "IPv6"]);
        // Downgrade a to SingleStack: its IPv6 address is free again.
        let mut a = reg
            .get(&ObjectRef::new(Kind::Service, DEFAULT_NAMESPACE, "a"))
            .await
            .unwrap();
        if let Object::Service(svc) = &mut a {
            let spec = svc.spec.as_mut().unwrap();
            spec.ip_family_policy = Some("SingleStack".into());
            spec.cluster_ips = Some(vec!["10.96.0.5".into()]);
            spec.ip_families = Some(vec!["IPv4".into()]);
        }
        let s = spec_of(reg.update(a, None).await.unwrap());
        assert_eq!(s.cluster_ips.unwrap(), ["10.96.0.5"]);
        reg.create(
            dual_service(
                "b",
                serde_json::json!({"ipFamilies": ["IPv6"], "clusterIP": "fd00:96::5"}),
            ),
            None,
        )
        .await
        .unwrap();
        // Deleting c gives back both of its addresses.
        reg.delete(&ObjectRef::new(Kind::Service, DEFAULT_NAMESPACE, "c"), None)
            .await
            .unwrap();
        let again = serde_json::json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ips});
        reg.create(dual_service("c2", again), None).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn require_dual_stack_on_a_single_stack_cluster_is_refused_by_field() {
        let (reg, dir) = temp_registry(Allocators::default());
        reg.bootstrap().await.unwrap();
        let e = reg
            .create(
                dual_service(
                    "a",
                    serde_json::json!({"ipFamilyPolicy": "RequireDualStack"}),
                ),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("spec.ipFamilyPolicy") && e.contains("not configured for dual-stack"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn service_ranges_parse_as_kube_apiserver_reads_them() {
        let a = Allocators::parse("fd00:96::/108, 10.96.0.0/12", "30000-32767").unwrap();
        assert_eq!(a.families(), [IpFamily::V6, IpFamily::V4]);
        assert_eq!(a.cidrs(), "fd00:96::/108,10.96.0.0/12");
        for (bad, why) in [
            ("10.96.0.0/12,10.97.0.0/16", "one IPv4 and one IPv6"),
            ("10.96.0.0/12,fd00::/108,fd01::/108", "at most two"),
            ("10.96.0.0/12,nope", "\"nope\""),
        ] {
            let e = Allocators::parse(bad, "30000-32767")
                .unwrap_err()
                .to_string();
            assert!(e.contains("service-cidr") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_dns_ip_outside_the_service_cidr_is_refused_by_name() {
        let e = Allocators::parse("10.96.0.0/12", "30000-32767")
            .unwrap()
            .with_dns_service_ip("10.0.0.10".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster-dns 10.0.0.10 is outside the service CIDR 10.96.0.0/12"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_dry_run_checks_like_a_write_and_keeps_nothing() {
        let (reg, dir) = temp_registry(Allocators::default());
        reg.bootstrap().await.unwrap();
        let dry = reg.dry_run().unwrap();
        let (_, rev) = reg.storage.list("").await.unwrap();
        // A create: defaulted, an address picked, no revision, nothing kept.
        let made = dry.create(service("web", None), None).await.unwrap();
        let Object::Service(svc) = &made else {
            panic!("not a Service")
        };
        assert!(svc.spec.as_ref().unwrap().cluster_ip.is_some());
        assert_eq!(made.meta().resource_version, None);
        assert!(made.meta().uid.is_some());
        let what = ObjectRef::new(Kind::Service, "default", "web");
        assert!(reg.get(&what).await.unwrap_err().is_not_found());
        // An address held by another Service is refused as a write would be.
        let kept = reg.create(service("held", None), None).await.unwrap();
        let Object::Service(held) = &kept else {
            panic!("not a Service")
        };
        let ip = held.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
        let e = dry
            .create(service("web", Some(&ip)), None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        // Update and delete: answered, not done.
        let (_, rev) = (rev, reg.storage.list("").await.unwrap().1);
        let mut changed = kept.clone();
        changed.meta_mut().labels = Some([("a".to_string(), "b".to_string())].into());
        let updated = dry.update(changed, None).await.unwrap();
        assert!(updated.meta().labels.is_some());
        assert_eq!(
            updated.meta().resource_version,
            kept.meta().resource_version
        );
        dry.delete(&ObjectRef::of(&kept), None).await.unwrap();
        let still = reg.get(&ObjectRef::of(&kept)).await.unwrap();
        assert_eq!(still.meta().resource_version, kept.meta().resource_version);
        assert_eq!(still.meta().labels, None);
        assert_eq!(reg.storage.list("").await.unwrap().1, rev);
        // The same errors: a stale revision is a conflict.
        let mut stale = kept.clone();
        stale.meta_mut().resource_version = Some("1".into());
        assert!(dry.update(stale, None).await.unwrap_err().is_conflict());
        let _ = std::fs::remove_dir_all(dir);
    }
}
