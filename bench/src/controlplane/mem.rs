//! Memory held per object: VmRSS/VmHWM (from /proc/PID/status) of a fresh
//! `knode agent` (embedded) and of a fresh etcd, idle and after each was
//! filled with the same ConfigMaps (the agent through its socket, etcd
//! through our etcd backend), and after one full list of them. It reads
//! /proc of the two processes it started, nothing else.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::registry::{Allocators, Registry};
use controlplane::rest::client::Client;
use controlplane::storage::etcd::Etcd;
use controlplane::{ControlPlane, Kind, Scope};
use knode_tests::agent::Agent;
use knode_tests::etcd::EtcdCluster;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::procfs::{self, Mem};
use super::{configmap, FILL_CHUNKS, FILL_CONCURRENCY, PAYLOAD_BYTES};

/// Which process a reading is of.
pub const AGENT: &str = "knode agent (embedded)";
pub const ETCD: &str = "etcd (written via our etcd backend)";

/// One reading.
#[derive(Debug, Clone)]
pub struct Reading {
    pub process: &'static str,
    /// "idle", "filled" or "after list".
    pub when: &'static str,
    pub objects: usize,
    pub mem: Mem,
}

/// What filling the stores measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub objects: usize,
    pub readings: Vec<Reading>,
    /// Time spent creating the objects, per process (same order as [`AGENT`], [`ETCD`]).
    pub fill: Vec<(&'static str, Duration)>,
}

/// Starts a fresh agent and etcd, reads their memory idle, fills each
/// with `objects` ConfigMaps (interleaved chunks, [`FILL_CONCURRENCY`] in
/// flight), reads again, lists everything once, reads again.
pub fn measure(rt: &Runtime, objects: usize) -> Result<Outcome> {
    let etcd = EtcdCluster::start(1)?;
    let agent = Agent::start()?;
    let pids = [
        agent.pid().context("the agent is not running")?,
        etcd.pid(0).context("the etcd member is not running")?,
    ];
    let names = [AGENT, ETCD];
    let socket = agent.socket();
    let endpoints = etcd.endpoints();
    rt.block_on(async {
        let reg = Registry::new(
            Arc::new(Etcd::connect(&endpoints).await?),
            Allocators::default(),
        );
        reg.bootstrap().await?;
        let cps: [Arc<dyn ControlPlane>; 2] = [Arc::new(Client::new(&socket)), Arc::new(reg)];
        let scope = Scope::namespaced(Kind::ConfigMap, "default");
        // Each has served a request: idle means "up, holding nothing".
        for cp in &cps {
            cp.list(&scope).await?;
        }
        let mut readings = Vec::new();
        let read = |readings: &mut Vec<Reading>, when, objects| -> Result<()> {
            for (pid, process) in pids.iter().zip(names) {
                readings.push(Reading {
                    process,
                    when,
                    objects,
                    mem: procfs::mem(*pid)?,
                });
            }
            Ok(())
        };
        read(&mut readings, "idle", 0)?;
        let mut fill = [Duration::ZERO; 2];
        let chunk = objects.div_ceil(FILL_CHUNKS.max(1));
        let mut start = 0;
        while start < objects {
            let end = (start + chunk).min(objects);
            for (k, cp) in cps.iter().enumerate() {
                let t0 = Instant::now();
                create_many(cp.clone(), start..end)
                    .await
                    .with_context(|| format!("fill {}", names[k]))?;
                fill[k] += t0.elapsed();
            }
            start = end;
        }
        read(&mut readings, "filled", objects)?;
        for (k, cp) in cps.iter().enumerate() {
            let n = cp.list(&scope).await?.items.len();
            if n != objects {
                bail!(
                    "{}: {n} ConfigMaps listed after the fill, want {objects}",
                    names[k]
                );
            }
        }
        read(&mut readings, "after list", objects)?;
        Ok(Outcome {
            objects,
            readings,
            fill: names.into_iter().zip(fill).collect(),
        })
    })
}

/// Creates ConfigMaps `held-<i>` for `range`, [`FILL_CONCURRENCY`] at a time.
async fn create_many(cp: Arc<dyn ControlPlane>, range: Range<usize>) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut set = JoinSet::new();
    for _ in 0..FILL_CONCURRENCY {
        let (cp, next, end) = (cp.clone(), next.clone(), range.end);
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, anyhow::Error>(());
                }
                let name = format!("held-{i:05}");
                cp.create(configmap(&name, PAYLOAD_BYTES)?, None)
                    .await
                    .with_context(|| format!("create ConfigMap {name}"))?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("a create task panicked")??;
    }
    Ok(())
}
