//! The pod sandbox, made as containerd's CRI plugin makes it: a network
//! namespace pinned at `<netns-dir>/knode-<uid>`, CNI ADD into it (loopback
//! first, then the node's network), the pod's files (hosts, resolv.conf,
//! hostname, /dev/shm), then the pause container that holds the IPC and UTS
//! (and, with shareProcessNamespace, PID) namespaces and joins the pinned
//! net namespace. The network gate (NetworkPolicy) learns the pod's
//! address before `ensure` returns, so before any container of the pod.
//! Removal goes the other way: app containers, pause, CNI DEL, netns,
//! files, volumes.
//!
//! Every step finds its own earlier work (after a crash or an agent kill),
//! so `ensure` is also how a half-made sandbox is finished.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;

use super::context::{Context, Host};
use super::worker::namespace;
use super::{files, volumes};
use crate::cni::Attachment;
use runtime::spec::{self, PodFiles};
use runtime::task::{self, NewContainer, TaskState};
use runtime::{labels, sandbox_id};

/// The interface CNI puts in the pod.
pub const POD_IFNAME: &str = "eth0";

/// The start of a pause container still in flight (see [`ensure`]).
pub type Starting = tokio::task::JoinHandle<Result<u32>>;

/// A ready sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub pid: u32,
    /// The primary IP (`status.podIP`): the first of `ips`.
    pub ip: Option<String>,
    /// Every IP, ordered as kubelet orders `status.podIPs`.
    pub ips: Vec<String>,
    pub files: PodFiles,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn attachment(host: &Host<'_>, uid: &str, ns: &str, name: &str) -> Attachment {
    Attachment {
        container_id: sandbox_id(uid),
        netns: host.netns_path(uid),
        ifname: POD_IFNAME.to_string(),
        pod_namespace: ns.to_string(),
        pod_name: name.to_string(),
        pod_uid: uid.to_string(),
    }
}

/// Makes (or finishes, or adopts) the pod's sandbox. A new pause
/// container may still be starting: the caller awaits `Starting` (after
/// starting the app containers, which only need its namespaces).
pub async fn ensure(ctx: &Context, pod: &Pod) -> Result<(Sandbox, Option<Starting>)> {
    let uid = uid_of(pod);
    let ns = namespace(pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let id = sandbox_id(&uid);
    let netns = ctx.netns_path(&uid);

    if host_network(pod) {
        return ensure_host_network(ctx, pod, &uid).await;
    }

    // 1. The network namespace. A namespace that had to be made afresh
    //    cannot hold an earlier attachment: any cached result is stale.
    let t0 = std::time::Instant::now();
    let fresh = !hostnet::netns::is_pinned(&netns);
    if fresh {
        let p = netns.clone();
        tokio::task::spawn_blocking(move || hostnet::netns::pin_new(&p))
            .await
            .context("pin the netns")??;
    }
    let att = attachment(&ctx.host(), &uid, &ns, &name);

    // 2. CNI ADD (or the cached result of an earlier ADD into this netns)
    //    and the pause container, side by side: the pause container needs
    //    only the netns path, and its /etc/hosts is rewritten in place once
    //    the IP is known. A pause container left from an earlier netns
    //    points at a namespace that is gone: it is replaced first.
    let network = async {
        let cached = ctx.cni.cached(&att.container_id, POD_IFNAME)?;
        let result = match cached {
            Some(r) if !fresh => r,
            Some(_) => {
                ctx.cni
                    .del(&att)
                    .await
                    .context("CNI DEL of a stale attachment")?;
                ctx.cni.add(&att).await.context("CNI ADD")?
            }
            None => ctx.cni.add(&att).await.context("CNI ADD")?,
        };
        tracing::debug!(pod = %name, ms = t0.elapsed().as_millis() as u64, "sandbox: CNI done");
        anyhow::Ok(pod_ips(&result, &ctx.node_ip))
    };
    let pause = async {
        let files = files::prepare(&ctx.config, pod, &[]).context("pod files")?;
        if fresh && task::labels(&ctx.rt, &id).await?.is_some() {
            task::remove(&ctx.rt, &id).await?;
        }
        let started = start_pause(ctx, pod, &netns, &files).await?;
        tracing::debug!(pod = %name, ms = t0.elapsed().as_millis() as u64, "sandbox: pause created");
        anyhow::Ok(started)
    };
    let (ips, pause) = tokio::join!(network, pause);
    let (ips, (pid, starting)) = (ips?, pause?);
    let ip = ips.first().cloned();

    // 3. The pod's network policies, before any container can run: the
    //    pause container holds only namespaces and runs no code of the pod.
    if let (Some(gate), false) = (ctx.network_gate.clone(), ips.is_empty()) {
        let (p, all) = (pod.clone(), ips.clone());
        tokio::task::spawn_blocking(move || gate.pod_networked(&p, &all))
            .await
            .context("the network gate task")?
            .context("program the pod's network policies")?;
        tracing::debug!(pod = %name, ms = t0.elapsed().as_millis() as u64, "sandbox: network policies in place");
    }

    // 4. Its hostPorts, on the node's addresses.
    if let (Some(h), Some(addr)) = (ctx.hostports.clone(), ip.clone()) {
        let ports = crate::hostport::mappings(pod, &addr)?;
        let u = uid.clone();
        let refused = tokio::task::spawn_blocking(move || h.set(&u, ports))
            .await
            .context("the hostPort task")?
            .context("program the pod's hostPorts")?;
        for m in refused {
            tracing::warn!(pod = %name, port = m.host_port, proto = m.proto, "hostPort held by another pod; not mapped");
        }
    }

    // 5. The pod's files, now with its IPs in /etc/hosts.
    let files = files::prepare(&ctx.config, pod, &ips).context("pod files")?;
    Ok((
        Sandbox {
            id,
            pid,
            ip,
            ips,
            files,
        },
        starting,
    ))
}

/// A hostNetwork pod: no namespace of its own and no CNI; its IP is the
/// node's.
async fn ensure_host_network(
    ctx: &Context,
    pod: &Pod,
    uid: &str,
) -> Result<(Sandbox, Option<Starting>)> {
    let ip = Some(ctx.node_ip.clone());
    let files = files::prepare(&ctx.config, pod, std::slice::from_ref(&ctx.node_ip))
        .context("pod files")?;
    // The spec ignores the netns path for hostNetwork pods.
    let (pid, starting) =
        start_pause(ctx, pod, std::path::Path::new("/proc/1/ns/net"), &files).await?;
    Ok((
        Sandbox {
            id: sandbox_id(uid),
            pid,
            ips: ip.iter().cloned().collect(),
            ip,
            files,
        },
        starting,
    ))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// Creates (or finds) and starts the pause container; returns its pid.
async fn start_pause(
    ctx: &Context,
    pod: &Pod,
    netns: &std::path::Path,
    files: &PodFiles,
) -> Result<(u32, Option<Starting>)> {
    let uid = uid_of(pod);
    let id = sandbox_id(&uid);
    let params = spec::SandboxParams {
        pod,
        image: &ctx.pause.config,
        netns,
        hostname: &spec::pod_hostname(pod),
        files,
        cgroups_path: spec::cgroups_path(&uid, &id),
        policy: &ctx.config.node_policy(),
    };
    let oci = spec::sandbox_spec(&params).context("sandbox spec")?;
    let labels = HashMap::from([
        (labels::KIND.to_string(), labels::KIND_SANDBOX.to_string()),
        (labels::POD_UID.to_string(), uid.clone()),
        (
            labels::POD_NAME.to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (labels::POD_NAMESPACE.to_string(), namespace(pod)),
    ]);
    let new = NewContainer {
        id: &id,
        image: &ctx.pause.name,
        parent_snapshot: &ctx.pause.chain_id,
        spec: &oci,
        labels,
    };
    task::create(&ctx.rt, &new).await?;
    // A new pause task: its namespaces exist once it is created, so the app
    // containers can join them while it is being started; the caller
    // awaits the start before the pass ends.
    if let Some(pid) = task::create_task(&ctx.rt, &id, None).await? {
        let (rt, id) = (ctx.rt.clone(), id.clone());
        let starting = tokio::spawn(async move { task::start_created(&rt, &id).await });
        return Ok((pid, Some(starting)));
    }
    let pid = match task::state(&ctx.rt, &id).await? {
        TaskState::Running { pid } | TaskState::Other { pid } => pid,
        TaskState::Stopped { .. } => {
            // A pause that exited cannot be restarted into the same
            // namespaces' holders; make a new one.
            task::remove(&ctx.rt, &id).await?;
            task::create(&ctx.rt, &new).await?;
            task::start(&ctx.rt, &id, None).await?
        }
        _ => task::start(&ctx.rt, &id, None).await?,
    };
    Ok((pid, None))
}

/// The pod's IPs from a CNI result as kubelet picks them for
/// `status.podIPs`: the first address of the node IP's family (the
/// primary), then the first of the other family, if any.
fn pod_ips(r: &crate::cni::AddResult, node_ip: &str) -> Vec<String> {
    let ips: Vec<std::net::IpAddr> = r.ips.iter().map(|n| n.addr()).collect();
    let v6_first = node_ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_ipv6());
    let first = |v6: bool| ips.iter().find(|a| a.is_ipv6() == v6);
    first(v6_first)
        .into_iter()
        .chain(first(!v6_first))
        .map(|a| a.to_string())
        .collect()
}

/// The first IPv4 address of a CNI result, else the first address.
fn pod_ip(r: &crate::cni::AddResult) -> Option<String> {
    let ips: Vec<std::net::IpAddr> = r.ips.iter().map(|n| n.addr()).collect();
    ips.iter()
        .find(|a| a.is_ipv4())
        .or(ips.first())
        .map(|a| a.to_string())
}

/// Removes the sandbox only (pause, CNI, netns), keeping volumes and app
/// containers' records: used when the pause container died.
pub async fn teardown(ctx: &Context, pod: &Pod) -> Result<()> {
    let uid = uid_of(pod);
    task::remove(&ctx.rt, &sandbox_id(&uid)).await?;
    if host_network(pod) {
        return Ok(());
    }
    let att = attachment(
        &ctx.host(),
        &uid,
        &namespace(pod),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    release_host_ports(&ctx.host(), &att, &uid)?;
    ctx.cni.del(&att).await.context("CNI DEL")?;
    let p = att.netns.clone();
    tokio::task::spawn_blocking(move || hostnet::netns::unpin(&p))
        .await
        .context("unpin the netns")??;
    Ok(())
}

/// Releases the hostPorts of pod `uid`, if it held any, by its address in
/// the attachment's cached CNI result too (read before CNI DEL).
fn release_host_ports(host: &Host<'_>, att: &Attachment, uid: &str) -> Result<()> {
    if let Some(h) = host.hostports {
        let ip = host
            .cni
            .cached(&att.container_id, POD_IFNAME)
            .ok()
            .flatten()
            .and_then(|r| pod_ip(&r))
            .and_then(|ip| ip.parse().ok());
        h.remove(uid, ip).context("release the pod's hostPorts")?;
    }
    Ok(())
}

/// Removes everything the agent holds for pod `uid`, in CRI order: app
/// containers, the pause container, CNI DEL, the netns, the pod's files,
/// volumes, cgroups and logs. `pod` (when still known) names the pod for
/// CNI and the log dir; an orphan is found by its labels instead. Each part
/// already gone is skipped, so this is safe to repeat.
pub async fn remove_pod(host: &Host<'_>, uid: &str, pod: Option<&Pod>) -> Result<()> {
    let owned = task::list_owned(host.rt, labels::POD_UID)
        .await?
        .into_iter()
        .filter(|o| o.labels.get(labels::POD_UID).map(String::as_str) == Some(uid))
        .collect::<Vec<_>>();
    let (mut ns, mut name) = match pod {
        Some(p) => (namespace(p), p.metadata.name.clone().unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    if pod.is_none() {
        if let Some(o) = owned.first() {
            ns = o
                .labels
                .get(labels::POD_NAMESPACE)
                .cloned()
                .unwrap_or_default();
            name = o.labels.get(labels::POD_NAME).cloned().unwrap_or_default();
        }
    }
    let (sandboxes, apps): (Vec<_>, Vec<_>) = owned.into_iter().partition(|o| {
        o.labels.get(labels::KIND).map(String::as_str) == Some(labels::KIND_SANDBOX)
    });
    for o in apps.iter().chain(sandboxes.iter()) {
        task::remove(host.rt, &o.id).await?;
    }
    task::remove(host.rt, &sandbox_id(uid)).await?;
    let att = attachment(host, uid, &ns, &name);
    release_host_ports(host, &att, uid)?;
    if !pod.is_some_and(host_network) {
        host.cni.del(&att).await.context("CNI DEL")?;
    }
    let (netns, run_dir, data_dir) = (
        att.netns.clone(),
        host.config.run_dir.clone(),
        host.config.data_dir.clone(),
    );
    let u = uid.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        hostnet::netns::unpin(&netns).context("unpin the netns")?;
        files::cleanup(&run_dir, &u).context("pod files")?;
        volumes::cleanup(&data_dir, &u).context("volumes")?;
        spec::remove_pod_cgroups(&u).context("pod cgroups")?;
        Ok(())
    })
    .await
    .context("teardown")??;
    if !ns.is_empty() && !name.is_empty() {
        crate::logs::remove_pod_logs(&host.config.log_dir, &ns, &name, uid).context("pod logs")?;
    }
    Ok(())
}

/// How long an orphan's containers get to stop.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ips: &[&str]) -> crate::cni::AddResult {
        crate::cni::AddResult {
            ips: ips.iter().map(|s| s.parse().expect("prefix")).collect(),
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn pod_ips_put_the_node_ips_family_first_one_per_family() {
        // kubelet: the first address of the node IP's family, then the
        // first of the other family; more addresses are left out.
        let r = result(&["fd00:10:244:3::2/64", "10.244.3.2/24", "10.244.3.9/24"]);
        assert_eq!(
            pod_ips(&r, "198.18.0.11"),
            ["10.244.3.2", "fd00:10:244:3::2"]
        );
        assert_eq!(
            pod_ips(&r, "fd00:198:18::b"),
            ["fd00:10:244:3::2", "10.244.3.2"]
        );
        assert_eq!(
            pod_ips(&result(&["10.244.3.2/24"]), "fd00::1"),
            ["10.244.3.2"]
        );
        assert!(pod_ips(&result(&[]), "198.18.0.11").is_empty());
    }
}
