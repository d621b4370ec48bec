//! The `default/kubernetes` Service's endpoints: the agents that serve
//! the API, so in-cluster clients (client-go's in-cluster config, which
//! dials `kubernetes.default.svc`) reach one. kube-apiserver's lease
//! endpoint reconciler, in objects: each serving agent renews a Lease
//! `kube-system/apiserver-<node>` naming its address, and every serving
//! agent makes the EndpointSlice `default/kubernetes` list the addresses
//! of the Leases still renewed. An agent that dies drops out once its
//! Lease runs out; an agent whose API listens on loopback only advertises
//! nothing (a pod cannot reach it).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use controlplane::api::{ControlPlane, ObjectRef, Scope};
use controlplane::registry::{KUBERNETES, SYSTEM_NAMESPACE};
use controlplane::{Kind, Object};
use serde_json::json;

/// The label kube-apiserver puts on its identity Leases.
const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
/// The address an identity Lease advertises.
const ADDRESS_ANNOTATION: &str = "knode.io/api-address";
/// Who manages the slice (kube-apiserver's reconciler is not the slice
/// controller either).
const MANAGED_BY: &str = "knode-apiserver";
/// How long a Lease holds without renewal; renewed every third of it.
const LEASE_SECONDS: i64 = 30;

/// Keeps this agent's Lease and the slice current until dropped.
/// `address` is what pods dial (`None`: this agent does not advertise).
pub async fn run(cp: Arc<dyn ControlPlane>, node: String, address: Option<SocketAddr>) {
    let period = Duration::from_secs((LEASE_SECONDS / 3) as u64);
    loop {
        if let Some(addr) = address {
            if let Err(e) = renew(cp.as_ref(), &node, addr).await {
                tracing::warn!(error = %e, "kubernetes Service: renew the API Lease");
            }
        }
        if let Err(e) = reconcile(cp.as_ref()).await {
            tracing::warn!(error = %e, "kubernetes Service: update its endpoints");
        }
        tokio::time::sleep(period).await;
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn lease_name(node: &str) -> String {
    format!("apiserver-{node}")
}

/// Creates or renews `kube-system/apiserver-<node>`.
async fn renew(
    cp: &dyn ControlPlane,
    node: &str,
    addr: SocketAddr,
) -> controlplane::api::Result<()> {
    let stamp = now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let want = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name(node), "namespace": SYSTEM_NAMESPACE,
            "labels": {IDENTITY_LABEL: "kube-apiserver", "kubernetes.io/hostname": node},
            "annotations": {ADDRESS_ANNOTATION: addr.to_string()}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS,
            "acquireTime": stamp, "renewTime": stamp},
    });
    let what = ObjectRef::new(Kind::Lease, SYSTEM_NAMESPACE, &lease_name(node));
    let mut obj =
        Object::from_value(want).map_err(|e| controlplane::api::Error::Internal(e.to_string()))?;
    match cp.get(&what).await {
        Ok(old) => {
            // Keep acquireTime; the update is a compare-and-set.
            if let (Object::Lease(new), Object::Lease(old)) = (&mut obj, &old) {
                new.metadata.resource_version = old.metadata.resource_version.clone();
                if let (Some(n), Some(o)) = (new.spec.as_mut(), old.spec.as_ref()) {
                    n.acquire_time = o.acquire_time.clone().or(n.acquire_time.take());
                }
            }
            cp.update(obj, None).await.map(|_| ())
        }
        Err(e) if e.is_not_found() => cp.create(obj, None).await.map(|_| ()),
        Err(e) => Err(e),
    }
}

/// The addresses of the identity Leases renewed within their duration.
fn live_addresses(leases: &[Object], at: jiff::Timestamp) -> BTreeSet<SocketAddr> {
    leases
        .iter()
        .filter_map(|o| match o {
            Object::Lease(l) => Some(l),
            _ => None,
        })
        .filter(|l| {
            l.metadata
                .labels
                .as_ref()
                .is_some_and(|m| m.get(IDENTITY_LABEL).is_some_and(|v| v == "kube-apiserver"))
        })
        .filter(|l| {
            let Some(spec) = &l.spec else { return false };
            let secs = spec.lease_duration_seconds.unwrap_or(0);
            spec.renew_time
                .as_ref()
                .and_then(|t| t.0.to_string().parse::<jiff::Timestamp>().ok())
                .and_then(|t| {
                    t.checked_add(jiff::SignedDuration::from_secs(secs.into()))
                        .ok()
                })
                .is_some_and(|until| until > at)
        })
        .filter_map(|l| {
            l.metadata
                .annotations
                .as_ref()?
                .get(ADDRESS_ANNOTATION)?
                .parse()
                .ok()
        })
        .collect()
}

/// The slice for `addrs`: one port (the most common; agents advertising
/// another are left out with a warning), IPv4 or IPv6 by the first.
fn slice_for(addrs: &BTreeSet<SocketAddr>) -> serde_json::Value {
    let mut ports: Vec<(usize, u16)> = Vec::new();
    for a in addrs {
        match ports.iter_mut().find(|(_, p)| *p == a.port()) {
            Some((n, _)) => *n += 1,
            None => ports.push((1, a.port())),
        }
    }
    ports.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let port = ports.first().map(|(_, p)| *p);
    let v6 = addrs.iter().next().is_some_and(SocketAddr::is_ipv6);
    let endpoints: Vec<serde_json::Value> = addrs
        .iter()
        .filter(|a| Some(a.port()) == port && a.is_ipv6() == v6)
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    if ports.len() > 1 {
        tracing::warn!(?ports, "kubernetes Service: agents serve the API on different ports; only the most common is listed");
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": KUBERNETES, "namespace": controlplane::defaults::DEFAULT_NAMESPACE,
            "labels": {"kubernetes.io/service-name": KUBERNETES,
                       "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints,
        "ports": port.map(|p| vec![json!({"name": "https", "port": p, "protocol": "TCP"})]).unwrap_or_default(),
    })
}

/// Makes `default/kubernetes`'s slice list the live Leases' addresses.
async fn reconcile(cp: &dyn ControlPlane) -> controlplane::api::Result<()> {
    let leases = cp
        .list(&Scope::namespaced(Kind::Lease, SYSTEM_NAMESPACE))
        .await?;
    let want = slice_for(&live_addresses(&leases.items, now()));
    let mut want =
        Object::from_value(want).map_err(|e| controlplane::api::Error::Internal(e.to_string()))?;
    let what = ObjectRef::of(&want);
    match cp.get(&what).await {
        Ok(Object::EndpointSlice(old)) => {
            let Object::EndpointSlice(new) = &mut want else {
                return Ok(());
            };
            if (&old.endpoints, &old.ports, &old.address_type)
                == (&new.endpoints, &new.ports, &new.address_type)
            {
                return Ok(());
            }
            new.metadata.resource_version = old.metadata.resource_version.clone();
            cp.update(want, None).await.map(|_| ())
        }
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => match cp.create(want, None).await {
            // Another agent wrote it first: the next round compares.
            Err(controlplane::api::Error::AlreadyExists { .. }) => Ok(()),
            r => r.map(|_| ()),
        },
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, addr: &str, renewed_secs_ago: i64) -> Object {
        let t = now()
            .checked_sub(jiff::SignedDuration::from_secs(renewed_secs_ago))
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        Object::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node), "namespace": SYSTEM_NAMESPACE,
                "labels": {IDENTITY_LABEL: "kube-apiserver"},
                "annotations": {ADDRESS_ANNOTATION: addr}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": t},
        }))
        .unwrap()
    }

    #[test]
    fn only_renewed_leases_are_endpoints() {
        let node_lease = Object::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "n9", "namespace": SYSTEM_NAMESPACE,
                "annotations": {ADDRESS_ANNOTATION: "192.0.2.9:6443"}},
            "spec": {"holderIdentity": "n9", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"},
        }))
        .unwrap();
        let leases = [
            lease("a", "192.0.2.1:6443", 1),
            lease("b", "192.0.2.2:6443", LEASE_SECONDS + 5),
            lease("c", "192.0.2.3:6443", 0),
            node_lease,
        ];
        let live = live_addresses(&leases, now());
        let got: Vec<String> = live.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.0.2.1:6443", "192.0.2.3:6443"]);
        let s = slice_for(&live);
        assert_eq!(s["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(s["ports"][0]["port"], 6443);
        assert_eq!(s["addressType"], "IPv4");
        Object::from_value(s).unwrap();
    }

    #[test]
    fn one_port_is_listed_and_no_agent_means_no_endpoints() {
        let addrs: BTreeSet<SocketAddr> = ["192.0.2.1:6443", "192.0.2.2:6443", "192.0.2.3:7443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let s = slice_for(&addrs);
        assert_eq!(s["ports"][0]["port"], 6443);
        assert_eq!(s["endpoints"].as_array().unwrap().len(), 2);
        let empty = slice_for(&BTreeSet::new());
        assert!(empty["endpoints"].as_array().unwrap().is_empty());
        Object::from_value(empty).unwrap();
    }

    #[tokio::test]
    async fn serving_agents_are_the_kubernetes_services_endpoints_in_a_real_store() {
        let dir = std::env::temp_dir().join(format!("knode-advertise-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cp = controlplane::backend::open(
            &controlplane::backend::Backend::Embedded,
            &dir,
            Default::default(),
        )
        .await
        .unwrap();
        let slice = || async {
            let o = cp
                .get(&ObjectRef::new(Kind::EndpointSlice, "default", KUBERNETES))
                .await
                .unwrap();
            let Object::EndpointSlice(s) = o else {
                panic!()
            };
            let ips: Vec<String> = s.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
            (
                ips,
                s.ports.unwrap_or_default().first().and_then(|p| p.port),
            )
        };
        // No agent advertises yet: the slice exists, empty.
        reconcile(cp.as_ref()).await.unwrap();
        assert_eq!(slice().await, (vec![], None));
        renew(cp.as_ref(), "a", "192.0.2.1:6443".parse().unwrap())
            .await
            .unwrap();
        renew(cp.as_ref(), "b", "192.0.2.2:6443".parse().unwrap())
            .await
            .unwrap();
        // A renewal is an update of the same Lease.
        renew(cp.as_ref(), "a", "192.0.2.1:6443".parse().unwrap())
            .await
            .unwrap();
        reconcile(cp.as_ref()).await.unwrap();
        assert_eq!(
            slice().await,
            (
                vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()],
                Some(6443)
            )
        );
        // b stops renewing: once its Lease runs out it is dropped.
        let what = ObjectRef::new(Kind::Lease, SYSTEM_NAMESPACE, &lease_name("b"));
        let Object::Lease(mut l) = cp.get(&what).await.unwrap() else {
            panic!()
        };
        let old = now()
            .checked_sub(jiff::SignedDuration::from_secs(LEASE_SECONDS + 1))
            .unwrap();
        l.spec.as_mut().unwrap().renew_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                old.to_string().parse().unwrap(),
            ));
        cp.update(Object::Lease(l), None).await.unwrap();
        reconcile(cp.as_ref()).await.unwrap();
        assert_eq!(slice().await, (vec!["192.0.2.1".to_string()], Some(6443)));
        // The Service itself is the control plane's.
        let Object::Service(svc) = cp
            .get(&ObjectRef::new(Kind::Service, "default", KUBERNETES))
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
