//! A cluster's network for multi-node tests: an underlay bridge in its own
//! namespace, node namespaces joined to it by veth, an `internet` namespace
//! standing for everything outside the cluster, and pods made in a node by
//! our CNI plugins. It only builds what tests need; it knows nothing of how
//! the overlay works, and never programs the root namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{bin_dir, first_ip, run_in, unique, CniCall, TestNs, REFERENCE_CNI_DIR};

/// The underlay's first three octets (RFC 2544 benchmark range: never routed).
pub const UNDERLAY_NET: &str = "198.18.0";
/// The underlay bridge's name, inside the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The underlay bridge's own address (etcd and the like can listen there).
pub const UNDERLAY_IP: &str = "198.18.0.1";
/// The underlay bridge's MAC (locally administered, fixed).
const UNDERLAY_BRIDGE_MAC: &str = "02:c6:12:00:00:01";
/// The `internet` namespace's underlay address: every node's default gateway.
pub const INTERNET_GW: &str = "198.18.0.254";
/// An address outside the cluster (TEST-NET-3), on the `internet` namespace's lo.
pub const OUTSIDE_IP: &str = "203.0.113.1";
/// The IPv6 underlay's prefix (a ULA of our own; never routed): host `h`
/// is `fd00:198:18::<h in hex>`/64, added by [`ClusterNet::add_ipv6`].
pub const UNDERLAY6_NET: &str = "fd00:198:18::";
/// An IPv6 address outside the cluster (the documentation prefix), on the
/// `internet` namespace's lo once [`ClusterNet::add_ipv6`] ran.
pub const OUTSIDE_IP6: &str = "2001:db8:ffff::1";
/// The underlay host number of node 0; node `i` is `FIRST_NODE_HOST + i`.
const FIRST_NODE_HOST: usize = 11;
/// The underlay host number of the `internet` namespace.
const INTERNET_HOST: u8 = 254;

/// A namespace holding the bridge [`UNDERLAY_BRIDGE`] (up, [`UNDERLAY_IP`]/24)
/// that attached namespaces share. Deleting it deletes every attachment.
pub struct Underlay {
    ns: TestNs,
    /// Host number → the underlay-side veth (a name unique to this run).
    links: Mutex<Vec<(u8, String)>>,
}

impl Underlay {
    /// Creates the namespace and its bridge.
    pub fn new() -> Result<Underlay> {
        let ns = TestNs::new("ul")?;
        // The bridge's MAC is pinned: a bridge whose address was never set
        // takes the lowest address among its ports, so detaching the port
        // that held it would change the gateway's MAC under every other
        // host's ARP cache, and they would lose the underlay address (etcd)
        // until the entry went stale, tens of seconds later.
        ns.sh(&[
            "ip",
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "address",
            UNDERLAY_BRIDGE_MAC,
            "type",
            "bridge",
        ])?;
        let cidr = format!("{UNDERLAY_IP}/24");
        ns.sh(&["ip", "addr", "add", &cidr, "dev", UNDERLAY_BRIDGE])?;
        ns.sh(&["ip", "link", "set", UNDERLAY_BRIDGE, "up"])?;
        Ok(Underlay {
            ns,
            links: Mutex::new(Vec::new()),
        })
    }

    /// The underlay namespace.
    pub fn ns(&self) -> &TestNs {
        &self.ns
    }

    /// Joins `target` to the bridge: a veth pair made inside the underlay
    /// namespace, its peer created straight in `target` as `eth0` with
    /// `198.18.0.<host>/24`, up. Returns that address.
    pub fn attach(&self, target: &TestNs, host: u8) -> Result<String> {
        if host <= 1 || host == 255 {
            bail!(
                "attach {}: host number {host} is not free on the underlay",
                target.name()
            );
        }
        let link = unique("ul");
        let ip = format!("{UNDERLAY_NET}.{host}");
        let what = || format!("attach {} as {ip}", target.name());
        self.lock().push((host, link.clone()));
        self.ns
            .plug(&link, target, &format!("{ip}/24"))
            .with_context(what)?;
        self.ns
            .sh(&["ip", "link", "set", &link, "master", UNDERLAY_BRIDGE])
            .with_context(what)?;
        // Both ends keep a flow on one CPU, as a NIC's receive queue does.
        steer_flows(&self.ns, &link).with_context(what)?;
        steer_flows(target, "eth0").with_context(what)?;
        Ok(ip)
    }

    /// Cuts host `host` off the underlay at once (its veth pair goes).
    pub fn detach(&self, host: u8) -> Result<()> {
        let link = {
            let mut links = self.lock();
            let i = links
                .iter()
                .position(|(h, _)| *h == host)
                .ok_or_else(|| anyhow!("detach {UNDERLAY_NET}.{host}: not attached"))?;
            links.remove(i).1
        };
        self.ns
            .sh(&["ip", "link", "del", &link])
            .with_context(|| format!("detach {UNDERLAY_NET}.{host}"))?;
        Ok(())
    }

    /// The underlay-side veth names made so far (unique to this run).
    pub fn links(&self) -> Vec<String> {
        self.lock().iter().map(|(_, l)| l.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u8, String)>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns on receive packet steering over every CPU for veth `dev` in `ns`,
/// so each flow is handed to one CPU by its hash. Without it a veth hands
/// a packet to the backlog of whichever CPU sent it; TCP sends from the
/// application's CPU and from the CPU that processed the last ACK, so on
/// two or more CPUs one flow's segments overtake each other, and the
/// receiver's duplicate SACKs turn into spurious retransmits (the reason
/// the overlay bench's underlay reference retransmitted thousands of
/// segments per run). A real NIC delivers a flow in order from one NAPI
/// queue; this makes the veth underlay behave like one. sysfs shows a
/// namespace's devices only when mounted from inside it, hence `ip netns
/// exec` (which mounts it in a private mount namespace).
pub fn steer_flows(ns: &TestNs, dev: &str) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
    let script = format!("echo {} > {path}", cpu_mask(cpus));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run ip netns exec {}", ns.name()))?;
    if !out.status.success() {
        bail!(
            "write {path} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Host `h`'s IPv6 underlay address.
fn host6(h: u8) -> String {
    format!("{UNDERLAY6_NET}{h:x}")
}

/// The kernel's cpumask text for CPUs `0..n`: hex, 32-bit groups joined by commas.
fn cpu_mask(n: usize) -> String {
    let n = n.max(1);
    let groups = n.div_ceil(32);
    (0..groups)
        .rev()
        .map(|g| {
            let bits = (n - g * 32).min(32);
            let v: u32 = if bits == 32 {
                u32::MAX
            } else {
                (1 << bits) - 1
            };
            format!("{v:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An underlay, N node namespaces on it (node `i` at `198.18.0.<11+i>`,
/// default route via [`INTERNET_GW`], forwarding on) and an `internet`
/// namespace at [`INTERNET_GW`] carrying [`OUTSIDE_IP`]. All deleted on drop.
pub struct ClusterNet {
    // Field order is drop order: nodes, then internet, then the underlay.
    /// `None` once removed; indices stay stable.
    nodes: Vec<Option<TestNs>>,
    internet: TestNs,
    underlay: Underlay,
}

impl ClusterNet {
    /// Builds the underlay, the internet namespace and `nodes` nodes.
    pub fn new(nodes: usize) -> Result<ClusterNet> {
        let underlay = Underlay::new()?;
        let internet = TestNs::new("inet")?;
        underlay.attach(&internet, INTERNET_HOST)?;
        let outside = format!("{OUTSIDE_IP}/32");
        internet.sh(&["ip", "addr", "add", &outside, "dev", "lo"])?;
        let mut net = ClusterNet {
            nodes: Vec::with_capacity(nodes),
            internet,
            underlay,
        };
        for _ in 0..nodes {
            net.add_node()?;
        }
        Ok(net)
    }

    /// Attaches one more node (e.g. for a join test); returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let host = u8::try_from(FIRST_NODE_HOST + i)
            .ok()
            .filter(|h| *h < INTERNET_HOST)
            .ok_or_else(|| anyhow!("add node {i}: the underlay /24 is full"))?;
        let ns = TestNs::new(&format!("node{i}"))?;
        self.underlay.attach(&ns, host)?;
        ns.sh(&["ip", "route", "add", "default", "via", INTERNET_GW])?;
        ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.nodes.push(Some(ns));
        Ok(i)
    }

    /// Removes node `i`: cut off the underlay at once, its namespace
    /// deleted. Other indices keep their meaning.
    pub fn remove_node(&mut self, i: usize) -> Result<()> {
        if self.nodes.get(i).and_then(Option::as_ref).is_none() {
            bail!("remove node {i}: no such node");
        }
        self.underlay.detach(self.node_host(i))?;
        self.nodes[i] = None;
        Ok(())
    }

    /// Node `i`'s namespace. Panics if there is no such node (or it was removed).
    pub fn node(&self, i: usize) -> &TestNs {
        self.nodes
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("node {i}: no such node (or removed)"))
    }

    /// Node `i`'s underlay address (also after it was removed).
    pub fn node_ip(&self, i: usize) -> String {
        format!("{UNDERLAY_NET}.{}", self.node_host(i))
    }

    /// The indices of the nodes not removed.
    pub fn node_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// The `internet` namespace (the nodes' default gateway, [`OUTSIDE_IP`]).
    pub fn internet(&self) -> &TestNs {
        &self.internet
    }

    /// The underlay namespace (where the bridge and [`UNDERLAY_IP`] live).
    pub fn underlay(&self) -> &TestNs {
        self.underlay.ns()
    }

    /// The underlay bridge's address, [`UNDERLAY_IP`].
    pub fn underlay_ip(&self) -> &'static str {
        UNDERLAY_IP
    }

    /// The underlay itself (its veth names, attaching more namespaces).
    pub fn underlay_net(&self) -> &Underlay {
        &self.underlay
    }

    /// Gives the underlay IPv6 too: every node and the `internet`
    /// namespace an address of [`UNDERLAY6_NET`] on `eth0` (no DAD), the
    /// nodes a default IPv6 route via the `internet` namespace (which gets
    /// [`OUTSIDE_IP6`]) and IPv6 forwarding.
    pub fn add_ipv6(&self) -> Result<()> {
        let inet6 = host6(INTERNET_HOST);
        self.internet.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{inet6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        let outside = format!("{OUTSIDE_IP6}/128");
        self.internet
            .sh(&["ip", "-6", "addr", "add", &outside, "dev", "lo"])?;
        for i in self.node_indices() {
            let ns = self.node(i);
            let cidr = format!("{}/64", self.node_ip6(i));
            ns.sh(&["ip", "-6", "addr", "add", &cidr, "dev", "eth0", "nodad"])?;
            ns.sh(&["ip", "-6", "route", "add", "default", "via", &inet6])?;
            ns.sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        Ok(())
    }

    /// Node `i`'s IPv6 underlay address (after [`ClusterNet::add_ipv6`]).
    pub fn node_ip6(&self, i: usize) -> String {
        host6(self.node_host(i))
    }

    fn node_host(&self, i: usize) -> u8 {
        u8::try_from(FIRST_NODE_HOST + i).unwrap_or(u8::MAX)
    }
}

/// A pod's network namespace, networked by the CNI plugins of a node's
/// config as a runtime would (loopback first, then the conflist's plugins
/// chained by `prevResult`), called from inside the node's namespace. CNI
/// DEL runs on drop, before the namespace is deleted.
pub struct Pod {
    // Dropped after `Drop::drop` has run the DELs.
    ns: TestNs,
    node: PathBuf,
    id: String,
    cni_path: String,
    bin_dirs: Vec<PathBuf>,
    /// The network's plugin configs (name and version filled in), in order.
    plugins: Vec<Value>,
    /// How many of `plugins` ADD was called on (DEL undoes those).
    added: usize,
    loopback: Option<Value>,
    result: Value,
    ip: String,
}

impl Pod {
    /// Networks a new pod `name` on `node` with the first `*.conflist` (by
    /// name) in `conf_dir`, plugins found in `cni_bin_dir`, then ours.
    pub fn add(node: &TestNs, conf_dir: &Path, cni_bin_dir: &Path, name: &str) -> Result<Pod> {
        let path = first_conflist(conf_dir)?;
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let list: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Pod::add_list(node, &list, cni_bin_dir, name)
            .with_context(|| format!("pod {name} with {}", path.display()))
    }

    /// As [`Pod::add`], with the network list given as JSON.
    pub fn add_list(node: &TestNs, list: &Value, cni_bin_dir: &Path, name: &str) -> Result<Pod> {
        let version = list["cniVersion"].as_str().unwrap_or("1.0.0");
        let net_name = list["name"]
            .as_str()
            .ok_or_else(|| anyhow!("the network list has no name"))?;
        let plugins = list["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow!("network {net_name}: no plugins"))?
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["name"] = json!(net_name);
                p["cniVersion"] = json!(version);
                p
            })
            .collect();
        let bin_dirs = vec![
            cni_bin_dir.to_path_buf(),
            bin_dir(),
            PathBuf::from(REFERENCE_CNI_DIR),
        ];
        let cni_path = std::env::join_paths(&bin_dirs)?
            .to_string_lossy()
            .into_owned();
        let mut pod = Pod {
            ns: TestNs::new("pod")?,
            node: node.path().to_path_buf(),
            id: unique(&format!("{name}-")),
            cni_path,
            bin_dirs,
            plugins,
            added: 0,
            loopback: None,
            result: Value::Null,
            ip: String::new(),
        };
        // From here a failure drops `pod`, which deletes what was added.
        let lo = json!({"cniVersion": version, "name": "cni-loopback", "type": "knode-loopback"});
        pod.loopback = Some(lo.clone());
        pod.call("ADD", &lo, "lo")?;
        let mut prev: Option<Value> = None;
        for i in 0..pod.plugins.len() {
            let mut conf = pod.plugins[i].clone();
            if let Some(p) = prev.take() {
                conf["prevResult"] = p;
            }
            pod.added = i + 1;
            prev = Some(pod.call("ADD", &conf, "eth0")?);
        }
        pod.result = prev.unwrap_or(Value::Null);
        pod.ip = first_ip(&pod.result)
            .ok_or_else(|| anyhow!("no IPv4 address in the result {}", pod.result))?;
        Ok(pod)
    }

    /// The pod's IPv4 address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The pod's IPv6 address, if its network gave it one.
    pub fn ip6(&self) -> Option<String> {
        self.result["ips"].as_array()?.iter().find_map(|ip| {
            let (addr, _) = ip["address"].as_str()?.split_once('/')?;
            addr.contains(':').then(|| addr.to_string())
        })
    }

    /// The pod's network namespace.
    pub fn ns(&self) -> &TestNs {
        &self.ns
    }

    /// The network's CNI result for `eth0`.
    pub fn result(&self) -> &Value {
        &self.result
    }

    /// The container id the plugins were called with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs one plugin from inside the node's namespace; its result.
    fn call(&self, command: &'static str, conf: &Value, ifname: &str) -> Result<Value> {
        let ty = conf["type"].as_str().unwrap_or_default();
        if ty.is_empty() || ty.contains('/') {
            bail!("plugin type {ty:?} is not a plugin name");
        }
        let plugin = self
            .bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("plugin {ty} not found in {}", self.cni_path))?;
        let mut call = CniCall::new(&plugin, command, &self.id, Some(self.ns.path()), ifname);
        call.cni_path = Some(self.cni_path.clone());
        run_in(&self.node, || call.run(conf))??.expect_ok(&format!("{ty} {command} {ifname}"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // As libcni: the plugins in reverse with the ADD result, then loopback.
        for i in (0..self.added).rev() {
            let mut conf = self.plugins[i].clone();
            if !self.result.is_null() {
                conf["prevResult"] = self.result.clone();
            }
            if let Err(e) = self.call("DEL", &conf, "eth0") {
                eprintln!("pod {}: {e:#}", self.id);
            }
        }
        if let Some(lo) = self.loopback.take() {
            if let Err(e) = self.call("DEL", &lo, "lo") {
                eprintln!("pod {}: {e:#}", self.id);
            }
        }
    }
}

/// The first `*.conflist` in `dir`, by file name (as libcni orders them).
fn first_conflist(dir: &Path) -> Result<PathBuf> {
    let mut lists: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist") && p.is_file())
        .collect();
    lists.sort();
    lists.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no *.conflist in {} (has the agent written one yet?)",
            dir.display()
        )
    })
}

/// Polls `f` every 100 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP echo server (`socat ... EXEC:cat`) on `port` of every address of
/// a namespace; killed on drop.
pub struct EchoServer {
    child: Child,
}

impl EchoServer {
    /// Starts it in `ns`. Clients should retry until it listens ([`tcp_echo`] does).
    pub fn start(ns: &TestNs, port: u16) -> Result<EchoServer> {
        let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
        let child = ns
            .cmd(&["socat", &listen, "EXEC:cat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start socat on port {port} in {}", ns.name()))?;
        Ok(EchoServer { child })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one line from `client` to `ip:port` and checks it comes back
/// (one attempt, 3 s at most).
pub fn echo_once(client: &TestNs, ip: &str, port: u16) -> Result<()> {
    use std::io::Write;
    let line = format!("{}\n", unique("echo-"));
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let mut child = client
        .cmd(&["socat", "-T", "3", "-", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start socat in {}", client.name()))?;
    child
        .stdin
        .take()
        .context("socat stdin")?
        .write_all(line.as_bytes())?;
    let out = child.wait_with_output()?;
    let got = String::from_utf8_lossy(&out.stdout);
    if got != line {
        bail!(
            "tcp echo {} -> {ip}:{port}: sent {:?}, got {got:?} ({}: {})",
            client.name(),
            line.trim(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Checks TCP both ways between namespaces: an echo server on `port` in
/// `server` (reached at `server_ip`) answers a line sent from `client`,
/// retried for up to 5 s while the server comes up.
pub fn tcp_echo(server: &TestNs, server_ip: &str, client: &TestNs, port: u16) -> Result<()> {
    let _server = EchoServer::start(server, port)?;
    let mut last = Ok(());
    wait_until(Duration::from_secs(5), || {
        last = echo_once(client, server_ip, port);
        last.is_ok()
    });
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_in_the_kernels_format() {
        assert_eq!(cpu_mask(1), "00000001");
        assert_eq!(cpu_mask(2), "00000003");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(36), "0000000f,ffffffff");
    }
}
