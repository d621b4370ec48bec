//! The overlay tests' cluster: several nodes as namespaces on an underlay
//! bridge, etcd in the underlay namespace and one `knode agent` (pods
//! disabled) per node, with pods made by our CNI plugins from the conflist
//! each agent writes. Shared by the single- and dual-stack overlay tests.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_tests::agent::Agent;
use netns_tests::cluster::{wait_until, ClusterNet, Pod, UNDERLAY_IP};
use netns_tests::etcd::{require_etcd, EtcdCluster};
use netns_tests::{bin_dir, require_root, TempDir, TestNs};

pub const NETWORK: &str = "10.244.0.0/16";
/// Short enough that a node that left is forgotten within a test.
pub const TTL: &str = "4s";
pub const RENEW_MARGIN: &str = "2s";
pub const RESYNC: &str = "1s";

/// A cluster: the network, etcd, and one agent per node.
pub struct Overlay {
    pub agents: Vec<Option<Agent>>,
    // Dropped after the agents: etcd, then the namespaces.
    pub etcd: EtcdCluster,
    pub net: ClusterNet,
    pub backend: &'static str,
    /// `--cluster-cidr` of every agent.
    pub cidr: String,
    /// More flags for every agent.
    pub extra: Vec<String>,
}

impl Overlay {
    /// An overlay on `net` with no agents yet (see [`Overlay::spawn_agent`]).
    pub fn empty(net: ClusterNet, etcd: EtcdCluster, backend: &'static str) -> Overlay {
        Overlay {
            agents: Vec::new(),
            etcd,
            net,
            backend,
            cidr: NETWORK.to_string(),
            extra: Vec::new(),
        }
    }

    /// A network of `nodes` nodes, before any agent: for tests that add to
    /// the underlay (addresses, routes) first. [`Overlay::run_agents`] starts them.
    pub fn prepare(nodes: usize, backend: &'static str) -> Result<Overlay> {
        let net = ClusterNet::new(nodes)?;
        let etcd = EtcdCluster::start_in(net.underlay().path(), UNDERLAY_IP, 1)?;
        Ok(Overlay::empty(net, etcd, backend))
    }

    /// Starts one agent per node and waits for every subnet file.
    pub fn run_agents(&mut self) -> Result<()> {
        let nodes = self.net.node_indices().len();
        for i in 0..nodes {
            let a = self.spawn_agent(i)?;
            self.agents.push(Some(a));
        }
        for i in 0..nodes {
            self.wait_subnet(i)?;
        }
        Ok(())
    }

    pub fn start(nodes: usize, backend: &'static str) -> Result<Overlay> {
        Overlay::start_with(nodes, backend, None)
    }

    /// As [`Overlay::start`], with `net_conf` (net-conf.json) stored in the
    /// control plane before any agent starts.
    pub fn start_with(
        nodes: usize,
        backend: &'static str,
        net_conf: Option<&str>,
    ) -> Result<Overlay> {
        let mut o = Overlay::prepare(nodes, backend)?;
        if let Some(c) = net_conf {
            o.store_net_conf(c)?;
        }
        o.run_agents()?;
        Ok(o)
    }

    /// Stores the cluster's network config (ConfigMap kube-system/knode-network).
    pub fn store_net_conf(&self, json: &str) -> Result<()> {
        let manifest = serde_json::json!([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "knode-network", "namespace": "kube-system"},
             "data": {"net-conf.json": json}},
        ]);
        let docs: Vec<String> = manifest
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        run_cli_in(
            self.net.node(0),
            &self.control_plane(),
            &["apply", "-f", "-"],
            Some(&docs.join("\n---\n")),
        )?;
        Ok(())
    }

    pub fn control_plane(&self) -> String {
        self.etcd.control_plane()
    }

    pub fn spawn_agent(&self, i: usize) -> Result<Agent> {
        let dir = TempDir::new(&format!("overlay-n{i}"))?;
        let root = dir.path().to_path_buf();
        let p = |n: &str| root.join(n).display().to_string();
        let global = vec![
            "--control-plane".to_string(),
            self.control_plane(),
            "--cni-conf-dir".to_string(),
            p("cni-conf"),
        ];
        let agent = [
            "--node-name",
            &format!("node-{i}"),
            "--disable",
            "pods",
            "--iface",
            "eth0",
            "--backend",
            self.backend,
            "--cluster-cidr",
            &self.cidr,
            "--subnet-file",
            &p("subnet.env"),
            "--subnet-lease-ttl",
            TTL,
            "--subnet-lease-renew-margin",
            RENEW_MARGIN,
            "--overlay-resync-period",
            RESYNC,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.extra.iter().cloned())
        .collect();
        Agent::start_node(dir, self.net.node(i).path(), global, agent)
    }

    pub fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("agent running")
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.agent(i).dir().join("subnet.env")
    }

    /// Waits for node `i`'s subnet file; returns its subnet (`10.244.x.0/24`).
    pub fn wait_subnet(&self, i: usize) -> Result<String> {
        let path = self.subnet_file(i);
        if !wait_until(Duration::from_secs(15), || path.exists()) {
            bail!(
                "node {i}: no subnet file after 15 s; agent log:\n{}",
                self.agent(i).log()
            );
        }
        subnet_of(&std::fs::read_to_string(&path)?)
    }

    /// A pod on node `i` from the conflist its agent wrote, with the IPAM
    /// store moved into the agent's temp dir (the default store is shared
    /// by everything on the machine).
    pub fn pod(&self, i: usize, name: &str) -> Result<Pod> {
        let path = self.agent(i).dir().join("cni-conf/10-knode.conflist");
        // Written right after the lease (and the subnet file).
        wait_until(Duration::from_secs(10), || path.exists());
        let mut list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        list["plugins"][0]["ipam"]["dataDir"] = serde_json::json!(self.agent(i).dir().join("ipam"));
        Pod::add_list(self.net.node(i), &list, &bin_dir(), name)
    }

    pub fn node(&self, i: usize) -> &TestNs {
        self.net.node(i)
    }

    /// Runs one more agent on node `i` with `flags` (pods off, no API)
    /// in a temp dir, expecting it to stop; its output.
    pub fn failing_agent(&self, i: usize, flags: &[&str]) -> Result<std::process::Output> {
        let dir = TempDir::new("overlay-bad")?;
        let out = netns_tests::ns_command(Some(self.node(i).path()), netns_tests::our_bin("knode"))
            .args([
                "--config",
                "/dev/null",
                "--control-plane",
                &self.control_plane(),
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            // No Kubernetes API: it would write /etc/knode/knode.yaml.
            .args([
                "agent",
                "--node-name",
                "bad",
                "--disable",
                "pods",
                "--api-port",
                "0",
            ])
            .args(flags)
            .arg("--subnet-file")
            .arg(dir.path().join("subnet.env"))
            .output()?;
        Ok(out)
    }
}

/// The subnet a subnet.env names (`FLANNEL_SUBNET=10.244.3.1/24` -> `10.244.3.0/24`).
pub fn subnet_of(env: &str) -> Result<String> {
    let v = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .context("no FLANNEL_SUBNET")?;
    let (ip, len) = v
        .split_once('/')
        .context("FLANNEL_SUBNET without a length")?;
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "0";
    Ok(format!("{}/{len}", octets.join(".")))
}

pub fn prereqs(test: &str) -> bool {
    require_root(test) && require_etcd(test)
}

/// Every pod pings every other pod.
pub fn all_ping(pods: &[&Pod]) -> Result<()> {
    for a in pods {
        for b in pods {
            if a.ip() != b.ip() && !wait_until(Duration::from_secs(5), || a.ns().ping(b.ip())) {
                bail!("pod {} cannot ping pod {}", a.ip(), b.ip());
            }
        }
    }
    Ok(())
}

/// Runs the `knode` CLI inside `ns` against `control_plane`; its stdout.
pub fn run_cli_in(
    ns: &TestNs,
    control_plane: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let knode = netns_tests::our_bin("knode");
    let mut cmd = netns_tests::ns_command(Some(ns.path()), &knode);
    cmd.args(["--config", "/dev/null", "--control-plane", control_plane])
        .args(args);
    let out = netns_tests::agent::run_with_stdin(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "knode {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a server in `server` that answers each connection with the
/// client address it saw; connects from `client` and returns the answer
/// (IPv4 or IPv6, by `server_ip`; an IPv6 answer in its short form).
pub fn peer_seen(server: &TestNs, server_ip: &str, client: &TestNs, port: u16) -> Result<String> {
    let v6 = server_ip.contains(':');
    let (listen, target) = if v6 {
        (
            format!("TCP6-LISTEN:{port},fork,reuseaddr"),
            format!("TCP6:[{server_ip}]:{port},connect-timeout=2"),
        )
    } else {
        (
            format!("TCP-LISTEN:{port},fork,reuseaddr"),
            format!("TCP:{server_ip}:{port},connect-timeout=2"),
        )
    };
    let mut child = server
        .cmd(&["socat", &listen, "SYSTEM:echo $SOCAT_PEERADDR"])
        .spawn()
        .context("start the peer-address server")?;
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        let out = client.cmd(&["socat", "-T", "3", "-", &target]).output();
        got = out
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        !got.is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    if !ok {
        bail!(
            "no answer from {server_ip} port {port} in {}",
            server.name()
        );
    }
    if !v6 {
        return Ok(got);
    }
    // socat spells IPv6 out in full (fd00:0010:…): compare as addresses.
    let addr: std::net::Ipv6Addr = got
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .with_context(|| format!("peer address {got:?}"))?;
    Ok(addr.to_string())
}
