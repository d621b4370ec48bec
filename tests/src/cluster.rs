//! A whole cluster for end-to-end tests: N nodes as network namespaces on
//! an underlay (`netns_tests::cluster::ClusterNet`), etcd inside the
//! underlay namespace, one private containerd shared by every node (each
//! agent in a containerd namespace of its own), and on each node a
//! `knode agent` on etcd running every part: pods, the overlay (vxlan)
//! and the proxy. Every path is in a temp dir; everything goes on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::containerd::Containerd;
use crate::etcd::EtcdCluster;
use crate::node::{dns_flags, is_running, node_flags, tail};
use crate::{unique, TempDir};
use netns_tests::cluster::{wait_until, ClusterNet, UNDERLAY_IP};
use netns_tests::TestNs;

/// Every agent's cluster token (the first seals the cluster CA with it).
pub const CLUSTER_TOKEN: &str =
    "6b6e6f64652d636c75737465722d746573742d746f6b656e2d3031323334353637";

/// The cluster's pod network.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// One node: its agent and where its files are.
pub struct ClusterNode {
    pub agent: Agent,
    pub name: String,
    root: PathBuf,
    namespace: String,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.agent.kill9();
        crate::containerd::unmount_below(&self.root);
    }
}

impl ClusterNode {
    /// The agent's containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `knode ARGS` on this node (in its namespace, on etcd); fails with stderr.
    pub fn knode(&self, args: &[&str]) -> Result<String> {
        self.knode_stdin(args, None)
    }

    /// `knode ARGS` with `stdin`; fails with stderr.
    pub fn knode_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.agent.knode_stdin(args, stdin)?;
        if !out.status.success() {
            bail!(
                "knode {} on {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub struct Cluster {
    // Field order is drop order: agents (and their mounts), then
    // containerd kills what runs, then etcd, then the namespaces.
    pub nodes: Vec<ClusterNode>,
    pub containerd: Containerd,
    pub etcd: EtcdCluster,
    pub net: ClusterNet,
    /// Every agent's `--cluster-cidr`.
    cidr: &'static str,
    /// Every agent's and CLI's `--service-cidr`, when not the default.
    service_cidr: Option<&'static str>,
    /// The agent flags every node was started with (a node added later
    /// gets them too).
    agent_flags: Vec<String>,
}

impl Cluster {
    /// For a test: `n` nodes with the busybox test image imported on each,
    /// or `None` (skip) without root, containerd or etcd — a failure under
    /// `CI=true`.
    pub fn for_test(test: &str, n: usize) -> Option<Cluster> {
        Cluster::for_test_with(test, n, &[])
    }

    /// [`Cluster::for_test`] with more agent flags for every node.
    pub fn for_test_with(test: &str, n: usize, agent_flags: &[&str]) -> Option<Cluster> {
        if !crate::require_root(test)
            || !crate::containerd::require_containerd(test)
            || !crate::etcd::require_etcd(test)
        {
            return None;
        }
        Some(Cluster::start(n, agent_flags).expect("start the cluster"))
    }

    /// Starts the underlay, etcd, containerd and `n` agents (with
    /// `agent_flags` besides the harness's); waits until every node
    /// registered and holds its subnet.
    pub fn start(n: usize, agent_flags: &[&str]) -> Result<Cluster> {
        Cluster::start_cidr(n, CLUSTER_CIDR, agent_flags)
    }

    /// [`Cluster::start`] on the pod network `cidr` (e.g. a dual-stack pair).
    pub fn start_cidr(n: usize, cidr: &'static str, agent_flags: &[&str]) -> Result<Cluster> {
        Self::start_cidrs(n, cidr, None, agent_flags)
    }

    /// The same with `--service-cidr service_cidr` for every agent and
    /// every CLI call (both write Services, each with its own allocators).
    pub fn start_cidrs(
        n: usize,
        cidr: &'static str,
        service_cidr: Option<&'static str>,
        agent_flags: &[&str],
    ) -> Result<Cluster> {
        let net = ClusterNet::new(n)?;
        let etcd = EtcdCluster::start_in(net.underlay().path(), UNDERLAY_IP, 1)?;
        let containerd = Containerd::start()?;
        let mut c = Cluster {
            nodes: Vec::new(),
            containerd,
            etcd,
            net,
            cidr,
            service_cidr,
            agent_flags: agent_flags.iter().map(|f| f.to_string()).collect(),
        };
        for i in 0..n {
            let node = c.spawn(i)?;
            c.nodes.push(node);
        }
        let img = TempDir::new("img")?;
        let tar = crate::image::busybox_oci_tar(img.path())?;
        for i in 0..n {
            c.join(i, &tar)?;
        }
        Ok(c)
    }

    /// One more node joins, with the flags of the others: its namespace on
    /// the underlay, its agent started; waits until it registered and holds
    /// its subnet, imports busybox. Returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.net.add_node()?;
        anyhow::ensure!(i == self.nodes.len(), "node {i}: the indices diverged");
        let node = self.spawn(i)?;
        self.nodes.push(node);
        let img = TempDir::new("img")?;
        let tar = crate::image::busybox_oci_tar(img.path())?;
        self.join(i, &tar)?;
        Ok(i)
    }

    /// Waits for node `i` to join; imports the image `tar` there.
    fn join(&self, i: usize, tar: &Path) -> Result<()> {
        self.wait_joined(i)?;
        self.nodes[i]
            .knode(&["image", "import", &tar.display().to_string()])
            .context("import busybox")?;
        Ok(())
    }

    /// `etcd://` for the agents and the CLI.
    pub fn control_plane(&self) -> String {
        self.etcd.control_plane()
    }

    fn spawn(&self, i: usize) -> Result<ClusterNode> {
        let dir = TempDir::new(&format!("e2e-n{i}"))?;
        let root = dir.path().to_path_buf();
        let name = format!("node-{i}");
        let namespace = unique(&format!("knode-e2e-n{i}-"));
        let mut global = vec!["--control-plane".to_string(), self.control_plane()];
        global.extend(node_flags(&root, &self.containerd, &namespace)?);
        if let Some(sc) = self.service_cidr {
            global.extend(["--service-cidr".to_string(), sc.to_string()]);
        }
        let mut agent: Vec<String> = [
            "--node-name",
            &name,
            "--iface",
            "eth0",
            "--cluster-cidr",
            self.cidr,
            "--proxy-min-sync-period",
            "0s",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.agent_flags.iter().cloned())
        .collect();
        agent.extend(dns_flags(&root)?);
        // Each node serves the node API (kubelet's port) on its underlay
        // address, as a multi-node cluster must for the agents' APIs to
        // reach every node's pods; its certificate is the cluster CA's,
        // which the token opens.
        for (flag, value) in [
            ("--kubelet-port", "10250"),
            ("--kubelet-bind-address", "0.0.0.0"),
            ("--token", CLUSTER_TOKEN),
        ] {
            if !self.agent_flags.iter().any(|f| f == flag) {
                agent.extend([flag.to_string(), value.to_string()]);
            }
        }
        let agent = Agent::start_node(dir, self.net.node(i).path(), global, agent)?;
        Ok(ClusterNode {
            agent,
            name,
            root,
            namespace,
        })
    }

    /// Waits for node `i`'s default conflist (its lease) and its Node
    /// object. The conflist then gets a `dataDir` in the test's dir, so
    /// host-local keeps its reservations there and not in the machine's
    /// /var/lib/cni; an edited conflist is the operator's, and the agent
    /// leaves it alone.
    fn wait_joined(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let conf = node.root.join("cni-conf").join("10-knode.conflist");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !conf.exists() {
            if Instant::now() > deadline {
                bail!(
                    "{}: no conflist (no lease?):\n{}",
                    node.name,
                    tail(&node.agent.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut list: Value = serde_json::from_slice(&std::fs::read(&conf)?)?;
        list["plugins"][0]["ipam"]["dataDir"] =
            Value::String(node.root.join("ipam").display().to_string());
        std::fs::write(&conf, list.to_string())?;
        let registered = wait_until(Duration::from_secs(30), || {
            node.knode(&["get", "node", &node.name]).is_ok()
        });
        if !registered {
            bail!(
                "{} did not register:\n{}",
                node.name,
                tail(&node.agent.log(), 40)
            );
        }
        Ok(())
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> &TestNs {
        self.net.node(i)
    }

    /// Node `i`'s underlay address.
    pub fn node_ip(&self, i: usize) -> String {
        self.net.node_ip(i)
    }

    /// Applies a manifest (from node 0).
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.nodes[0].knode_stdin(&["apply", "-f", "-"], Some(yaml))?;
        Ok(())
    }

    /// The object as JSON, or `None` when it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Value>> {
        let out = self.nodes[0]
            .agent
            .knode(&["get", kind, name, "-o", "json"])?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("not found") {
                return Ok(None);
            }
            bail!("get {kind} {name}: {}", err.trim());
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// Waits until pod `name` runs with every container running; returns it.
    pub fn wait_running(&self, name: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(p) = self.get("pod", name)? {
                if is_running(&p) {
                    return Ok(p);
                }
                last = p;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "pod {name} not running after 90s; status: {}\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            self.logs()
        )
    }

    /// The agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.name, tail(&n.agent.log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A path in node `i`'s temp dir.
    pub fn path(&self, i: usize, rel: &str) -> PathBuf {
        self.nodes[i].root.join(rel)
    }
}

/// `GET url` with curl from `ns` (a node, the internet namespace): the
/// body, or an error with curl's message. (busybox's static wget
/// crashes on a refused connection, which hides the reason.)
pub fn http_get(ns: &Path, url: &str) -> Result<String> {
    let out = netns_tests::ns_command(Some(ns), "curl")
        .args(["-sS", "--max-time", "3", url])
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
