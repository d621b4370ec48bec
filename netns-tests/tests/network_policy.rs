//! NetworkPolicy enforced by real agents on the real kernel, in the shape
//! of the upstream e2e truth tables: two nodes (namespaces on an
//! underlay, vxlan overlay, etcd in the underlay namespace), one `knode
//! agent` per node (pods off: the pods are namespaces networked by our CNI
//! plugins from the agent's conflist, and their Pod objects, with the
//! address in their status, are written by the test as a kubelet would),
//! and namespaces x, y, z with pods a, b, c spread over both nodes. Each
//! case asserts the whole 9×9 matrix, TCP and UDP, from every pod to
//! every pod. SCTP is not probed: this kernel has no SCTP.
//!
//! Probes are sockets opened inside the pod namespaces by this process;
//! servers are listeners in every pod; all traffic stays in namespaces
//! the test made.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use controlplane::api::{ControlPlane, ObjectRef};
use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::{Kind, Object};
use hostnet::nftables::{NfTables, NfTablesSocket};
use netns_tests::agent::Agent;
use netns_tests::cluster::{wait_until, ClusterNet, Pod};
use netns_tests::etcd::{require_etcd, EtcdCluster};
use netns_tests::{bin_dir, require_root, run_in, TempDir};
use serde_json::{json, Value};

const NETWORK: &str = "10.244.0.0/16";
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// Every pod serves TCP and UDP on these ports; 81 is also named
/// `serve-81` (TCP) and `serve-81-udp` (UDP).
const PORTS: [u16; 2] = [80, 81];
/// How long a probe waits: a dropped SYN or datagram gets no answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The control plane as the test sees it: the etcd backend, opened from
/// inside the underlay namespace (where etcd listens) on a thread of its own.
struct Cp {
    netns: PathBuf,
    backend: Backend,
    dir: TempDir,
}

impl Cp {
    fn call<T: Send>(
        &self,
        f: impl FnOnce(
                Arc<dyn ControlPlane>,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>
            + Send,
    ) -> Result<T> {
        let backend = self.backend.clone();
        let dir = self.dir.path().to_path_buf();
        run_in(&self.netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let cp = backend::open(&backend, &dir, Allocators::default()).await?;
                f(cp as Arc<dyn ControlPlane>).await
            })
        })?
    }

    /// Creates or replaces each object (`kind`, `metadata` as in a manifest).
    fn apply(&self, docs: Vec<Value>) -> Result<()> {
        self.call(move |cp| {
            Box::pin(async move {
                for d in docs {
                    let obj = Object::from_value(d.clone()).map_err(|e| anyhow!("{e}: {d}"))?;
                    controlplane::api::apply(cp.as_ref(), obj)
                        .await
                        .with_context(|| format!("apply {d}"))?;
                }
                Ok(())
            })
        })
    }

    /// Deletes one object.
    fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<()> {
        let what = ObjectRef::new(kind, ns, name);
        self.call(move |cp| {
            Box::pin(async move {
                cp.delete(&what, None).await?;
                Ok(())
            })
        })
    }

    /// Sets a pod's status as its kubelet would: running at `ip`.
    fn set_pod_ip(&self, ns: &str, name: &str, ip: &str) -> Result<()> {
        let what = ObjectRef::new(Kind::Pod, ns, name);
        let ip = ip.to_string();
        self.call(move |cp| {
            Box::pin(async move {
                let Object::Pod(mut p) = cp.get(&what).await? else {
                    bail!("not a pod");
                };
                let status = p.status.get_or_insert_with(Default::default);
                status.phase = Some("Running".into());
                status.pod_ip = Some(ip.clone());
                cp.update_status(Object::Pod(p)).await?;
                Ok(())
            })
        })
    }
}

/// A pod of the lab: its network namespace (made by CNI on its node) and
/// the servers listening in it.
struct LabPod {
    ns: &'static str,
    name: &'static str,
    node: usize,
    pod: Pod,
}

impl LabPod {
    fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn ip(&self) -> Ipv4Addr {
        self.pod.ip().parse().expect("pod IPv4")
    }
}

/// Listeners in a pod's namespace until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    /// TCP and UDP servers on `ports` in the namespace at `netns`.
    fn start(netns: &Path, ports: &[u16]) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let (tcp, udp) = run_in(netns, || -> Result<_> {
                let tcp = TcpListener::bind(("0.0.0.0", port))?;
                let udp = UdpSocket::bind(("0.0.0.0", port))?;
                Ok((tcp, udp))
            })??;
            tcp.set_nonblocking(true)?;
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            let s = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.set_nonblocking(false);
                            let _ = std::io::Write::write_all(&mut c, b"k");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            let s = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Ok(Servers { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

/// One probe from the namespace at `from` to `to:port`: a TCP connection
/// that reads the server's byte, or a UDP datagram echoed back.
fn probe(from: &Path, to: Ipv4Addr, port: u16, proto: Proto) -> bool {
    let addr = SocketAddr::from((to, port));
    run_in(from, || match proto {
        Proto::Tcp => {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(1))
        }
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut b = [0u8; 16];
            s.send_to(b"probe", addr).is_ok() && matches!(s.recv_from(&mut b), Ok((5, _)))
        }
    })
    .unwrap_or(false)
}

/// (from, to) pod ids -> reachable.
type Matrix = BTreeMap<(String, String), bool>;

/// The lab: the network, etcd, one agent per node, 9 pods with servers.
struct Lab {
    servers: Vec<Servers>,
    pods: Vec<LabPod>,
    agents: Vec<Agent>,
    cp: Cp,
    etcd: EtcdCluster,
    net: ClusterNet,
}

impl Lab {
    fn start(nodes: usize) -> Result<Lab> {
        let net = ClusterNet::new(nodes)?;
        let etcd = EtcdCluster::start_in(net.underlay().path(), net.underlay_ip(), 1)?;
        let cp = Cp {
            netns: net.underlay().path().to_path_buf(),
            backend: etcd.control_plane().parse()?,
            dir: TempDir::new("np-cp")?,
        };
        let mut lab = Lab {
            servers: Vec::new(),
            pods: Vec::new(),
            agents: Vec::new(),
            cp,
            etcd,
            net,
        };
        for i in 0..nodes {
            let a = lab.spawn_agent(i)?;
            lab.agents.push(a);
        }
        let namespaces = NAMESPACES
            .iter()
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}}))
            .collect();
        lab.cp.apply(namespaces)?;
        let mut k = 0;
        for ns in NAMESPACES {
            for name in PODS {
                lab.add_pod(ns, name, k % nodes)?;
                k += 1;
            }
        }
        Ok(lab)
    }

    fn spawn_agent(&self, i: usize) -> Result<Agent> {
        let dir = TempDir::new(&format!("np-n{i}"))?;
        let root = dir.path().to_path_buf();
        let p = |n: &str| root.join(n).display().to_string();
        let global = vec![
            "--control-plane".to_string(),
            self.etcd.control_plane(),
            "--cni-conf-dir".to_string(),
            p("cni-conf"),
        ];
        let agent = [
            "--node-name",
            &format!("node-{i}"),
            "--disable",
            "pods,proxy,dns,controllers",
            "--network-policy-guard",
            "true",
            "--iface",
            "eth0",
            "--cluster-cidr",
            NETWORK,
            "--subnet-file",
            &p("subnet.env"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Agent::start_node(dir, self.net.node(i).path(), global, agent)
    }

    /// Networks pod `ns/name` on `node` with the agent's conflist (IPAM
    /// store in the agent's dir), writes its Pod object and status, and
    /// starts its servers.
    fn add_pod(&mut self, ns: &'static str, name: &'static str, node: usize) -> Result<()> {
        let pod = self.network_pod(node, &format!("{ns}-{name}"))?;
        self.write_pod(ns, name, node, pod.ip(), json!({"pod": name}))?;
        self.servers.push(Servers::start(pod.ns().path(), &PORTS)?);
        self.pods.push(LabPod {
            ns,
            name,
            node,
            pod,
        });
        Ok(())
    }

    fn network_pod(&self, node: usize, name: &str) -> Result<Pod> {
        let agent = &self.agents[node];
        let path = agent.dir().join("cni-conf/10-knode.conflist");
        if !wait_until(Duration::from_secs(20), || path.exists()) {
            bail!("node {node}: no conflist after 20 s:\n{}", agent.log());
        }
        let mut list: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        list["plugins"][0]["ipam"]["dataDir"] = json!(agent.dir().join("ipam"));
        Pod::add_list(self.net.node(node), &list, &bin_dir(), name)
    }

    /// The Pod object of a pod on `node` at `ip`, running.
    fn write_pod(&self, ns: &str, name: &str, node: usize, ip: &str, labels: Value) -> Result<()> {
        let container_ports: Vec<Value> = PORTS
            .iter()
            .flat_map(|p| {
                let tcp = if *p == 81 { json!("serve-81") } else { json!(format!("tcp-{p}")) };
                [
                    json!({"name": tcp, "containerPort": p, "protocol": "TCP"}),
                    json!({"name": format!("serve-{p}-udp"), "containerPort": p, "protocol": "UDP"}),
                ]
            })
            .collect();
        self.cp.apply(vec![json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": format!("node-{node}"), "containers": [
                {"name": "c", "image": "busybox", "ports": container_ports}]},
        })])?;
        self.cp.set_pod_ip(ns, name, ip)
    }

    fn pod(&self, id: &str) -> &LabPod {
        self.pods.iter().find(|p| p.id() == id).expect("lab pod")
    }

    /// Every pod probes every pod on `port`/`proto`, all at once.
    fn matrix(&self, port: u16, proto: Proto) -> Matrix {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .flat_map(|from| self.pods.iter().map(move |to| (from, to)))
                .map(|(from, to)| {
                    let path = from.pod.ns().path().to_path_buf();
                    let ip = to.ip();
                    let key = (from.id(), to.id());
                    s.spawn(move || (key, probe(&path, ip, port, proto)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }

    /// Waits (up to 20 s) until the matrix on each (port, proto) is the
    /// one `allowed(from, to, port, proto)` says; fails with both tables.
    fn expect(
        &self,
        case: &str,
        probes: &[(u16, Proto)],
        allowed: impl Fn(&LabPod, &LabPod, u16, Proto) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for &(port, proto) in probes {
            let want: Matrix = self
                .pods
                .iter()
                .flat_map(|f| self.pods.iter().map(move |t| (f, t)))
                .map(|(f, t)| {
                    (
                        (f.id(), t.id()),
                        f.id() == t.id() || allowed(f, t, port, proto),
                    )
                })
                .collect();
            loop {
                let got = self.matrix(port, proto);
                if got == want {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{case}: {proto:?}/{port} after 20 s\nwant:\n{}got:\n{}{}",
                        render(&want),
                        render(&got),
                        self.dump()
                    );
                }
            }
        }
        Ok(())
    }

    /// Each node's table and its agent's last log lines, for failures.
    fn dump(&self) -> String {
        let mut out = String::new();
        for i in 0..self.agents.len() {
            let table = self
                .net
                .node(i)
                .sh(&["nft", "list", "table", "ip", "knode-policy"])
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!(
                "node {i} table:\n{table}\nagent {i} log:\n{}\n",
                tail(&self.agents[i].log(), 30)
            ));
        }
        out
    }

    fn policy(&self, name: &str, ns: &str, spec: Value) -> Result<()> {
        self.cp.apply(vec![json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec,
        })])
    }

    fn delete_policy(&self, name: &str, ns: &str) -> Result<()> {
        self.cp.delete(Kind::NetworkPolicy, ns, name)
    }

    /// Node `i`'s pod subnet (`10.244.N.0/24`) from its subnet file.
    fn subnet(&self, i: usize) -> Result<String> {
        let env = std::fs::read_to_string(self.agents[i].dir().join("subnet.env"))?;
        let v = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .context("no FLANNEL_SUBNET")?;
        let ip: Ipv4Addr = v.split('/').next().unwrap_or_default().parse()?;
        let o = ip.octets();
        Ok(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
    }
}

/// A matrix as a table: rows are sources, `.` reachable, `X` not.
fn render(m: &Matrix) -> String {
    let ids: Vec<&String> = m
        .keys()
        .map(|(f, _)| f)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = format!(
        "{:>5} {}\n",
        "",
        ids.iter().map(|i| format!("{i:>4}")).collect::<String>()
    );
    for f in &ids {
        out.push_str(&format!("{f:>5} "));
        for t in &ids {
            let ok = m
                .get(&((*f).clone(), (*t).clone()))
                .copied()
                .unwrap_or(false);
            out.push_str(&format!("{:>4}", if ok { "." } else { "X" }));
        }
        out.push('\n');
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn prereqs(test: &str) -> bool {
    require_root(test) && require_etcd(test)
}

const TCP80: (u16, Proto) = (80, Proto::Tcp);
const TCP81: (u16, Proto) = (81, Proto::Tcp);
const UDP80: (u16, Proto) = (80, Proto::Udp);
const UDP81: (u16, Proto) = (81, Proto::Udp);

/// A case's expectation: whether `from` reaches `to` on (port, proto).
type Allowed = fn(&LabPod, &LabPod, u16, Proto) -> bool;

/// A case of one policy: its name, spec, what to probe, what to expect.
type Case<'a> = (&'a str, Value, &'a [(u16, Proto)], Allowed);

/// One policy in x selecting pod=a (`x/a`), with `rules` as its ingress.
fn x_a_ingress(rules: Value) -> Value {
    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": rules})
}

#[test]
fn truth_table() -> Result<()> {
    if !prereqs("truth_table") {
        return Ok(());
    }
    let lab = Lab::start(2)?;
    let all = [TCP80, UDP80];
    let ports = [TCP80, TCP81, UDP80, UDP81];
    let open: Allowed = |_, _, _, _| true;
    lab.expect("no policy: every pod reaches every pod", &all, open)?;

    // Cases of one policy in x: applied, the matrix checked, deleted.
    let single: Vec<Case> = vec![
        (
            "default-deny ingress in x",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            &all,
            |_, t, _, _| t.ns != "x",
        ),
        (
            "default-deny egress in x",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            &all,
            |f, _, _, _| f.ns != "x",
        ),
        (
            "allow by named port (TCP serve-81, UDP serve-81-udp)",
            x_a_ingress(json!([{"ports": [{"protocol": "TCP", "port": "serve-81"},
                                           {"protocol": "UDP", "port": "serve-81-udp"}]}])),
            &ports,
            |_, t, port, _| t.id() != "x/a" || port == 81,
        ),
        (
            "allow by port range (TCP 81-90)",
            x_a_ingress(json!([{"ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}])),
            &ports,
            |_, t, port, proto| t.id() != "x/a" || (port == 81 && proto == Proto::Tcp),
        ),
        (
            "ipBlock with except (the cluster but node 1's pods)",
            x_a_ingress(
                json!([{"from": [{"ipBlock": {"cidr": NETWORK, "except": [lab.subnet(1)?]}}]}]),
            ),
            &all,
            |f, t, _, _| t.id() != "x/a" || f.node != 1,
        ),
        (
            "egress to pod=c anywhere on TCP 80 only",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}],
                               "ports": [{"protocol": "TCP", "port": 80}]}]}),
            &[TCP80, UDP80, TCP81],
            |f, t, port, proto| f.ns != "x" || (t.name == "c" && port == 80 && proto == Proto::Tcp),
        ),
    ];
    for (case, spec, probes, allowed) in single {
        lab.policy("case", "x", spec)?;
        lab.expect(case, probes, allowed)?;
        lab.delete_policy("case", "x")?;
        lab.expect(&format!("{case}: deleted, all open"), &all, open)?;
    }

    // One policy updated in place, case after case.
    let by_pod = x_a_ingress(json!([{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]));
    lab.policy("allow-a", "x", by_pod)?;
    lab.expect("allow by pod label", &all, |f, t, _, _| {
        t.id() != "x/a" || f.id() == "x/b"
    })?;
    let by_ns =
        x_a_ingress(json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]));
    lab.policy("allow-a", "x", by_ns)?;
    lab.expect("allow by namespace label (updated)", &all, |f, t, _, _| {
        t.id() != "x/a" || f.ns == "y"
    })?;
    let both = x_a_ingress(
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                             "podSelector": {"matchLabels": {"pod": "c"}}}]}]),
    );
    lab.policy("allow-a", "x", both)?;
    lab.expect(
        "allow by namespace and pod label (updated)",
        &all,
        |f, t, _, _| t.id() != "x/a" || f.id() == "y/c",
    )?;

    // Stacked: a second policy on x/a adds z's pods.
    let from_z =
        x_a_ingress(json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]));
    lab.policy("allow-a-z", "x", from_z)?;
    lab.expect("stacked policies add up", &all, |f, t, _, _| {
        t.id() != "x/a" || f.id() == "y/c" || f.ns == "z"
    })?;
    lab.delete_policy("allow-a-z", "x")?;

    // Label changes: y/b becomes pod=c (a peer); namespace z gets ns=y.
    let yb = lab.pod("y/b");
    lab.write_pod("y", "b", yb.node, yb.pod.ip(), json!({"pod": "c"}))?;
    let z_as_y = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "z", "labels": {"ns": "y"}}});
    lab.cp.apply(vec![z_as_y])?;
    lab.expect("pod and namespace label changes", &all, |f, t, _, _| {
        t.id() != "x/a" || ["y/b", "y/c", "z/c"].contains(&f.id().as_str())
    })?;
    lab.delete_policy("allow-a", "x")?;
    lab.expect("every policy deleted: all open", &all, open)?;
    Ok(())
}

/// Hammers `targets` (added while it runs) with TCP connections from the
/// namespace at `from` until stopped, one thread per target; counts the
/// attempts and the ones that got through.
struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    successes: Arc<AtomicUsize>,
    from: PathBuf,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(from: &Path) -> Prober {
        Prober {
            stop: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(AtomicUsize::new(0)),
            successes: Arc::new(AtomicUsize::new(0)),
            from: from.to_path_buf(),
            workers: Vec::new(),
        }
    }

    fn target(&mut self, ip: Ipv4Addr) {
        let (stop, from) = (Arc::clone(&self.stop), self.from.clone());
        let (attempts, successes) = (Arc::clone(&self.attempts), Arc::clone(&self.successes));
        self.workers.push(std::thread::spawn(move || {
            let _ = run_in(&from, || {
                let addr = SocketAddr::from((ip, 80));
                while !stop.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }));
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Stops; (attempts, successes).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        (self.attempts(), self.successes.load(Ordering::Relaxed))
    }
}

/// 50 pods networked under a default-deny ingress policy while probers
/// on both nodes hammer each new address from the moment CNI ADD gave
/// it out (before the agent knew the pod): no connection gets through.
/// Then a policy allows them, and the same probers get through.
#[test]
fn new_pods_are_isolated_from_their_first_packet() -> Result<()> {
    if !prereqs("new_pods_are_isolated_from_their_first_packet") {
        return Ok(());
    }
    let mut lab = Lab::start(2)?;
    lab.policy(
        "deny-in",
        "x",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )?;
    lab.expect("default-deny ingress in x", &[TCP80], |_, t, _, _| {
        t.ns != "x"
    })?;
    let mut probers: Vec<Prober> = ["y/a", "y/b"]
        .iter()
        .map(|id| Prober::start(lab.pod(id).pod.ns().path()))
        .collect();
    let mut fresh = Vec::new();
    for i in 0..50 {
        let node = i % 2;
        let pod = lab.network_pod(node, &format!("x-new{i}"))?;
        lab.servers.push(Servers::start(pod.ns().path(), &PORTS)?);
        let ip: Ipv4Addr = pod.ip().parse()?;
        probers.iter_mut().for_each(|p| p.target(ip));
        lab.write_pod(
            "x",
            &format!("new{i}"),
            node,
            pod.ip(),
            json!({"pod": "new"}),
        )?;
        fresh.push(pod);
    }
    // The probers go on against the programmed pods: 500 more attempts.
    let before: usize = probers.iter().map(Prober::attempts).sum();
    wait_until(Duration::from_secs(10), || {
        probers.iter().map(Prober::attempts).sum::<usize>() >= before + 500
    });
    let results: Vec<(usize, usize)> = probers.into_iter().map(Prober::finish).collect();
    let attempts: usize = results.iter().map(|r| r.0).sum();
    let leaked: usize = results.iter().map(|r| r.1).sum();
    assert!(attempts >= 100, "the probers ran: {attempts} attempts");
    assert_eq!(
        leaked, 0,
        "{leaked} of {attempts} connections reached a new pod under default-deny"
    );

    // The drops were counted, by reason, on the receiving nodes.
    let mut dropped = BTreeMap::new();
    for i in 0..2 {
        let counters = lab.net.node(i).run(|| -> Result<_> {
            let nft = NfTablesSocket::open()?;
            let t = netpol::ruleset::table(netpol::IpFamily::V4);
            Ok(nft.rule_counters(&t, "forward-ingress")?)
        })??;
        for c in counters {
            *dropped.entry(c.comment.unwrap_or_default()).or_insert(0) += c.packets;
        }
    }
    assert!(
        dropped
            .get(netpol::ruleset::NOT_ALLOWED)
            .is_some_and(|n| *n > 0),
        "{dropped:?}"
    );

    // Once a policy allows it, the pods of y get through.
    lab.policy(
        "allow-new",
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "new"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )?;
    let from = lab.pod("y/c").pod.ns().path().to_path_buf();
    for pod in &fresh {
        let ip: Ipv4Addr = pod.ip().parse()?;
        if !wait_until(Duration::from_secs(10), || probe(&from, ip, 80, Proto::Tcp)) {
            bail!("y/c -> new pod {ip} once allowed\n{}", lab.dump());
        }
    }
    Ok(())
}

/// The agent of node 0 is killed (-9): its pods stay isolated (the kernel
/// holds the table); policy and label changes made while it is down are
/// enforced on node 0's pods once it is back, without a gap.
#[test]
fn agent_kill9_keeps_enforcement_and_applies_changes_made_while_down() -> Result<()> {
    if !prereqs("agent_kill9_keeps_enforcement_and_applies_changes_made_while_down") {
        return Ok(());
    }
    let mut lab = Lab::start(2)?;
    let all = [TCP80, UDP80];
    lab.policy(
        "deny-in",
        "x",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )?;
    lab.expect("default-deny ingress in x", &all, |_, t, _, _| t.ns != "x")?;
    lab.agents[0].kill9()?;
    lab.expect("agent 0 down: still enforced", &all, |_, t, _, _| {
        t.ns != "x"
    })?;

    // While it is down: the deny goes, x/* take traffic only from pod=b,
    // and y/c becomes pod=b.
    lab.delete_policy("deny-in", "x")?;
    lab.policy("from-b", "x", json!({"podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))?;
    let yc = lab.pod("y/c");
    lab.write_pod("y", "c", yc.node, yc.pod.ip(), json!({"pod": "b"}))?;
    let want =
        |f: &LabPod, t: &LabPod, _: u16, _: Proto| t.ns != "x" || f.name == "b" || f.id() == "y/c";
    // Node 1 follows at once; node 0's pods keep the old isolation.
    lab.expect(
        "agent 0 down: node 1 follows, node 0 keeps its rules",
        &all,
        |f, t, p, pr| {
            if t.node == 0 {
                t.ns != "x"
            } else {
                want(f, t, p, pr)
            }
        },
    )?;
    lab.agents[0].restart()?;
    lab.expect(
        "agent 0 back: changes made while down are enforced",
        &all,
        want,
    )?;
    Ok(())
}
