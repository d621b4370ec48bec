//! The control-plane benchmark: watch-event latency, `knode apply`
//! throughput and memory held per object, for our embedded agent and our
//! etcd backend against raw etcd-client calls on the same etcd. Every
//! process it starts (agents, etcd) listens on 127.0.0.1 or a unix socket
//! in its own temp dir, and is killed and removed when `run` returns.

mod apply;
mod mem;
pub(crate) mod procfs;
mod report;
pub(crate) mod watch;

use std::path::Path;

use anyhow::{bail, Context, Result};
use controlplane::Object;
use knode_tests::agent::Agent;
use knode_tests::etcd::{EtcdCluster, ETCD};
use serde_json::json;

use crate::Opts;

/// Timed writes per side for the watch latency.
pub const WATCH_WRITES: usize = 1000;
/// Pod manifests in the directory given to one `knode apply -f`.
pub const APPLY_PODS: usize = 1000;
/// Interleaved apply rounds per side (each into a fresh namespace).
pub const APPLY_ROUNDS: usize = 5;
/// Objects each store holds when its memory is read.
pub const HELD_OBJECTS: usize = 10_000;
/// Creates in flight per side while filling a store.
pub const FILL_CONCURRENCY: usize = 8;
/// The filling is interleaved in this many chunks per side.
pub const FILL_CHUNKS: usize = 10;
/// Bytes of payload in each held ConfigMap.
pub const PAYLOAD_BYTES: usize = 256;

/// Everything one run measured.
pub struct Results {
    pub watch: Vec<watch::Samples>,
    pub apply: Vec<apply::Outcome>,
    pub mem: mem::Outcome,
    pub etcd_version: String,
}

/// Runs the benchmark and writes `controlplane.json` and `controlplane.svg` to `opts.out`.
pub fn run(opts: &Opts) -> Result<()> {
    if !Path::new(ETCD).is_file() {
        bail!("{ETCD} missing: install etcd-server (make bootstrap does)");
    }
    crate::built("knode")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;

    eprintln!("controlplane: starting a knode agent (embedded) and a one-member etcd on loopback");
    let etcd = EtcdCluster::start(1)?;
    let agent = Agent::start()?;
    let endpoints = etcd.endpoints();
    eprintln!(
        "controlplane: watch latency, {} warm-up + {WATCH_WRITES} timed writes per side, interleaved",
        opts.warmup
    );
    let watch = rt
        .block_on(watch::measure(
            &agent.socket(),
            &endpoints,
            opts.warmup,
            WATCH_WRITES,
        ))
        .context("watch latency")?;
    eprintln!(
        "controlplane: apply {APPLY_PODS} pods with one `knode apply -f DIR` per side, {APPLY_ROUNDS} interleaved rounds"
    );
    let etcd_pid = etcd.pid(0).context("the etcd member is not running")?;
    let apply = apply::measure(&rt, &agent, etcd_pid, &endpoints, APPLY_PODS, APPLY_ROUNDS)
        .context("apply throughput")?;
    drop(agent);
    drop(etcd);

    eprintln!(
        "controlplane: memory holding {HELD_OBJECTS} ConfigMaps (a fresh agent and a fresh etcd)"
    );
    let mem = mem::measure(&rt, HELD_OBJECTS).context("memory")?;
    let results = Results {
        watch,
        apply,
        mem,
        etcd_version: etcd_version(),
    };
    report::write(opts, &results)
}

/// A ConfigMap in `default` carrying `payload` bytes of data.
pub fn configmap(name: &str, payload: usize) -> Result<Object> {
    Object::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"payload": "x".repeat(payload)},
    }))
    .with_context(|| format!("build ConfigMap {name}"))
}

/// The manifest of a one-container pod (no namespace: `apply -n` sets it).
pub fn pod_manifest(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })
}

/// `etcd://host:port,...` (the `--control-plane` form) for client URLs.
pub fn control_plane_flag(endpoints: &[String]) -> String {
    let hosts: Vec<&str> = endpoints
        .iter()
        .map(|e| e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/'))
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// `etcd --version`'s first line, or "unknown".
fn etcd_version() -> String {
    crate::report::first_line(&[ETCD, "--version"])
}

/// Which path a measurement takes: through a `knode agent` (embedded),
/// through our etcd backend, or raw etcd-client (the reference floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Embedded,
    Etcd,
    EtcdRaw,
}

impl Side {
    /// Every side, in the order the first round runs them.
    pub const ALL: [Side; 3] = [Side::Embedded, Side::Etcd, Side::EtcdRaw];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Side::Embedded => "embedded",
            Side::Etcd => "etcd",
            Side::EtcdRaw => "etcd-raw",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_flag_from_client_urls() {
        let eps = vec![
            "http://127.0.0.1:2379".to_string(),
            "http://127.0.0.1:2479/".to_string(),
        ];
        assert_eq!(
            control_plane_flag(&eps),
            "etcd://127.0.0.1:2379,127.0.0.1:2479"
        );
    }

    #[test]
    fn objects_build() -> Result<()> {
        let cm = configmap("a", 3)?;
        assert_eq!((cm.name(), cm.namespace()), ("a", "default"));
        assert_eq!(cm.to_value()["data"]["payload"], "xxx");
        let pod = Object::from_value(pod_manifest("p"))?;
        assert_eq!(pod.name(), "p");
        Ok(())
    }
}
