//! The Kubernetes API benchmark (`bench api`, issue 15): two agents, one
//! on its embedded store and one on a one-member etcd, each with pods
//! disabled and 10,000 pods bound to a node that does not exist (nothing
//! schedules or runs them) written through its socket. Then, interleaved
//! over [`ROUNDS`] rounds: `kubectl get pods -A` (the real kubectl, HTTPS,
//! the admin kubeconfig the agent wrote) with the agent's VmRSS/VmHWM
//! before and after, `knode get pods -A` (the second check of the
//! reference: the CLI on the socket for the embedded agent, on etcd
//! itself for the other), and a full list of the pods with the
//! same raw request and the same JSON parse over HTTPS (rustls,
//! keep-alive, the admin client certificate) and over the unix socket.
//! Last, watch latency (write a ConfigMap, see its ADDED event) over
//! HTTPS against the socket client of the `controlplane` bench.
//! Everything listens on 127.0.0.1 or a socket in a temp dir.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use controlplane::rest::client::Client;
use controlplane::{ControlPlane, Object};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use knode_tests::api::Api;
use knode_tests::etcd::{EtcdCluster, ETCD};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::controlplane::procfs::{self, Mem};
use crate::controlplane::watch::{self as cpwatch, Target};
use crate::controlplane::{configmap, control_plane_flag, pod_manifest, Side, PAYLOAD_BYTES};
use crate::report::{host_facts, write_file};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Pods each store holds.
pub const PODS: usize = 10_000;
/// Interleaved rounds of kubectl / knode get / the two raw lists.
pub const ROUNDS: usize = 5;
/// Timed writes per path for the watch latency.
pub const WATCH_WRITES: usize = 200;
/// Creates in flight while filling.
const FILL_CONCURRENCY: usize = 8;
/// The node the pods are bound to: none by this name exists.
const NOWHERE: &str = "bench-nowhere";
/// The goal of issue 15: HTTPS within this factor of the socket.
const GOAL: f64 = 1.2;
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One agent under test.
struct Node {
    name: &'static str,
    api: Api,
    _etcd: Option<EtcdCluster>,
    tls: Arc<rustls::ClientConfig>,
}

impl Node {
    fn start(name: &'static str, etcd: Option<EtcdCluster>) -> Result<Node> {
        let api = match &etcd {
            Some(e) => {
                let flag = control_plane_flag(&e.endpoints());
                Api::start_with(&["--control-plane", &flag])
            }
            None => Api::start(),
        };
        let tls = admin_tls(&api.agent.data_dir())?;
        Ok(Node {
            name,
            api,
            _etcd: etcd,
            tls,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.api.agent.pid().context("the agent is not running")
    }

    fn mem(&self) -> Result<Mem> {
        procfs::mem(self.pid()?)
    }
}

/// The admin identity the agent wrote into its data dir (the same
/// certificate and CA as its admin kubeconfig).
fn admin_tls(data_dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let d = data_dir.join("tls");
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f)).with_context(|| format!("read {}", d.join(f).display()))
    };
    let certs = |pem: &str| -> Result<Vec<CertificateDer<'static>>> {
        Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&read("ca.crt")?)? {
        roots.add(c)?;
    }
    let key = PrivateKeyDer::from_pem_slice(read("admin.key")?.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&read("admin.crt")?)?, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection over TLS to the agent's API port.
async fn https(node: &Node) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, node.api.port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = tokio_rustls::TlsConnector::from(node.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake with the API")?;
    handshake(TokioIo::new(tls)).await
}

/// A fresh HTTP/1.1 connection on the agent's socket (as the CLI's client makes).
async fn unix(node: &Node) -> Result<Sender> {
    let s = tokio::net::UnixStream::connect(node.api.agent.socket()).await?;
    handshake(TokioIo::new(s)).await
}

async fn handshake<T>(io: T) -> Result<Sender>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(method: Method, uri: &str, body: Option<&Value>) -> Result<Request<Full<Bytes>>> {
    let body = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    Ok(Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?)
}

/// Sends a request and reads the whole answer, which must be a success.
async fn call(s: &mut Sender, method: Method, uri: &str, body: Option<&Value>) -> Result<Bytes> {
    s.ready().await?;
    let resp = s.send_request(request(method.clone(), uri, body)?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {uri}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes)
}

/// Writes [`PODS`] pods into the node through its socket.
async fn fill(node: &Node) -> Result<()> {
    let cp: Arc<dyn ControlPlane> = Arc::new(Client::new(&node.api.agent.socket()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..FILL_CONCURRENCY {
        let (cp, next) = (cp.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= PODS {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut m = pod_manifest(&format!("pod-{i:05}"));
                m["metadata"]["namespace"] = json!("default");
                m["spec"]["nodeName"] = json!(NOWHERE);
                cp.create(Object::from_value(m)?, None)
                    .await
                    .with_context(|| format!("create pod-{i:05}"))?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a create task panicked")??;
    }
    Ok(())
}

/// The same full list and parse over `s`: (time, items, bytes).
async fn list(s: &mut Sender) -> Result<(Duration, usize, usize)> {
    let t0 = Instant::now();
    let body = call(s, Method::GET, "/api/v1/pods", None).await?;
    let v: Value = serde_json::from_slice(&body)?;
    let took = t0.elapsed();
    let n = v["items"].as_array().map_or(0, Vec::len);
    if n != PODS {
        bail!("listed {n} pods, want {PODS}");
    }
    Ok((took, n, body.len()))
}

/// Runs a command to its end: wall time and stdout lines.
fn timed(cmd: &mut Command, what: &str) -> Result<(Duration, usize)> {
    let t0 = Instant::now();
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {what}"))?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((took, out.stdout.iter().filter(|&&b| b == b'\n').count()))
}

/// One node's samples.
#[derive(Default)]
struct Samples {
    kubectl: Vec<Duration>,
    kubectl_raw: Vec<Duration>,
    knode_get: Vec<Duration>,
    list_https: Vec<Duration>,
    list_socket: Vec<Duration>,
    list_bytes: usize,
    mem: Vec<Value>,
    watch_https: Vec<Duration>,
    watch_socket: Vec<Duration>,
}

fn mem_json(m: Mem) -> Value {
    json!({"rss_mib": round3(m.rss_kib as f64 / 1024.0), "hwm_mib": round3(m.hwm_kib as f64 / 1024.0)})
}

/// One interleaved round on `node`.
async fn round(node: &Node, s: &mut Samples, r: usize) -> Result<()> {
    let before = node.mem()?;
    let (t, lines) = timed(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(node.api.kubeconfig())
            .args(["get", "pods", "-A"]),
        "kubectl get pods -A",
    )?;
    if lines != PODS + 1 {
        bail!(
            "{}: kubectl printed {lines} lines, want {}",
            node.name,
            PODS + 1
        );
    }
    let after = node.mem()?;
    s.kubectl.push(t);
    // The same pods in one JSON request, no Table: what of kubectl's time
    // is the transfer and what is its chunking and printing.
    let t0 = Instant::now();
    let raw = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(node.api.kubeconfig())
        .args(["get", "--raw", "/api/v1/pods"])
        .output()
        .context("run kubectl get --raw")?;
    s.kubectl_raw.push(t0.elapsed());
    let v: Value = serde_json::from_slice(&raw.stdout).context("kubectl get --raw: not JSON")?;
    if v["items"].as_array().map_or(0, Vec::len) != PODS {
        bail!("{}: kubectl get --raw did not list {PODS} pods", node.name);
    }
    s.mem
        .push(json!({"round": r, "before": mem_json(before), "after": mem_json(after)}));
    let mut knode = Command::new(crate::built("knode")?);
    knode
        .args(node.api.agent.flags())
        .args(["get", "pods", "-A"]);
    let (t, lines) = timed(&mut knode, "knode get pods -A")?;
    if lines != PODS + 1 {
        bail!(
            "{}: knode get printed {lines} lines, want {}",
            node.name,
            PODS + 1
        );
    }
    s.knode_get.push(t);
    // The socket client opens a connection per request; the HTTPS one
    // is opened beforehand and kept alive (as kubectl and client-go do).
    let mut h = https(node).await?;
    let order = [r.is_multiple_of(2), !r.is_multiple_of(2)];
    for tls in order {
        if tls {
            let (t, _, bytes) = list(&mut h).await.context("list over HTTPS")?;
            s.list_https.push(t);
            s.list_bytes = bytes;
        } else {
            let t0 = Instant::now();
            let mut u = unix(node).await?;
            list(&mut u).await.context("list over the socket")?;
            s.list_socket.push(t0.elapsed());
        }
    }
    Ok(())
}

/// A watch on ConfigMaps in `default` over HTTPS, and a connection to write on.
struct HttpsWatch {
    writer: Sender,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl HttpsWatch {
    async fn open(node: &Node) -> Result<HttpsWatch> {
        let mut writer = https(node).await?;
        let list: Value = serde_json::from_slice(
            &call(
                &mut writer,
                Method::GET,
                "/api/v1/namespaces/default/configmaps",
                None,
            )
            .await?,
        )?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .context("list has no resourceVersion")?
            .to_string();
        let mut w = https(node).await?;
        w.ready().await?;
        let uri = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}");
        let resp = w.send_request(request(Method::GET, &uri, None)?).await?;
        if !resp.status().is_success() {
            bail!("watch: {}", resp.status());
        }
        // The connection lives while the body is read (the sender may go).
        Ok(HttpsWatch {
            writer,
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// One write of ConfigMap `name` until its event is seen (the write
    /// and the wait run together, as in the socket client's measurement).
    async fn once(&mut self, name: &str) -> Result<Duration> {
        let body = configmap(name, PAYLOAD_BYTES)?.to_value();
        let t0 = Instant::now();
        let HttpsWatch {
            writer,
            body: events,
            buf,
        } = self;
        let write = call(
            writer,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(&body),
        );
        let seen = tokio::time::timeout(WATCH_TIMEOUT, async {
            added(events, buf, name).await?;
            Ok::<_, anyhow::Error>(t0.elapsed())
        });
        let (written, seen) = tokio::join!(write, seen);
        written.with_context(|| format!("create ConfigMap {name} over HTTPS"))?;
        seen.map_err(|_| anyhow!("no ADDED event for {name} over HTTPS in {WATCH_TIMEOUT:?}"))?
    }
}

/// Reads watch lines until the ADDED event of `name`.
async fn added(body: &mut hyper::body::Incoming, buf: &mut Vec<u8>, name: &str) -> Result<()> {
    loop {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: Value = serde_json::from_slice(&line)?;
            if ev["type"] == "ADDED" && ev["object"]["metadata"]["name"] == name {
                return Ok(());
            }
        }
        let frame = body
            .frame()
            .await
            .ok_or_else(|| anyhow!("the HTTPS watch ended"))??;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

/// Watch latency over HTTPS and over the socket, interleaved.
async fn watch(node: &Node, s: &mut Samples, warmup: usize) -> Result<()> {
    let mut h = HttpsWatch::open(node).await?;
    let mut sock: Target = cpwatch::open(Side::Embedded, &node.api.agent.socket(), &[]).await?;
    for i in 0..warmup + WATCH_WRITES {
        for tls in [i.is_multiple_of(2), !i.is_multiple_of(2)] {
            let name = format!("{}-{i}", if tls { "tls" } else { "sock" });
            let t = if tls {
                h.once(&name).await?
            } else {
                cpwatch::once(&mut sock, &name).await?.1
            };
            if i >= warmup {
                if tls {
                    s.watch_https.push(t)
                } else {
                    s.watch_socket.push(t)
                }
            }
        }
    }
    Ok(())
}

/// Runs the benchmark and writes `api.json` to `opts.out`.
pub fn run(opts: &Opts) -> Result<()> {
    if !Path::new(ETCD).is_file() {
        bail!("{ETCD} missing: install etcd-server (make bootstrap does)");
    }
    crate::built("knode")?;
    if !knode_tests::api::kubectl_present() {
        bail!("kubectl missing (scripts/bootstrap.sh installs it)");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("api: starting an agent on its embedded store and one on a one-member etcd");
    let nodes = [
        Node::start("embedded", None)?,
        Node::start("etcd", Some(EtcdCluster::start(1)?))?,
    ];
    let mut samples: Vec<Samples> = nodes.iter().map(|_| Samples::default()).collect();
    let mut idle = Vec::new();
    for node in &nodes {
        idle.push(node.mem()?);
        eprintln!(
            "api: writing {PODS} pods into {} (bound to {NOWHERE})",
            node.name
        );
        let t0 = Instant::now();
        rt.block_on(fill(node))
            .with_context(|| format!("fill {}", node.name))?;
        eprintln!("api: {} filled in {:.1?}", node.name, t0.elapsed());
    }
    let filled: Vec<Mem> = nodes.iter().map(Node::mem).collect::<Result<_>>()?;
    for r in 0..ROUNDS {
        eprintln!("api: round {}/{ROUNDS}", r + 1);
        for j in 0..nodes.len() {
            let k = (r + j) % nodes.len();
            rt.block_on(round(&nodes[k], &mut samples[k], r))
                .with_context(|| format!("{} round {r}", nodes[k].name))?;
        }
    }
    for (node, s) in nodes.iter().zip(samples.iter_mut()) {
        eprintln!(
            "api: watch latency on {}, {} warm-up + {WATCH_WRITES} writes per path",
            node.name, opts.warmup
        );
        rt.block_on(watch(node, s, opts.warmup))
            .with_context(|| format!("{} watch", node.name))?;
    }
    let last: Vec<Mem> = nodes.iter().map(Node::mem).collect::<Result<_>>()?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let doc = report(&nodes, &samples, &idle, &filled, &last, &load, &load_after);
    write_file(
        &opts.out,
        "api.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}

fn ms(s: &Summary) -> Value {
    json!({"n": s.n, "p50_ms": round3(s.p50), "p99_ms": round3(s.p99), "min_ms": round3(s.min), "max_ms": round3(s.max)})
}

fn sum(v: &[Duration]) -> Summary {
    Summary::of(v).unwrap_or_else(|| Summary::of(&[Duration::ZERO]).expect("one sample"))
}

#[allow(clippy::too_many_arguments)]
fn report(
    nodes: &[Node],
    samples: &[Samples],
    idle: &[Mem],
    filled: &[Mem],
    last: &[Mem],
    load: &str,
    load_after: &str,
) -> Value {
    let mut per = Vec::new();
    let mut targets = Vec::new();
    println!(
        "\napi: {PODS} pods, {ROUNDS} rounds; load average before: {}",
        load.trim()
    );
    println!("backend   kubectl get -A  knode get -A  list HTTPS  list socket  ratio   watch p50 HTTPS/socket  p99 HTTPS/socket   agent HWM MiB");
    for (i, (node, s)) in nodes.iter().zip(samples).enumerate() {
        let (kc, kg, lh, ls) = (
            sum(&s.kubectl),
            sum(&s.knode_get),
            sum(&s.list_https),
            sum(&s.list_socket),
        );
        let (wh, ws) = (sum(&s.watch_https), sum(&s.watch_socket));
        let list_ratio = lh.p50 / ls.p50;
        let (w50, w99) = (wh.p50 / ws.p50, wh.p99 / ws.p99);
        println!(
            "{:<9} {:>11.0} ms {:>9.0} ms {:>8.0} ms {:>9.0} ms {:>6.2}x  {:>6.2}/{:.2} ms {:.2}x  {:>6.2}/{:.2} ms {:.2}x  {:.1}",
            node.name, kc.p50, kg.p50, lh.p50, ls.p50, list_ratio, wh.p50, ws.p50, w50, wh.p99, ws.p99, w99,
            last[i].hwm_kib as f64 / 1024.0
        );
        println!(
            "{:<9} kubectl get --raw /api/v1/pods {:.0} ms",
            "",
            sum(&s.kubectl_raw).p50
        );
        for (what, ratio) in [
            ("list p50", list_ratio),
            ("watch p50", w50),
            ("watch p99", w99),
        ] {
            targets.push(json!({
                "backend": node.name, "what": format!("{what}, HTTPS / socket"),
                "ratio": round3(ratio), "goal": GOAL, "met": ratio <= GOAL,
            }));
        }
        per.push(json!({
            "backend": node.name,
            "kubectl_get_pods_all": ms(&kc),
            "kubectl_get_raw_pods": ms(&sum(&s.kubectl_raw)),
            "knode_get_pods_all": ms(&kg),
            "list_https": ms(&lh),
            "list_socket": ms(&ls),
            "list_https_objects_per_s": round3(PODS as f64 / (lh.p50 / 1e3)),
            "list_socket_objects_per_s": round3(PODS as f64 / (ls.p50 / 1e3)),
            "list_bytes": s.list_bytes,
            "watch_https": ms(&wh),
            "watch_socket": ms(&ws),
            "agent_memory": {
                "idle": mem_json(idle[i]), "filled": mem_json(filled[i]),
                "kubectl_rounds": s.mem, "end": mem_json(last[i]),
            },
        }));
    }
    let doc = json!({
        "bench": "api",
        "pods": PODS,
        "rounds": ROUNDS,
        "watch_writes": WATCH_WRITES,
        "how": {
            "pods": format!("{PODS} pods in `default` bound to {NOWHERE} (no such node; pods disabled), written through the socket"),
            "kubectl": "kubectl --kubeconfig <admin kubeconfig> get pods -A (HTTPS, its default chunking of 500, Table), process start to exit",
            "kubectl_raw": "kubectl get --raw /api/v1/pods (one JSON request, no Table), process start to exit",
            "knode_get": "knode get pods -A, process start to exit: the second check of the reference; embedded: the CLI on the agent's unix socket; etcd: the CLI given --control-plane reads etcd itself (no agent in the path)",
            "list": "GET /api/v1/pods, whole body read and parsed as JSON; HTTPS on a kept-alive rustls connection with the admin client certificate, the socket on a fresh connection (as the CLI's client)",
            "watch": "create a ConfigMap, until the watch opened beforehand has its ADDED event; HTTPS: raw watch + POST on a kept-alive connection; socket: the controlplane bench's REST client",
            "memory": "the agent's VmRSS/VmHWM from /proc (the etcd-backed agent's store is in etcd, not in it)",
        },
        "load_average_before": load.trim(),
        "load_average_after": load_after.trim(),
        "host": host_facts(),
        "results": per,
    });
    crate::report::with_targets(doc, targets)
}
