//! A whole node for end-to-end tests: a private containerd, a network
//! namespace standing in for the host (the bridge, veths and pod routes
//! live there, never in the machine's own namespace), and a `knode agent`
//! running inside it with every path in a temp dir and its own containerd
//! namespace. Removed on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::containerd::Containerd;
use crate::{our_bin, unique, TempDir};
use netns_tests::TestNs;

/// The pod subnet of a test node.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The upstream DNS server test nodes name in their `resolv-conf`, on the
/// node namespace's loopback (see [`node_flags`]).
pub const TEST_UPSTREAM: &str = "127.0.0.2";
/// The node IP (TEST-NET-1), on an empty bridge in the node's namespace.
pub const NODE_IP: &str = "192.0.2.10";

pub struct Node {
    // Field order is drop order: the agent stops first, then containerd
    // kills what runs, then the host namespace goes.
    pub agent: Agent,
    pub containerd: Containerd,
    pub host: TestNs,
    root: PathBuf,
    namespace: String,
}

impl Node {
    /// Starts containerd, the host namespace and the agent.
    pub fn start() -> Result<Node> {
        Node::start_with(&[])
    }

    /// [`Node::start`] with more agent flags (`--allow-privileged true`).
    pub fn start_with(flags: &[&str]) -> Result<Node> {
        let containerd = Containerd::start()?;
        let host = TestNs::new("node")?;
        // Like a host: the node IP on an interface and a default route (an
        // empty bridge: nothing leaves the namespace, and no veth to be
        // mistaken for a pod's), so ClusterIPs and NodePorts answer from
        // the node itself.
        host.sh(&["ip", "link", "add", "uplink0", "type", "bridge"])?;
        host.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "uplink0",
        ])?;
        host.sh(&["ip", "link", "set", "uplink0", "up"])?;
        host.sh(&["ip", "route", "add", "default", "dev", "uplink0"])?;
        let dir = TempDir::new("node")?;
        let root = dir.path().to_path_buf();
        let namespace = unique("knode-test-");
        let extra = node_flags(&root, &containerd, &namespace)?;
        let conf = root.join("cni-conf");
        std::fs::create_dir_all(&conf)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "knode",
            "plugins": [{
                "type": "knode-bridge",
                "bridge": "cni0",
                "isGateway": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "knode-host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": root.join("ipam").display().to_string(),
                }
            }]
        });
        std::fs::write(conf.join("10-knode.conflist"), conflist.to_string())?;
        let mut agent_flags = vec![
            "--node-ip".to_string(),
            NODE_IP.to_string(),
            "--pod-cidr".to_string(),
            POD_CIDR.to_string(),
            // One node with a fixed pod subnet: no overlay.
            "--disable".to_string(),
            "overlay".to_string(),
        ];
        agent_flags.extend(dns_flags(&root)?);
        agent_flags.extend(flags.iter().map(|f| f.to_string()));
        let agent = Agent::start_node(dir, host.path(), extra, agent_flags)?;
        let n = Node {
            agent,
            containerd,
            host,
            root,
            namespace,
        };
        // The socket serves before the node side is up; the Node object is
        // registered once containerd, the pause image and CNI are ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !n
            .agent
            .knode(&["get", "node", "test-node"])?
            .status
            .success()
        {
            if Instant::now() > deadline {
                bail!("the node did not register:\n{}", tail(&n.agent.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    /// For a test: a node with the busybox test image imported, or `None`
    /// (skip) without root or containerd — a failure under `CI=true`.
    pub fn for_test(test: &str) -> Option<Node> {
        Node::for_test_with(test, &[])
    }

    /// [`Node::for_test`] with more agent flags.
    pub fn for_test_with(test: &str, flags: &[&str]) -> Option<Node> {
        if !crate::require_root(test) || !crate::containerd::require_containerd(test) {
            return None;
        }
        let n = Node::start_with(flags).expect("start node");
        let dir = TempDir::new("img").expect("temp dir");
        let tar = crate::image::busybox_oci_tar(dir.path()).expect("build busybox image");
        n.import(&tar).expect("import busybox");
        Some(n)
    }

    /// The agent's containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A path inside the node's temp dir (`netns`, `logs`, `ipam`, ...).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `knode ARGS` against this node; fails with stderr unless it succeeds.
    pub fn knode(&self, args: &[&str]) -> Result<String> {
        let out = self.agent.knode(args)?;
        if !out.status.success() {
            bail!(
                "knode {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a manifest given as text.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let out = self.agent.knode_stdin(&["apply", "-f", "-"], Some(yaml))?;
        if !out.status.success() {
            bail!("apply: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The pod as JSON, or `None` if it does not exist.
    pub fn pod(&self, name: &str) -> Result<Option<Value>> {
        let out = self.agent.knode(&["get", "pod", name, "-o", "json"])?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("not found") {
                return Ok(None);
            }
            bail!("get pod {name}: {}", err.trim());
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// Polls the pod until `done` holds; fails with the last status and the
    /// agent's log after `timeout`.
    pub fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(p) = self.pod(name)? {
                if done(&p) {
                    return Ok(p);
                }
                last = p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "pod {name} not as expected after {timeout:?}; status: {}\nagent log:\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            tail(&self.agent.log(), 60)
        )
    }

    /// Waits until the pod is gone from the API.
    pub fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.pod(name)?.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "pod {name} still there after {timeout:?}\nagent log:\n{}",
            tail(&self.agent.log(), 60)
        )
    }

    /// Waits until the pod is Running with every container running and an
    /// IP; returns the pod.
    pub fn wait_running(&self, name: &str) -> Result<Value> {
        self.wait_pod(name, Duration::from_secs(60), is_running)
    }

    /// Imports an image tar into the agent's containerd namespace.
    pub fn import(&self, tar: &Path) -> Result<()> {
        self.knode(&["image", "import", &tar.display().to_string()])
            .context("knode image import")?;
        Ok(())
    }

    /// Runs a command in the host namespace.
    pub fn host_sh(&self, argv: &[&str]) -> Result<String> {
        self.host.sh(argv)
    }

    /// containerd container ids in the agent's namespace.
    pub fn containers(&self) -> Result<Vec<String>> {
        self.containerd
            .ids(&self.namespace, &["containers", "ls", "-q"])
    }

    /// Snapshot keys in the agent's namespace (image layers excluded: only
    /// active ones, which belong to containers).
    pub fn active_snapshots(&self) -> Result<Vec<String>> {
        let out = self.containerd.ctr_out(
            &self.namespace,
            &["snapshots", "--snapshotter", "overlayfs", "ls"],
        )?;
        Ok(out
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(2) == Some("Active"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.agent.kill9();
        // Pinned pod namespaces and shm tmpfs mounts live under the temp
        // dir; containerd's drop kills the containers first.
        crate::containerd::unmount_below(&self.root);
    }
}

/// A pod (as JSON) is Running with an IP and every container running.
pub fn is_running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["podIP"].is_string()
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["state"]["running"].is_object()))
}

/// The global flags of an agent that runs pods with every path under
/// `root` (our CNI plugins linked into `root/cni-bin`), on `containerd` in
/// containerd namespace `namespace`.
pub fn node_flags(root: &Path, containerd: &Containerd, namespace: &str) -> Result<Vec<String>> {
    let bin = root.join("cni-bin");
    std::fs::create_dir_all(&bin)?;
    for p in ["knode-bridge", "knode-host-local", "knode-loopback"] {
        std::os::unix::fs::symlink(our_bin(p), bin.join(p))?;
    }
    let mut flags = vec![
        "--containerd-socket".to_string(),
        containerd.socket().display().to_string(),
        "--containerd-namespace".to_string(),
        namespace.to_string(),
    ];
    for (flag, dir) in [
        ("--netns-dir", "netns"),
        ("--log-dir", "logs"),
        ("--cni-bin-dir", "cni-bin"),
        ("--cni-conf-dir", "cni-conf"),
        ("--cni-cache-dir", "cni-cache"),
        ("--pod-manifest-path", "manifests"),
    ] {
        flags.push(flag.to_string());
        flags.push(root.join(dir).display().to_string());
    }
    Ok(flags)
}

/// Agent flags for a test node's DNS: its `resolv-conf` (written under
/// `root`) names [`TEST_UPSTREAM`] on the node namespace's loopback, so
/// forwarding fails fast unless a test starts a server there, and never
/// reaches the machine's own resolvers.
pub fn dns_flags(root: &Path) -> Result<Vec<String>> {
    let resolv = root.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {TEST_UPSTREAM}\n"))?;
    Ok(vec![
        "--resolv-conf".to_string(),
        resolv.display().to_string(),
    ])
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
