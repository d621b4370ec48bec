//! The port-forward benchmark: `kubectl port-forward` through the agent's
//! API (the WebSocket tunnel, kubectl's default, and plain SPDY) against
//! a direct TCP connection to the pod's IP from the node, interleaved:
//! throughput of a 100 MB download (MB/s, medians) and the time from
//! connect to the first echoed byte of a new connection (p50/p99). One
//! node (private containerd, a host namespace, a release `knode agent`);
//! kubectl and the client run in the node's namespace. kube-apiserver +
//! kubelet, the path users know, is not on this machine: the direct
//! connection is the reference.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::containerd::CONTAINERD;
use knode_tests::node::{tail, Node};
use knode_tests::TempDir;
use serde_json::json;

use crate::report::{emit, grouped_bars, host_facts, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Bytes per download.
const SIZE: u64 = 100 * 1024 * 1024;
/// Downloads per path.
const ROUNDS: usize = 5;
/// New connections per path for the latency.
const CONNECTS: usize = 200;
/// The pod's servers: a 100 MiB file over HTTP, and an echo.
const BULK: u16 = 9000;
const ECHO: u16 = 8080;

/// The three ways to the pod.
const PATHS: [&str; 3] = ["direct", "kubectl-websocket", "kubectl-spdy"];

/// A `kubectl port-forward` in the node's namespace, killed on drop.
struct Kubectl(Child);

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kubectl port-forward` for `ports` and waits until it listens.
fn forward(node: &Node, kubeconfig: &Path, ports: &[String], websockets: bool) -> Result<Kubectl> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node.host.path().display()))
        .args(["kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["port-forward", "pod/pf-bench"])
        .args(ports)
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start kubectl")?;
    let mut out = BufReader::new(child.stdout.take().context("kubectl stdout")?);
    let k = Kubectl(child);
    let mut seen = 0;
    while seen < ports.len() {
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            bail!("kubectl port-forward ended before it listened");
        }
        seen += usize::from(line.starts_with("Forwarding from 127.0.0.1:"));
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Ok(k)
}

/// Reads one whole download from `addr` (an HTTP GET of the file): its
/// MB/s.
fn download(addr: SocketAddr) -> Result<f64> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /big HTTP/1.0\r\n\r\n")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    // The body and a response head of a few hundred bytes.
    if !(SIZE..SIZE + 4096).contains(&got) {
        bail!("{addr}: {got} bytes for a body of {SIZE}");
    }
    Ok(SIZE as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// A new connection to `addr` until its first echoed byte.
fn connect_echo(addr: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(start.elapsed())
}

/// Runs the benchmark and writes `portforward.json` and `portforward.svg`.
pub fn run(opts: &Opts) -> Result<()> {
    if !Path::new(CONTAINERD).is_file() {
        bail!("{CONTAINERD} missing: install containerd (make bootstrap does)");
    }
    if !knode_tests::api::kubectl_present() {
        bail!("kubectl missing: the benchmark drives the real kubectl");
    }
    crate::require_node_bins()?;
    eprintln!("portforward: starting a node (private containerd, host namespace, knode agent)");
    let api_port = netns_tests::free_port()?.to_string();
    let node = Node::start_with(&["--api-port", &api_port]).context("start the node")?;
    let with_log = |what: &str| format!("{what}; agent log:\n{}", tail(&node.agent.log(), 40));
    let img = TempDir::new("bench-img")?;
    let tar = knode_tests::image::busybox_oci_tar(img.path()).context("build the busybox image")?;
    node.import(&tar)
        .with_context(|| with_log("import the image"))?;
    // The bulk source is a file served by busybox httpd (sendfile): a
    // pipe-fed `nc -e` caps every path at what nc copies, whatever the
    // path costs.
    let script = format!(
        "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1048576 count={} 2>/dev/null \
         && httpd -p {BULK} -h /www && exec nc -ll -p {ECHO} -e cat",
        SIZE >> 20
    );
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pf-bench"},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": knode_tests::image::BUSYBOX,
            "command": ["sh", "-c", script],
        }]},
    });
    node.apply(&pod.to_string())
        .with_context(|| with_log("apply the pod"))?;
    let pod = node.wait_running("pf-bench")?;
    let ip: IpAddr = pod["status"]["podIP"]
        .as_str()
        .context("the pod has no IP")?
        .parse()?;
    let kubeconfig = node.agent.dir().join("kubeconfig.yaml");
    let ports = |a: u16, b: u16| vec![format!("{a}:{BULK}"), format!("{b}:{ECHO}")];
    let _ws = forward(&node, &kubeconfig, &ports(19000, 18080), true)?;
    let _spdy = forward(&node, &kubeconfig, &ports(29000, 28080), false)?;
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let bulk = [SocketAddr::new(ip, BULK), local(19000), local(29000)];
    let echo = [SocketAddr::new(ip, ECHO), local(18080), local(28080)];
    let load_before = crate::probes::loadavg();
    eprintln!(
        "portforward: {ROUNDS} x {} MB per path, {CONNECTS} connects per path, interleaved",
        SIZE / 1_000_000
    );
    let (rates, lat) = netns_tests::run_in(node.host.path(), || -> Result<_> {
        // The servers answer before anything is timed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while echo.iter().any(|a| connect_echo(*a).is_err()) {
            if Instant::now() > deadline {
                bail!("the pod's echo server does not answer on every path");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut rates = vec![Vec::new(); 3];
        for round in 0..ROUNDS {
            for k in 0..3 {
                let i = (round + k) % 3;
                rates[i].push(download(bulk[i]).with_context(|| PATHS[i])?);
            }
        }
        let mut lat = vec![Vec::new(); 3];
        for n in 0..CONNECTS {
            for k in 0..3 {
                let i = (n + k) % 3;
                lat[i].push(connect_echo(echo[i]).with_context(|| PATHS[i])?);
            }
        }
        Ok((rates, lat))
    })?
    .with_context(|| with_log("measure"))?;
    let load_after = crate::probes::loadavg();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        crate::stats::percentile(&v, 50.0)
    };
    let mbps: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    let conn: Vec<Summary> = lat
        .iter()
        .map(|l| Summary::of(l).expect("samples"))
        .collect();
    let mut doc = host_facts();
    doc["benchmark"] = json!("portforward");
    doc["load_average"] = json!({"before": load_before, "after": load_after});
    doc["method"] = json!(format!(
        "one node (private containerd, a host namespace, release `knode agent`, API on the \
         node's 127.0.0.1 over TLS); a busybox pod serving a file of {SIZE} zero bytes (`httpd`, \
         sendfile; one HTTP/1.0 GET per download) and an echo (`nc -ll -e cat`). From the node's namespace: \
         direct TCP to the pod IP (the reference; kube-apiserver + kubelet is not on this \
         machine), and kubectl ({}) port-forward over the WebSocket tunnel (default) and plain \
         SPDY (KUBECTL_PORT_FORWARD_WEBSOCKETS=false), both running throughout. {ROUNDS} \
         downloads per path (median MB/s, 1 MB = 10^6 bytes), then {CONNECTS} new \
         connections per path (connect until the first echoed byte), paths interleaved in \
         rotating order",
        crate::report::first_line(&["kubectl", "version", "--client"])
    ));
    for (i, p) in PATHS.iter().enumerate() {
        doc["paths"][*p] = json!({
            "download_mb_s": round3(mbps[i]),
            "download_runs_mb_s": rates[i].iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "connect_to_first_byte": {"n": conn[i].n, "p50_ms": round3(conn[i].p50), "p99_ms": round3(conn[i].p99)},
        });
    }
    doc["ratios"] = json!({
        "websocket_throughput_vs_direct": round3(mbps[1] / mbps[0]),
        "spdy_throughput_vs_direct": round3(mbps[2] / mbps[0]),
        "websocket_connect_p50_vs_direct": round3(conn[1].p50 / conn[0].p50),
        "spdy_connect_p50_vs_direct": round3(conn[2].p50 / conn[0].p50),
    });
    let mut table = format!(
        "\nPort-forward vs direct TCP to the pod, load {load_before} -> {load_after}\n{:<20}{:>12}{:>12}{:>12}\n",
        "", "MB/s", "conn p50", "conn p99"
    );
    for (i, p) in PATHS.iter().enumerate() {
        table += &format!(
            "{p:<20}{:>12.1}{:>10.3}ms{:>10.3}ms\n",
            mbps[i], conn[i].p50, conn[i].p99
        );
    }
    let svg = grouped_bars(
        "kubectl port-forward vs direct TCP to the pod",
        &[format!(
            "100 MB download, median of {ROUNDS}; one node, release agent"
        )],
        "MB/s",
        &[Series {
            label: "download MB/s",
            color: "#4e79a7",
        }],
        &PATHS
            .iter()
            .zip(&mbps)
            .map(|(p, v)| Group {
                label: p.to_string(),
                values: vec![round3(*v)],
            })
            .collect::<Vec<_>>(),
    );
    emit(&opts.out, "portforward", &table, &doc, &svg)
}
