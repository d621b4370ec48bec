//! The overlay benchmark: cross-node pod throughput against the raw
//! underlay and the raw kernel VXLAN path (iperf3), join convergence from a
//! lease write until a remote pod answers against the same kernel entries
//! written with `ip -batch`, and the time to program 1,000 remote leases
//! against one `ip -batch` of the same entries. Nodes are namespaces on an
//! underlay bridge in a namespace of its own, with etcd inside it; the root
//! namespace is never touched and everything goes when `run` returns.

mod join;
mod report;
mod scale;
mod throughput;
mod udp;

pub use throughput::loadavg;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::registry::{Allocators, Registry};
use controlplane::storage::etcd::Etcd;
use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use hostnet::{NetNs, Netlink};
use knode_tests::node::tail;
use netns_tests::agent::Agent;
use netns_tests::cluster::{wait_until, ClusterNet, Pod, UNDERLAY_IP};
use netns_tests::etcd::{EtcdCluster, ETCD};
use netns_tests::{bin_dir, TempDir, TestNs};
use serde_json::json;
use std::sync::Arc;
use tokio::runtime::Runtime;

use crate::controlplane::control_plane_flag;
use crate::Opts;

/// The vxlan device the agent makes (VNI 1).
pub const DEVICE: &str = "knode.1";
/// The iperf3 binary (Debian package `iperf3`).
pub const IPERF3: &str = "/usr/bin/iperf3";
/// How long an agent may take to hold a lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything one run measured.
pub struct Results {
    pub throughput: throughput::Outcome,
    /// The same paths over IPv6 on a dual-stack cluster.
    pub throughput6: throughput::Outcome,
    pub udp: udp::Outcome,
    pub join: join::Outcome,
    pub scale: scale::Outcome,
    pub iperf3_version: String,
    pub etcd_version: String,
    pub cpus: usize,
}

/// Runs the benchmark and writes `overlay.json` and `overlay.svg` to `opts.out`.
pub fn run(opts: &Opts) -> Result<()> {
    require_tools()?;

    eprintln!("overlay: 3 nodes on an underlay with etcd inside it; agents on nodes 0 and 1, node 2 joins by hand");
    let cluster = Cluster::start(3)?;
    let udp_cluster = Cluster::start_backend(2, "udp")?;
    // The bench's own control-plane client and probes run on a thread in
    // node 2 (the joiner): a node's place on the underlay, not the root's.
    let (throughput, udp, join) = cluster.net.node(2).run(|| -> Result<_> {
        let (agents, subnets, pods) = cluster.two_nodes()?;
        eprintln!(
            "overlay: subnets {} and {}, pods {} and {}",
            subnets[0],
            subnets[1],
            pods[0].ip(),
            pods[1].ip()
        );
        let tp = throughput::measure(&cluster, &pods, &subnets)
            .context("throughput")
            .with_context(|| agent_logs(&agents))?;
        let udp = udp_vs_vxlan(&udp_cluster, &pods)?;
        let cp = Cp::connect(&cluster.etcd.endpoints())?;
        let join = join::measure(&cluster, &cp, &pods[0], &subnets, opts.warmup)
            .context("join convergence")
            .with_context(|| agent_logs(&agents))?;
        Ok((tp, udp, join))
    })??;
    drop(udp_cluster);
    drop(cluster);
    let throughput6 = throughput_ipv6()?;

    eprintln!("overlay: scale, a fresh underlay and etcd; nodes come and go per round");
    let cluster = Cluster::start(scale::NODES)?;
    let scale = cluster
        .net
        .node(0)
        .run(|| scale::measure(&cluster))?
        .context("scale")?;
    drop(cluster);

    let results = Results {
        throughput,
        throughput6,
        udp,
        join,
        scale,
        iperf3_version: crate::report::first_line(&[IPERF3, "--version"]),
        etcd_version: crate::report::first_line(&[ETCD, "--version"]),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
    };
    report::write(opts, &results)
}

/// Only the throughput part (`bench overlay-throughput`): the same
/// cluster and paths, the table printed and `overlay-throughput.json`
/// written; quicker when working on the data path.
pub fn run_throughput(opts: &Opts) -> Result<()> {
    require_tools()?;
    let cluster = Cluster::start(3)?;
    let udp_cluster = Cluster::start_backend(2, "udp")?;
    let (tp, udp) = cluster.net.node(2).run(|| -> Result<_> {
        let (agents, subnets, pods) = cluster.two_nodes()?;
        let tp = throughput::measure(&cluster, &pods, &subnets)
            .context("throughput")
            .with_context(|| agent_logs(&agents))?;
        Ok((tp, udp_vs_vxlan(&udp_cluster, &pods)?))
    })??;
    drop(udp_cluster);
    drop(cluster);
    let tp6 = throughput_ipv6()?;
    let mut doc = crate::report::host_facts();
    doc["benchmark"] = json!("overlay-throughput");
    doc["throughput"] = report::throughput_json(&tp);
    doc["throughput_ipv6"] = report::throughput_json(&tp6);
    doc["udp"] = report::udp_json(&udp);
    print!("{}", report::throughput_table(&tp, &doc["throughput"]));
    print!(
        "{}",
        report::throughput_table(&tp6, &doc["throughput_ipv6"])
    );
    print!("{}", report::udp_table(&udp, &doc["udp"]));
    crate::report::write_file(
        &opts.out,
        "overlay-throughput.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}

/// The dual-stack cluster CIDR of the IPv6 measurement.
const DUAL_STACK: &str = "10.244.0.0/16,fd00:10:244::/56";

/// IPv6 pod to pod over vxlan against the IPv6 underlay: a two-node
/// dual-stack cluster whose underlay has IPv6 addresses (so IPv6 pod
/// traffic goes over knode-v6.1 on the IPv6 underlay).
fn throughput_ipv6() -> Result<throughput::Outcome> {
    eprintln!("overlay: IPv6, a dual-stack cluster on an IPv6 underlay");
    let mut cluster = Cluster::start(2)?;
    cluster.net.add_ipv6()?;
    cluster.network = DUAL_STACK;
    let (agents, _, pods) = cluster.two_nodes()?;
    let vteps6 = [wait_vtep6(&agents[0])?, wait_vtep6(&agents[1])?];
    throughput::measure_ipv6(&cluster, &pods, vteps6)
        .context("IPv6 throughput")
        .with_context(|| agent_logs(&agents))
}

/// An agent's IPv6 VTEP address: its IPv6 subnet's first address
/// (`FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64` -> `fd00:10:244:3::`).
fn wait_vtep6(agent: &Agent) -> Result<String> {
    wait_subnet(agent)?;
    let env = std::fs::read_to_string(agent.dir().join("subnet.env"))?;
    let first: std::net::Ipv6Addr = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .and_then(|v| v.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("no FLANNEL_IPV6_SUBNET in {env:?}"))?;
    Ok(std::net::Ipv6Addr::from(u128::from(first) - 1).to_string())
}

/// The udp backend's pods in `udp_cluster` against vxlan's `vxlan_pods`.
fn udp_vs_vxlan(udp_cluster: &Cluster, vxlan_pods: &[Pod; 2]) -> Result<udp::Outcome> {
    let (agents, _, pods) = udp_cluster.two_nodes().context("the udp cluster")?;
    udp::measure(vxlan_pods, &pods, [agents[0].pid(), agents[1].pid()])
        .context("udp vs vxlan")
        .with_context(|| agent_logs(&agents))
}

/// etcd, iperf3 and our binaries, or an error that says how to get them.
fn require_tools() -> Result<()> {
    for tool in [ETCD, IPERF3] {
        if !Path::new(tool).is_file() {
            bail!("{tool} missing: install etcd-server and iperf3 (make bootstrap does)");
        }
    }
    crate::require_node_bins()
}

/// Nodes on an underlay, etcd inside it. Agents are the caller's, and
/// must be dropped before this.
pub struct Cluster {
    // Field order is drop order: etcd, then the namespaces.
    pub etcd: EtcdCluster,
    pub net: ClusterNet,
    /// The agents' `--backend`.
    backend: &'static str,
    /// The cluster network [`Cluster::two_nodes`] proposes.
    pub network: &'static str,
}

impl Cluster {
    /// `nodes` node namespaces and a one-member etcd on the underlay bridge.
    pub fn start(nodes: usize) -> Result<Cluster> {
        Cluster::start_backend(nodes, "vxlan")
    }

    /// As [`Cluster::start`], its agents on `backend`.
    pub fn start_backend(nodes: usize, backend: &'static str) -> Result<Cluster> {
        let net = ClusterNet::new(nodes)?;
        let etcd = EtcdCluster::start_in(net.underlay().path(), UNDERLAY_IP, 1)?;
        Ok(Cluster {
            etcd,
            net,
            backend,
            network: "10.244.0.0/16",
        })
    }

    /// Starts `knode agent` on node `i`: pods off, the cluster's backend on eth0, the
    /// cluster network `network` proposed, every path in its temp dir.
    pub fn agent(&self, i: usize, network: &str) -> Result<Agent> {
        self.agent_in(TempDir::new(&format!("ovb-n{i}"))?, i, network)
    }

    /// As [`Cluster::agent`], living in `dir` (its subnet file is `dir/subnet.env`).
    pub fn agent_in(&self, dir: TempDir, i: usize, network: &str) -> Result<Agent> {
        let p = |n: &str| dir.path().join(n).display().to_string();
        let global = vec![
            "--control-plane".to_string(),
            control_plane_flag(&self.etcd.endpoints()),
            "--cni-conf-dir".to_string(),
            p("cni-conf"),
        ];
        let flags = [
            "--node-name",
            &format!("bench-node-{i}"),
            "--disable",
            "pods",
            "--iface",
            "eth0",
            "--backend",
            self.backend,
            "--cluster-cidr",
            network,
            "--subnet-file",
            &p("subnet.env"),
        ];
        let flags = flags.iter().map(|s| s.to_string()).collect();
        Agent::start_node(dir, self.net.node(i).path(), global, flags)
            .with_context(|| format!("start the agent on node {i}"))
    }

    /// Agents on nodes 0 and 1, their subnets once held, and a pod on each.
    pub fn two_nodes(&self) -> Result<([Agent; 2], [Ipv4Addr; 2], [Pod; 2])> {
        let agents = [self.agent(0, self.network)?, self.agent(1, self.network)?];
        let subnets = [wait_subnet(&agents[0])?, wait_subnet(&agents[1])?];
        let pods = [
            self.pod(0, &agents[0], "p0")?,
            self.pod(1, &agents[1], "p1")?,
        ];
        Ok((agents, subnets, pods))
    }

    /// A pod on node `i`, networked by our plugins from its agent's conflist.
    /// The agent writes its conflist just after its subnet file (and, for
    /// udp, after its data path is up), so it is waited for.
    pub fn pod(&self, i: usize, agent: &Agent, name: &str) -> Result<Pod> {
        let conf = agent.dir().join("cni-conf");
        let written = wait_until(LEASE_TIMEOUT, || {
            std::fs::read_dir(&conf).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "conflist"))
            })
        });
        if !written {
            bail!(
                "node {i}: no conflist in {} after {LEASE_TIMEOUT:?}",
                conf.display()
            );
        }
        Pod::add(self.net.node(i), &conf, &bin_dir(), name)
    }
}

/// Waits for an agent's subnet file; returns its subnet's network address
/// (the subnets are /24s: `FLANNEL_SUBNET=10.244.3.1/24` -> 10.244.3.0).
pub fn wait_subnet(agent: &Agent) -> Result<Ipv4Addr> {
    let path = agent.dir().join("subnet.env");
    if !wait_until(LEASE_TIMEOUT, || path.exists()) {
        bail!(
            "no subnet file after {LEASE_TIMEOUT:?}; agent log:\n{}",
            agent.log()
        );
    }
    let env = std::fs::read_to_string(&path)?;
    subnet_of(&env).with_context(|| format!("{}: {env:?}", path.display()))
}

/// The /24 a subnet.env names.
fn subnet_of(env: &str) -> Result<Ipv4Addr> {
    let v = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .context("no FLANNEL_SUBNET")?;
    let (ip, len) = v.split_once('/').context("no prefix length")?;
    if len != "24" {
        bail!("the benchmark expects /24 subnets, got /{len}");
    }
    let o = ip.parse::<Ipv4Addr>()?.octets();
    Ok(Ipv4Addr::new(o[0], o[1], o[2], 0))
}

/// The end of each agent's log, for an error's context.
fn agent_logs(agents: &[Agent]) -> String {
    let mut s = String::from("agent logs (last 40 lines each):");
    for (i, a) in agents.iter().enumerate() {
        s.push_str(&format!("\n--- node {i}:\n{}", tail(&a.log(), 40)));
    }
    s
}

/// The SubnetLease a vxlan node at `public_ip` with VTEP `mac` holds for `subnet` (a /24).
pub fn lease(subnet: Ipv4Addr, public_ip: Ipv4Addr, mac: &str) -> Result<Object> {
    let cidr = format!("{subnet}/24");
    Object::from_value(json!({
        "apiVersion": "knode.io/v1", "kind": "SubnetLease",
        "metadata": {"name": cidr.replace('/', "-")},
        "spec": {"subnet": cidr, "PublicIP": public_ip.to_string(), "BackendType": "vxlan",
                 "BackendData": {"VNI": 1, "VtepMAC": mac}},
    }))
    .with_context(|| format!("build the lease of {cidr}"))
}

/// The control plane as a node reaches it: our etcd backend, in process.
/// Made on a thread inside a node's namespace and used only from there
/// (its runtime runs on the calling thread), so every connection it opens
/// stays on the underlay.
pub struct Cp {
    rt: Runtime,
    reg: Arc<Registry>,
}

impl Cp {
    /// Connects to etcd at `endpoints` (client URLs).
    pub fn connect(endpoints: &[String]) -> Result<Cp> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the tokio runtime")?;
        let reg = rt
            .block_on(async { Etcd::connect(endpoints).await })
            .context("connect to etcd")?;
        Ok(Cp {
            rt,
            reg: Arc::new(Registry::new(Arc::new(reg), Allocators::default())),
        })
    }

    /// Creates `obj` (no TTL); an object that exists already is fine when `exists_ok`.
    pub fn create(&self, obj: Object, exists_ok: bool) -> Result<()> {
        let what = obj.describe();
        match self.rt.block_on(self.reg.create(obj, None)) {
            Ok(_) => Ok(()),
            Err(controlplane::Error::AlreadyExists { .. }) if exists_ok => Ok(()),
            Err(e) => Err(e).with_context(|| format!("create {what}")),
        }
    }

    /// Deletes the lease of `subnet` (a /24).
    pub fn delete_lease(&self, subnet: Ipv4Addr) -> Result<()> {
        let name = format!("{subnet}-24");
        self.rt
            .block_on(
                self.reg
                    .delete(&ObjectRef::new(Kind::SubnetLease, "", &name), None),
            )
            .with_context(|| format!("delete lease {name}"))?;
        Ok(())
    }

    /// Creates every object, `concurrency` at a time; returns when the last
    /// one is stored.
    pub fn create_all(&self, objs: Vec<Object>, concurrency: usize) -> Result<()> {
        self.each(objs, concurrency, |reg, o| async move {
            let what = o.describe();
            reg.create(o, None)
                .await
                .map(drop)
                .with_context(|| format!("create {what}"))
        })
    }

    /// Deletes the leases of `subnets`, `concurrency` at a time.
    pub fn delete_leases(&self, subnets: &[Ipv4Addr], concurrency: usize) -> Result<()> {
        self.each(subnets.to_vec(), concurrency, |reg, s| async move {
            let name = format!("{s}-24");
            reg.delete(&ObjectRef::new(Kind::SubnetLease, "", &name), None)
                .await
                .map(drop)
                .with_context(|| format!("delete lease {name}"))
        })
    }

    /// Runs `f` on every item with `concurrency` tasks, each taking a share in order.
    fn each<T, F, Fut>(&self, items: Vec<T>, concurrency: usize, f: F) -> Result<()>
    where
        T: Send + 'static,
        F: Fn(Arc<Registry>, T) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let per = items.len().div_ceil(concurrency.max(1)).max(1);
        let mut items = items.into_iter().peekable();
        self.rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            while items.peek().is_some() {
                let share: Vec<T> = items.by_ref().take(per).collect();
                let (reg, f) = (self.reg.clone(), f.clone());
                tasks.spawn(async move {
                    for item in share {
                        f(reg.clone(), item).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.context("a control-plane task panicked")??;
            }
            Ok(())
        })
    }
}

/// A netlink connection bound to node namespace `ns`, usable from any thread.
pub fn netlink_in(ns: &TestNs) -> Result<Netlink> {
    let nn = NetNs::open(ns.path())?;
    Netlink::new_in(&nn).with_context(|| format!("netlink in {}", ns.name()))
}

/// Which routes [`overlay_routes`] counts: /24s out of `device` whose
/// destination lies in `first..=last`.
#[derive(Debug, Clone, Copy)]
pub struct RouteFilter {
    pub device: &'static str,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// How many routes the filter matches (0 while the device does not exist).
pub fn overlay_routes(nl: &mut Netlink, f: RouteFilter) -> Result<usize> {
    let Some(dev) = nl.link().get_by_name(f.device)? else {
        return Ok(0);
    };
    let routes = nl.route().list(true)?;
    Ok(routes
        .iter()
        .filter(|r| r.oif == Some(dev.index) && r.dst.prefix_len() == 24)
        .filter(|r| match r.dst.addr() {
            IpAddr::V4(a) => (f.first..=f.last).contains(&a),
            IpAddr::V6(_) => false,
        })
        .count())
}

/// Polls every `every` until [`overlay_routes`] reaches `want` (true) or
/// falls to 0 when `want` is 0; returns when it did, or fails after `timeout`.
pub fn wait_routes(
    nl: &mut Netlink,
    f: RouteFilter,
    want: usize,
    every: Duration,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut last = 0;
    loop {
        last = overlay_routes(nl, f).unwrap_or(last);
        let now = Instant::now();
        if (want == 0 && last == 0) || (want > 0 && last >= want) {
            return Ok(now);
        }
        if now > deadline {
            bail!(
                "{} routes via {} after {timeout:?}, waiting for {want}",
                last,
                f.device
            );
        }
        std::thread::sleep(every);
    }
}

/// Runs each batch file in namespace `ns` in order (`bridge -batch` or
/// `ip -batch`), spawned from a thread already inside it; returns the time
/// from the first spawn until the last exit.
pub fn run_batches(ns: &TestNs, batches: &[(&str, &Path)]) -> Result<Duration> {
    ns.run(|| -> Result<Duration> {
        let t0 = Instant::now();
        for (tool, file) in batches {
            let out = std::process::Command::new(tool)
                .arg("-batch")
                .arg(file)
                .stdin(std::process::Stdio::null())
                .output()
                .with_context(|| format!("run {tool} -batch"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -batch {} in {}: {}: {}",
                    file.display(),
                    ns.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(t0.elapsed())
    })?
}

/// `02:6b:62:HH:MM:LL` from a number: locally administered, unicast.
pub fn mac(n: u32) -> String {
    let b = n.to_be_bytes();
    format!("02:6b:62:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_from_the_subnet_file() -> Result<()> {
        let env =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.37.1/24\nFLANNEL_MTU=1450\n";
        assert_eq!(subnet_of(env)?, Ipv4Addr::new(10, 244, 37, 0));
        assert!(subnet_of("FLANNEL_SUBNET=10.1.0.1/16\n").is_err());
        assert!(subnet_of("FLANNEL_MTU=1450\n").is_err());
        Ok(())
    }

    #[test]
    fn leases_have_the_stored_shape() -> Result<()> {
        let l = lease(
            Ipv4Addr::new(10, 244, 7, 0),
            Ipv4Addr::new(198, 18, 0, 99),
            &mac(0x0102),
        )?;
        let v = l.to_value();
        assert_eq!(v["metadata"]["name"], "10.244.7.0-24");
        assert_eq!(v["spec"]["subnet"], "10.244.7.0/24");
        assert_eq!(v["spec"]["PublicIP"], "198.18.0.99");
        assert_eq!(v["spec"]["BackendData"]["VtepMAC"], "02:6b:62:00:01:02");
        Ok(())
    }
}
