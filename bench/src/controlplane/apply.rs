//! Apply throughput: one `knode apply -n NS -f DIR` of [`super::APPLY_PODS`]
//! pod manifests against the embedded agent and against etcd directly
//! (`--control-plane etcd://`), and the raw floor: the same JSON put
//! sequentially with etcd-client. Rounds are interleaved, each into a fresh
//! namespace, and every side is checked by counting what it stored. The
//! CPU time the client and the server spent in each round says where the
//! wall-clock time went.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::registry::{Allocators, Registry};
use controlplane::rest::client::Client;
use controlplane::storage::etcd::Etcd;
use controlplane::{ControlPlane, Kind, Object, Scope};
use etcd_client::GetOptions;
use knode_tests::agent::Agent;
use netns_tests::{our_bin, TempDir};
use serde_json::json;
use tokio::runtime::Runtime;

use super::procfs;
use super::{control_plane_flag, pod_manifest, Side};

/// Where the raw reference puts its pods (outside knode's `/knode/`).
pub const RAW_PREFIX: &str = "/bench-raw/pods/";

impl Side {
    /// The process serving this side's writes.
    pub fn server(self) -> &'static str {
        match self {
            Side::Embedded => "knode agent",
            Side::Etcd | Side::EtcdRaw => "etcd",
        }
    }

    /// The process writing, for the report.
    pub fn client(self) -> &'static str {
        match self {
            Side::Embedded | Side::Etcd => "knode apply",
            Side::EtcdRaw => "bench (etcd-client)",
        }
    }

    /// What it runs, for the report.
    pub fn apply_about(self) -> &'static str {
        match self {
            Side::Embedded => "knode apply -n NS -f DIR (CLI -> agent socket -> redb), process start to exit",
            Side::Etcd => "knode --control-plane etcd:// apply -n NS -f DIR (CLI -> etcd), process start to exit",
            Side::EtcdRaw => "sequential etcd-client puts of the same JSON files, in process (connect untimed)",
        }
    }
}

/// One side's rounds.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub side: Side,
    pub pods: usize,
    /// Wall-clock time of each round.
    pub took: Vec<Duration>,
    /// Pods the side held in each round's namespace afterwards.
    pub listed: Vec<usize>,
    /// CPU time (user + system) of the writing process in each round.
    pub client_cpu: Vec<Duration>,
    /// CPU time of the serving process (agent or etcd) in each round.
    pub server_cpu: Vec<Duration>,
}

/// One round of one side.
struct Round {
    took: Duration,
    listed: usize,
    client_cpu: Duration,
    server_cpu: Duration,
}

/// What the rounds need to reach each side.
struct Env<'a> {
    agent: &'a Agent,
    agent_pid: u32,
    etcd_pid: u32,
    endpoints: &'a [String],
    dir: String,
    cli: TempDir,
    docs: Vec<(String, String)>,
    embedded: Client,
    etcd: Registry,
    raw: etcd_client::Client,
}

/// Writes the manifests, then runs `rounds` rounds; each round applies
/// them on every side (rotating which goes first) into namespace `apply-<round>`.
pub fn measure(
    rt: &Runtime,
    agent: &Agent,
    etcd_pid: u32,
    endpoints: &[String],
    pods: usize,
    rounds: usize,
) -> Result<Vec<Outcome>> {
    let dir = TempDir::new("bench-manifests")?;
    let mut docs = Vec::with_capacity(pods);
    for i in 0..pods {
        let name = format!("pod-{i:04}");
        let text = serde_json::to_string_pretty(&pod_manifest(&name))?;
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, &text).with_context(|| format!("write {}", p.display()))?;
        docs.push((name, text));
    }
    let (etcd, raw) = rt.block_on(async {
        let reg = Registry::new(
            Arc::new(Etcd::connect(endpoints).await?),
            Allocators::default(),
        );
        let raw = etcd_client::Client::connect(endpoints, None).await?;
        Ok::<_, anyhow::Error>((reg, raw))
    })?;
    let env = Env {
        agent,
        agent_pid: agent.pid().context("the agent is not running")?,
        etcd_pid,
        endpoints,
        dir: dir.path().display().to_string(),
        // The CLI on etcd talks to etcd itself; this only keeps it off /var and /run.
        cli: TempDir::new("bench-cli")?,
        docs,
        embedded: Client::new(&agent.socket()),
        etcd,
        raw,
    };
    let mut out: Vec<Outcome> = Side::ALL
        .iter()
        .map(|&side| Outcome {
            side,
            pods,
            took: Vec::with_capacity(rounds),
            listed: Vec::with_capacity(rounds),
            client_cpu: Vec::with_capacity(rounds),
            server_cpu: Vec::with_capacity(rounds),
        })
        .collect();
    for round in 0..rounds {
        let ns = format!("apply-{round}");
        rt.block_on(async {
            for cp in [&env.embedded as &dyn ControlPlane, &env.etcd] {
                cp.create(namespace(&ns)?, None)
                    .await
                    .with_context(|| format!("create namespace {ns}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        for j in 0..out.len() {
            let k = (round + j) % out.len();
            let side = out[k].side;
            let r = once(rt, &env, side, &ns)
                .with_context(|| format!("{} apply into {ns}", side.name()))?;
            let listed = r.listed;
            if listed != pods {
                bail!(
                    "{}: {listed} pods stored in {ns} after the apply, want {pods}",
                    side.name()
                );
            }
            out[k].took.push(r.took);
            out[k].listed.push(r.listed);
            out[k].client_cpu.push(r.client_cpu);
            out[k].server_cpu.push(r.server_cpu);
        }
    }
    Ok(out)
}

/// CPU times at one moment: this process's own, its reaped children's,
/// and the serving process's.
fn cpu_now(server: u32) -> Result<(Duration, Duration, Duration)> {
    let (own, children) = procfs::cpu(None)?;
    let (server, _) = procfs::cpu(Some(server))?;
    Ok((own, children, server))
}

/// One apply on `side` into `ns`: timed, with the CPU it cost, then
/// (outside both) the pods stored there counted.
fn once(rt: &Runtime, env: &Env, side: Side, ns: &str) -> Result<Round> {
    let server = match side {
        Side::Embedded => env.agent_pid,
        Side::Etcd | Side::EtcdRaw => env.etcd_pid,
    };
    let before = cpu_now(server)?;
    let took = apply_once(rt, env, side, ns)?;
    let after = cpu_now(server)?;
    let client_cpu = match side {
        // The CLI is a child this process waited for.
        Side::Embedded | Side::Etcd => after.1.saturating_sub(before.1),
        Side::EtcdRaw => after.0.saturating_sub(before.0),
    };
    let listed = rt.block_on(async {
        match side {
            Side::Embedded => count_pods(&env.embedded, ns).await,
            Side::Etcd => count_pods(&env.etcd, ns).await,
            Side::EtcdRaw => raw_count(&env.raw, ns).await,
        }
    })?;
    Ok(Round {
        took,
        listed,
        client_cpu,
        server_cpu: after.2.saturating_sub(before.2),
    })
}

/// The apply itself, timed: `knode apply` from spawn to exit (it must
/// report every pod created), or the raw puts.
fn apply_once(rt: &Runtime, env: &Env, side: Side, ns: &str) -> Result<Duration> {
    let pods = env.docs.len();
    let (took, res) = match side {
        Side::Embedded => {
            let t0 = Instant::now();
            let res = env.agent.knode(&["apply", "-n", ns, "-f", &env.dir])?;
            (t0.elapsed(), res)
        }
        Side::Etcd => {
            let mut cmd = Command::new(our_bin("knode"));
            cmd.args(["--config", "/dev/null", "--data-dir"])
                .arg(env.cli.path().join("data"))
                .arg("--run-dir")
                .arg(env.cli.path().join("run"))
                .args(["--control-plane", &control_plane_flag(env.endpoints)])
                .args(["apply", "-n", ns, "-f", &env.dir])
                .stdin(Stdio::null());
            let t0 = Instant::now();
            let res = cmd.output().context("run knode apply against etcd")?;
            (t0.elapsed(), res)
        }
        Side::EtcdRaw => return rt.block_on(raw_puts(&env.raw, ns, &env.docs)),
    };
    check(&res, pods)?;
    Ok(took)
}

fn namespace(name: &str) -> Result<Object> {
    Object::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .with_context(|| format!("build Namespace {name}"))
}

/// Fails unless `knode apply` succeeded and reported every pod created.
fn check(res: &Output, pods: usize) -> Result<()> {
    let stdout = String::from_utf8_lossy(&res.stdout);
    let created = stdout.lines().filter(|l| l.ends_with(" created")).count();
    if !res.status.success() || created != pods {
        bail!(
            "knode apply exited with {} and created {created} of {pods} pods:\n{}",
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

async fn count_pods(cp: &dyn ControlPlane, ns: &str) -> Result<usize> {
    Ok(cp
        .list(&Scope::namespaced(Kind::Pod, ns))
        .await
        .with_context(|| format!("list pods in {ns}"))?
        .items
        .len())
}

/// Puts every document under [`RAW_PREFIX`]`<ns>/`, one after another.
async fn raw_puts(
    client: &etcd_client::Client,
    ns: &str,
    docs: &[(String, String)],
) -> Result<Duration> {
    let mut kv = client.kv_client();
    let prefix = format!("{RAW_PREFIX}{ns}/");
    let t0 = Instant::now();
    for (name, text) in docs {
        kv.put(format!("{prefix}{name}"), text.as_bytes(), None)
            .await
            .with_context(|| format!("raw put {prefix}{name}"))?;
    }
    Ok(t0.elapsed())
}

/// Keys the raw reference stored for `ns`.
async fn raw_count(client: &etcd_client::Client, ns: &str) -> Result<usize> {
    let prefix = format!("{RAW_PREFIX}{ns}/");
    let n = client
        .kv_client()
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    Ok(usize::try_from(n).unwrap_or(0))
}
