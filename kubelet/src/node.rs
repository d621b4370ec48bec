//! The agent's Node object and its heartbeat. The Node is registered (or
//! updated) at startup with the node's addresses, capacity, pod CIDR and a
//! Ready condition; liveness is a Lease in `kube-node-lease` that expires
//! 40 s after the last renewal and is renewed every 10 s, as kubelet's
//! node lease does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use controlplane::objects::{Kind, Object};
use controlplane::{ControlPlane, ObjectRef};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Namespace, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

/// Where node leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub ip: IpAddr,
    /// The node's pod CIDRs: one, or an IPv4 and an IPv6 one (dual-stack);
    /// the first is `spec.podCIDR`.
    pub pod_cidrs: Vec<String>,
    /// Where the node API (kubelet's port) listens; 0: it does not.
    pub kubelet_port: u16,
}

/// Creates or updates the Node object.
/// The heartbeat Lease (lifetime `lease`) is renewed first, so a Node
/// never stands without one (the proxy would take it for lost).
pub async fn register(
    cp: &dyn ControlPlane,
    id: &Identity,
    runtime_version: &str,
    lease: Duration,
) -> Result<()> {
    ensure_lease_namespace(cp).await;
    renew(cp, &id.name, lease).await?;
    let want = node_object(id, runtime_version, Timestamp::now());
    let what = ObjectRef::new(Kind::Node, "", &id.name);
    match cp.get(&what).await {
        Ok(Object::Node(mut current)) => {
            current.metadata.labels = want.metadata.labels.clone();
            current.spec = want.spec.clone();
            let updated = cp
                .update(Object::Node(current), None)
                .await
                .context("update the Node")?;
            let Object::Node(mut n) = updated else {
                return Err(anyhow!("the control plane returned a non-Node"));
            };
            n.status = want.status;
            n.metadata.resource_version = None;
            cp.update_status(Object::Node(n))
                .await
                .context("update the Node's status")?;
        }
        Ok(_) => return Err(anyhow!("node {} is not a Node", id.name)),
        Err(e) if e.is_not_found() => {
            let status = want.status.clone();
            let created = cp
                .create(Object::from(want), None)
                .await
                .context("register the Node")?;
            let Object::Node(mut n) = created else {
                return Err(anyhow!("the control plane returned a non-Node"));
            };
            n.status = status;
            n.metadata.resource_version = None;
            cp.update_status(Object::Node(n))
                .await
                .context("write the Node's status")?;
        }
        Err(e) => return Err(e).context("read the Node"),
    }
    Ok(())
}

/// Points the Node's podCIDRs at `cidrs` (after the overlay's lease
/// changed), leaving everything else as registered.
pub async fn set_pod_cidrs(cp: &dyn ControlPlane, name: &str, cidrs: &[String]) -> Result<()> {
    let what = ObjectRef::new(Kind::Node, "", name);
    for _ in 0..5 {
        let Object::Node(mut n) = cp.get(&what).await.context("read the Node")? else {
            return Err(anyhow!("node {name} is not a Node"));
        };
        let spec = n.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = cidrs.first().cloned();
        spec.pod_cidrs = Some(cidrs.to_vec());
        match cp.update(Object::Node(n), None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e).context("update the Node's podCIDR"),
        }
    }
    Err(anyhow!(
        "update the Node's podCIDR: it kept changing underneath"
    ))
}

/// Renews the node lease (lifetime `duration`) every quarter of
/// `duration` until the task is dropped. Failures are logged and retried
/// at the next tick: a missed renewal is what lets others see the node as
/// gone (the proxy drops a lost node's endpoints).
pub async fn heartbeat(cp: Arc<dyn ControlPlane>, node: String, duration: Duration) {
    ensure_lease_namespace(cp.as_ref()).await;
    let mut tick = tokio::time::interval(duration / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = renew(cp.as_ref(), &node, duration).await {
            tracing::warn!(error = %format!("{e:#}"), "renew the node lease");
        }
    }
}

async fn ensure_lease_namespace(cp: &dyn ControlPlane) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LEASE_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match cp.create(Object::from(ns), None).await {
        Ok(_) => {}
        Err(controlplane::Error::AlreadyExists { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "create namespace {LEASE_NAMESPACE}"),
    }
}

/// One renewal: update the lease (TTL renewed) or create it.
pub async fn renew(cp: &dyn ControlPlane, node: &str, duration: Duration) -> Result<()> {
    let what = ObjectRef::new(Kind::Lease, LEASE_NAMESPACE, node);
    let now = MicroTime(Timestamp::now());
    let lease = match cp.get(&what).await {
        Ok(Object::Lease(mut l)) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(node.to_string());
            spec.lease_duration_seconds = Some(duration_seconds(duration));
            l
        }
        Ok(_) => return Err(anyhow!("{what} is not a Lease")),
        Err(e) if e.is_not_found() => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_string()),
                    lease_duration_seconds: Some(duration_seconds(duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            cp.create(Object::from(l), Some(duration))
                .await
                .context("create the node lease")?;
            return Ok(());
        }
        Err(e) => return Err(e).context("read the node lease"),
    };
    cp.update(Object::Lease(lease), Some(duration))
        .await
        .context("renew the node lease")?;
    Ok(())
}

/// Whole seconds, at least 1, for `leaseDurationSeconds`.
fn duration_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// The Node object for `id`.
pub fn node_object(id: &Identity, runtime_version: &str, now: Timestamp) -> Node {
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(cpus().to_string()));
    capacity.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", memory_kib())),
    );
    capacity.insert("pods".to_string(), Quantity(MAX_PODS.to_string()));
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), id.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(id.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: id.pod_cidrs.first().cloned(),
            pod_cidrs: (!id.pod_cidrs.is_empty()).then(|| id.pod_cidrs.clone()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: id.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: id.name.clone(),
                },
            ]),
            daemon_endpoints: (id.kubelet_port != 0).then(|| NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(id.kubelet_port),
                }),
            }),
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("knode agent is posting ready status".into()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            }]),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH.into(),
                container_runtime_version: format!("containerd://{runtime_version}"),
                kernel_version: kernel_release(),
                kubelet_version: controlplane::kinds::kube_version(),
                kube_proxy_version: String::new(),
                operating_system: "linux".into(),
                os_image: os_image(),
                machine_id: read_trim("/etc/machine-id"),
                system_uuid: String::new(),
                boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The node's IP: the configured one, else the address of the interface
/// that holds the default route, else the first global IPv4 address.
pub fn detect_ip(configured: Option<&str>) -> Result<IpAddr> {
    if let Some(ip) = configured {
        return ip
            .parse()
            .map_err(|_| anyhow!("node-ip: {ip:?} is not an IP address"));
    }
    let default_iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
            })
        });
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .context("list interface addresses")?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .filter(|(_, ip)| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
        .collect();
    if let Some(iface) = default_iface {
        if let Some((_, ip)) = addrs.iter().find(|(n, _)| *n == iface) {
            return Ok(IpAddr::V4(*ip));
        }
    }
    addrs
        .first()
        .map(|(_, ip)| IpAddr::V4(*ip))
        .ok_or_else(|| anyhow!("node-ip: this host has no global IPv4 address; set --node-ip"))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease")
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_object_reports_capacity_addresses_and_ready() {
        let id = Identity {
            name: "n1".into(),
            ip: "192.0.2.7".parse().unwrap(),
            pod_cidrs: vec!["10.244.3.0/24".into(), "fd00:10:244:3::/64".into()],
            kubelet_port: 10250,
        };
        let n = node_object(&id, "1.6.20", Timestamp::UNIX_EPOCH);
        let st = n.status.unwrap();
        let cap = st.capacity.unwrap();
        assert_eq!(cap["pods"].0, "110");
        assert!(cap["cpu"].0.parse::<u32>().unwrap() >= 1);
        assert!(cap["memory"].0.ends_with("Ki"));
        assert_eq!(st.addresses.unwrap()[0].address, "192.0.2.7");
        let port = st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port;
        assert_eq!(port, 10250, "where the API servers reach the node");
        assert_eq!(st.conditions.unwrap()[0].status, "True");
        let spec = n.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.3.0/24"));
        assert_eq!(spec.pod_cidrs.unwrap().len(), 2);
    }

    #[test]
    fn a_configured_node_ip_must_parse() {
        assert_eq!(
            detect_ip(Some("10.1.2.3")).unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        let e = detect_ip(Some("ten")).unwrap_err().to_string();
        assert!(e.contains("node-ip"), "{e}");
    }
}
