//! `bench dns-live`: Service created -> resolvable on another node. Two
//! agents on etcd (the end-to-end tests' cluster harness, release
//! binaries); each Service is applied through node 0, and node 1's own DNS
//! (cluster-dns, asked from inside node 1's namespace) is polled every
//! 2 ms until it answers. No reference: CoreDNS is not on this machine;
//! the goal is the DNS issue's (p99 <= 100 ms).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::cluster::Cluster;
use serde_json::json;

use super::load::query;
use crate::report::{host_facts, with_targets, write_file};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Services created, one at a time.
const SERVICES: usize = 50;
/// The cluster DNS address every node answers on.
const CLUSTER_DNS: &str = "10.96.0.10:53";
/// Poll period while waiting for a name.
const POLL: Duration = Duration::from_millis(2);

/// Asks `name` (A) at cluster DNS until the answer is NOERROR with a
/// record; the time since `since`. Run inside the asking node's namespace.
fn wait_resolvable(name: &str, since: Instant) -> Result<Duration> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("bind")?;
    sock.connect(CLUSTER_DNS)
        .context("connect to cluster DNS")?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let q = query(name);
    let mut buf = [0u8; 1500];
    loop {
        sock.send(&q).context("send")?;
        if let Ok(n) = sock.recv(&mut buf) {
            let answered =
                n >= 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0;
            if answered {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!("{name} not resolvable on node 1 after 10 s");
        }
        std::thread::sleep(POLL);
    }
}

pub fn run(opts: &Opts) -> Result<()> {
    crate::require_node_bins()?;
    let c = Cluster::start(2, &[])?;
    let (mut apply, mut live, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..SERVICES {
        let svc = format!("live-{k}");
        let t0 = Instant::now();
        c.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec:\n  ports: [{{port: 80}}]\n"
        ))?;
        let stored = Instant::now();
        apply.push(stored - t0);
        let name = format!("{svc}.default.svc.cluster.local");
        let took = c.ns(1).run(|| wait_resolvable(&name, stored))??;
        live.push(took);
        whole.push(stored - t0 + took);
    }
    let live_s = Summary::of(&live).context("no sample")?;
    let apply_s = Summary::of(&apply).context("no sample")?;
    let whole_s = Summary::of(&whole).context("no sample")?;
    println!(
        "Service created (knode apply returned on node 0) -> resolvable on node 1, {SERVICES} Services:\n  \
         p50 {:.1} ms  p99 {:.1} ms  min {:.1}  max {:.1}\n  \
         counting the whole `knode apply` (CLI start included): p50 {:.1} ms  p99 {:.1} ms",
        live_s.p50, live_s.p99, live_s.min, live_s.max, whole_s.p50, whole_s.p99
    );
    let mut doc = host_facts();
    doc["services"] = json!(SERVICES);
    doc["poll_ms"] = json!(POLL.as_secs_f64() * 1e3);
    doc["created_to_resolvable_ms"] = json!({
        "p50": round3(live_s.p50), "p99": round3(live_s.p99),
        "min": round3(live_s.min), "max": round3(live_s.max),
    });
    doc["apply_ms_p50"] = json!(round3(apply_s.p50));
    doc["apply_started_to_resolvable_ms"] =
        json!({"p50": round3(whole_s.p50), "p99": round3(whole_s.p99)});
    doc["measured_from"] = json!("`knode apply` returning on node 0 (the Service stored in etcd) to node 1's cluster DNS answering it, polled every 2 ms from node 1's namespace");
    let doc = with_targets(
        doc,
        vec![
            json!({"what": "Service created -> resolvable on another node, p99 <= 100 ms",
                    "p99_ms": round3(live_s.p99), "met": live_s.p99 <= 100.0}),
        ],
    );
    write_file(
        &opts.out,
        "dns-live.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}
