//! Apply throughput: one `knode apply -n NS -f DIR` of [`super::APPLY_PODS`]
//! pod manifests against the embedded agent and against etcd directly
//! (`--control-plane etcd://`), and the raw floor: the same JSON put
//! sequentially with etcd-client. Rounds are interleaved, each into a fresh
//! namespace, and every side is checked by counting what it stored.

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

use super::{control_plane_flag, pod_manifest};

/// Where the raw reference puts its pods (outside knode's `/knode/`).
pub const RAW_PREFIX: &str = "/bench-raw/pods/";

/// Which path an apply takes.
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

    /// What it runs, for the report.
    pub fn about(self) -> &'static str {
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
}

/// What the rounds need to reach each side.
struct Env<'a> {
    agent: &'a Agent,
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
            let (took, listed) = once(rt, &env, side, &ns)
                .with_context(|| format!("{} apply into {ns}", side.name()))?;
            if listed != pods {
                bail!(
                    "{}: {listed} pods stored in {ns} after the apply, want {pods}",
                    side.name()
                );
            }
            out[k].took.push(took);
            out[k].listed.push(listed);
        }
    }
    Ok(out)
}

/// One apply on `side` into `ns`: (time, pods stored there afterwards).
fn once(rt: &Runtime, env: &Env, side: Side, ns: &str) -> Result<(Duration, usize)> {
    let pods = env.docs.len();
    match side {
        Side::Embedded => {
            let t0 = Instant::now();
            let res = env.agent.knode(&["apply", "-n", ns, "-f", &env.dir])?;
            let took = t0.elapsed();
            check(&res, pods)?;
            Ok((took, rt.block_on(count_pods(&env.embedded, ns))?))
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
            let took = t0.elapsed();
            check(&res, pods)?;
            Ok((took, rt.block_on(count_pods(&env.etcd, ns))?))
        }
        Side::EtcdRaw => rt.block_on(raw_puts(&env.raw, ns, &env.docs)),
    }
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

/// Puts every document under [`RAW_PREFIX`]`<ns>/`, one after another;
/// (time, keys stored there).
async fn raw_puts(
    client: &etcd_client::Client,
    ns: &str,
    docs: &[(String, String)],
) -> Result<(Duration, usize)> {
    let mut kv = client.kv_client();
    let prefix = format!("{RAW_PREFIX}{ns}/");
    let t0 = Instant::now();
    for (name, text) in docs {
        kv.put(format!("{prefix}{name}"), text.as_bytes(), None)
            .await
            .with_context(|| format!("raw put {prefix}{name}"))?;
    }
    let took = t0.elapsed();
    let n = kv
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    Ok((took, usize::try_from(n).unwrap_or(0)))
}
