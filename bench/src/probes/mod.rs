//! The probes benchmark: what probes cost the node. The same pods (busybox
//! `httpd` on :8080, on one agent with a private containerd) run without
//! probes (the reference), with an httpGet readiness probe, with an exec
//! liveness probe, and with both, every 1 s; each set is started, measured
//! over a fixed window and deleted in turn, the order rotating per round.
//! The CPU of the agent, containerd and the shims is read from /proc; the
//! probes actually made are counted in the pods (TCP connections the pod's
//! kernel accepted; one byte appended per exec run). Nothing here touches
//! the root network namespace.

pub mod cpu;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::containerd::CONTAINERD;
use knode_tests::node::{tail, Node};
use knode_tests::TempDir;
use serde_json::{json, Value};

use crate::pods::watch::PodWatch;
use crate::pods::{knode_cmd, run_while, CLEAN_TIMEOUT, POD_NAMESPACE};
use crate::Opts;
use cpu::{Part, Procs};

/// Pods per set, unless `BENCH_PROBE_PODS` says otherwise.
pub const PODS: usize = 100;
/// Rounds; each measures every set once.
pub const ROUNDS: usize = 3;
/// The measured window of one set.
pub const WINDOW: Duration = Duration::from_secs(20);
/// Quiet time after the last pod is Running, so every probe has started.
pub const SETTLE: Duration = Duration::from_secs(5);
/// Every probe's period.
pub const PERIOD_S: u64 = 1;
/// The port of the pods' httpd.
const PORT: u16 = 8080;
/// The file each exec probe run appends one byte to.
const EXEC_COUNT_FILE: &str = "tmp/probes";

/// Which probes the pods of a set carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probes {
    None,
    Http,
    Exec,
    Both,
}

impl Probes {
    pub const ALL: [Probes; 4] = [Probes::None, Probes::Http, Probes::Exec, Probes::Both];

    /// Its name in pod names and the report.
    pub fn name(self) -> &'static str {
        match self {
            Probes::None => "none",
            Probes::Http => "http",
            Probes::Exec => "exec",
            Probes::Both => "both",
        }
    }

    /// What the pods carry, for the report.
    pub fn about(self) -> &'static str {
        match self {
            Probes::None => "no probe (the reference)",
            Probes::Http => "httpGet readiness probe",
            Probes::Exec => "exec liveness probe",
            Probes::Both => "httpGet readiness + exec liveness probes",
        }
    }

    fn http(self) -> bool {
        matches!(self, Probes::Http | Probes::Both)
    }

    fn exec(self) -> bool {
        matches!(self, Probes::Exec | Probes::Both)
    }
}

/// One measured window.
#[derive(Debug, Clone)]
pub struct Window {
    pub round: usize,
    pub probes: Probes,
    pub length: Duration,
    /// CPU of each part, in % of one core.
    pub cpu: BTreeMap<Part, f64>,
    /// httpGet probes the pods answered (TCP connections accepted).
    pub http: u64,
    /// exec probe runs (bytes the runs appended).
    pub exec: u64,
    /// Seconds from `knode apply` until every pod was Running.
    pub started_s: f64,
}

/// Everything one run measured.
pub struct Results {
    pub pods: usize,
    pub image: String,
    pub windows: Vec<Window>,
    pub load_before: String,
    pub load_after: String,
    pub containerd_version: String,
}

/// The pods of a set, from `BENCH_PROBE_PODS` (default [`PODS`]).
fn pod_count() -> Result<usize> {
    match std::env::var("BENCH_PROBE_PODS") {
        Err(_) => Ok(PODS),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("BENCH_PROBE_PODS: {v:?} is not a positive number of pods"),
        },
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the benchmark and writes `probes.json` and `probes.svg`.
pub fn run(opts: &Opts) -> Result<()> {
    if !Path::new(CONTAINERD).is_file() {
        bail!("{CONTAINERD} missing: install containerd (make bootstrap does)");
    }
    crate::require_node_bins()?;
    let n = pod_count()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    eprintln!("probes: starting a node (private containerd, host namespace, knode agent)");
    let node = Node::start().context("start the node")?;
    let with_log = |what: &str| {
        format!(
            "{what}; agent log (last 40 lines):\n{}",
            tail(&node.agent.log(), 40)
        )
    };
    let img = TempDir::new("bench-img")?;
    let tar = knode_tests::image::busybox_oci_tar(img.path()).context("build the busybox image")?;
    node.import(&tar)
        .with_context(|| with_log("import the image"))?;
    let image = knode_tests::image::BUSYBOX.to_string();
    let agent = node.agent.pid().context("the agent is not running")?;
    let load_before = loadavg();
    let windows = rt.block_on(async {
        let mut pods = PodWatch::open(&node.agent.socket(), POD_NAMESPACE).await?;
        let mut windows = Vec::new();
        for round in 0..ROUNDS {
            for k in 0..Probes::ALL.len() {
                let probes = Probes::ALL[(round + k) % Probes::ALL.len()];
                eprintln!(
                    "probes: round {}/{ROUNDS}: {n} pods, {}",
                    round + 1,
                    probes.about()
                );
                let w = measure_set(&node, &mut pods, &image, n, round, probes, agent)
                    .await
                    .with_context(|| with_log(&format!("round {round}, {}", probes.name())))?;
                eprintln!(
                    "probes:   agent {:.2} %, containerd {:.2} %, shims {:.2} % of a core; \
                     {} httpGet, {} exec probes in {} s",
                    w.cpu[&Part::Agent],
                    w.cpu[&Part::Containerd],
                    w.cpu[&Part::Shims],
                    w.http,
                    w.exec,
                    w.length.as_secs()
                );
                windows.push(w);
            }
        }
        Ok::<_, anyhow::Error>(windows)
    })?;
    let results = Results {
        pods: n,
        image,
        windows,
        load_before,
        load_after: loadavg(),
        containerd_version: crate::report::first_line(&[CONTAINERD, "--version"]),
    };
    report::write(opts, &results)
}

/// Starts `n` pods carrying `probes`, measures one window, deletes them.
async fn measure_set(
    node: &Node,
    pods: &mut PodWatch,
    image: &str,
    n: usize,
    round: usize,
    probes: Probes,
    agent: u32,
) -> Result<Window> {
    let names: Vec<String> = (0..n)
        .map(|i| format!("probe-{}-{round}-{i:03}", probes.name()))
        .collect();
    let mut manifest = String::new();
    for name in &names {
        manifest.push_str("---\n");
        manifest.push_str(&serde_json::to_string(&pod_manifest(name, image, probes))?);
        manifest.push('\n');
    }
    let what = format!("{n} pods Running");
    let wait = pods.wait_until(
        CLEAN_TIMEOUT,
        &what,
        |p| p.count_running(&names) == n,
        |p| format!("{} of {n} running", p.count_running(&names)),
    );
    let (t0, _, at) = run_while(
        "knode apply",
        knode_cmd(node, &["apply", "-f", "-"]),
        &manifest,
        wait,
    )
    .await?;
    let started_s = at.duration_since(t0).as_secs_f64();
    tokio::time::sleep(SETTLE).await;

    let tasks = app_tasks(node)?;
    if tasks.len() != n {
        bail!("{} app containers run, not {n}: {tasks:?}", tasks.len());
    }
    let procs = Procs::find(agent, &node.containerd.socket())?;
    let counts_before = counts(&tasks)?;
    let cpu_before = procs.read()?;
    let t = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let cpu_after = procs.read()?;
    let length = t.elapsed();
    let counts_after = counts(&tasks)?;
    if app_tasks(node)? != tasks {
        bail!("a container restarted during the window (a failed liveness probe?)");
    }
    let cpu = cpu::percent(&cpu_before, &cpu_after, length)?;
    let http = counts_after.0 - counts_before.0;
    let exec = counts_after.1 - counts_before.1;
    if !probes.http() && http > 0 || !probes.exec() && exec > 0 {
        bail!("{http} httpGet and {exec} exec probes counted in pods without them");
    }

    let what = format!("{n} pods deleted");
    let wait = pods.wait_until(
        CLEAN_TIMEOUT,
        &what,
        |p| p.count_existing(&names) == 0,
        |p| format!("{} of {n} still listed", p.count_existing(&names)),
    );
    run_while(
        "knode delete",
        knode_cmd(node, &["delete", "-f", "-"]),
        &manifest,
        wait,
    )
    .await?;
    let deadline = Instant::now() + CLEAN_TIMEOUT;
    while !node.containers()?.is_empty() {
        if Instant::now() > deadline {
            bail!("containers still there {CLEAN_TIMEOUT:?} after the delete");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Window {
        round,
        probes,
        length,
        cpu,
        http,
        exec,
        started_s,
    })
}

/// A pod of the benchmark: busybox `httpd` answering `/healthz` on
/// [`PORT`], with the probes of `probes` every [`PERIOD_S`] s. The exec
/// probe appends a byte to [`EXEC_COUNT_FILE`] (so runs can be counted)
/// and has a high failure threshold, so a slow run on a loaded machine
/// does not restart the container mid-window.
pub fn pod_manifest(name: &str, image: &str, probes: Probes) -> Value {
    let mut c = json!({
        "name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", format!(
            "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p {PORT} -h /www"
        )],
        "ports": [{"containerPort": PORT}],
    });
    if probes.http() {
        c["readinessProbe"] = json!({
            "httpGet": {"path": "/healthz", "port": PORT},
            "periodSeconds": PERIOD_S, "timeoutSeconds": 1,
        });
    }
    if probes.exec() {
        c["livenessProbe"] = json!({
            "exec": {"command": ["sh", "-c", format!("echo -n . >> /{EXEC_COUNT_FILE}")]},
            "periodSeconds": PERIOD_S, "timeoutSeconds": 1, "failureThreshold": 30,
        });
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": POD_NAMESPACE, "labels": {"app": "bench-probes"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [c]},
    })
}

/// The running app containers (every task but the pause ones), by id, with their pids.
pub(crate) fn app_tasks(node: &Node) -> Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for (id, pid) in node.containerd.task_pids(node.namespace())? {
        if id.ends_with("-pause") {
            continue;
        }
        let pid = pid
            .parse()
            .with_context(|| format!("task {id}: pid {pid:?}"))?;
        out.insert(id, pid);
    }
    Ok(out)
}

/// (TCP connections accepted, exec probe runs) summed over the containers.
fn counts(tasks: &BTreeMap<String, u32>) -> Result<(u64, u64)> {
    let (mut http, mut exec) = (0, 0);
    let mut seen_netns = BTreeSet::new();
    for (id, pid) in tasks {
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("container {id}: its netns"))?;
        // One count per network namespace (one pod each here).
        if seen_netns.insert(netns) {
            let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))
                .with_context(|| format!("container {id}: /proc/{pid}/net/snmp"))?;
            http += passive_opens(&snmp)
                .with_context(|| format!("container {id}: no Tcp PassiveOpens in net/snmp"))?;
        }
        let count = format!("/proc/{pid}/root/{EXEC_COUNT_FILE}");
        exec += match std::fs::metadata(&count) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("container {id}: stat {count}")),
        };
    }
    Ok((http, exec))
}

/// `Tcp: ... PassiveOpens` from the text of /proc/net/snmp (a header line
/// of names, then a line of values).
pub fn passive_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_opens_is_read_by_its_column() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
            Tcp: 1 200 120000 -1 7 4242 0\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(passive_opens(snmp), Some(4242));
        assert_eq!(passive_opens("Tcp: ActiveOpens\nTcp: 1\n"), None);
        assert_eq!(passive_opens(""), None);
    }

    #[test]
    fn pods_carry_the_probes_of_their_set() -> Result<()> {
        for p in Probes::ALL {
            let v = pod_manifest("p-1", "example.test/busybox:1", p);
            controlplane::Object::from_value(v.clone())?;
            let c = &v["spec"]["containers"][0];
            assert_eq!(c["readinessProbe"]["httpGet"].is_object(), p.http());
            assert_eq!(c["livenessProbe"]["exec"].is_object(), p.exec());
            if p.http() {
                assert_eq!(c["readinessProbe"]["periodSeconds"], PERIOD_S);
            }
        }
        Ok(())
    }
}
