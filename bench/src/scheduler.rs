//! Scheduler throughput (`bench scheduler`): 1,000 pending pods bound
//! across 3 ready nodes by the controller manager's scheduler, on the
//! embedded control plane, 3 rounds. The pods are written before the
//! manager starts, so the binding phase (first bind to last, polled every
//! 20 ms) measures the scheduler and the store alone; the total adds the
//! leader election and the informers' first lists. There is no reference
//! to run beside it here: kube-scheduler is not installable on this
//! machine, and its default client QPS (50, burst 100; kubernetes#87809)
//! bounds it to tens to a few hundred binds per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::{ControlPlane, Object, Scope};
use serde_json::json;

use crate::report::{host_facts, with_targets, write_file};
use crate::Opts;

const PODS: usize = 1000;
const NODES: usize = 3;
const ROUNDS: usize = 3;

async fn setup(cp: &dyn ControlPlane) -> Result<()> {
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}});
    let _ = cp.create(Object::from_value(ns)?, None).await;
    for i in 0..NODES {
        let name = format!("node-{i}");
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        let made = cp.create(Object::from_value(node)?, None).await?;
        let mut v = made.to_value();
        v["status"] = json!({"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "conditions": [{"type": "Ready", "status": "True"}]});
        cp.update_status(Object::from_value(v)?).await?;
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600}});
        cp.create(Object::from_value(lease)?, None).await?;
    }
    for i in 0..PODS {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p-{i}"), "namespace": "default", "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                     "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}});
        cp.create(Object::from_value(pod)?, None).await?;
    }
    Ok(())
}

async fn bound(cp: &dyn ControlPlane) -> Result<(usize, [usize; NODES])> {
    let list = cp
        .list(&Scope::namespaced(controlplane::Kind::Pod, "default"))
        .await?;
    let mut per = [0; NODES];
    let mut n = 0;
    for p in &list.items {
        if let Object::Pod(p) = p {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                n += 1;
                if let Some(i) = node
                    .strip_prefix("node-")
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    per[i.min(NODES - 1)] += 1;
                }
            }
        }
    }
    Ok((n, per))
}

/// One round: (binding phase, total, pods per node).
async fn round() -> Result<(Duration, Duration, [usize; NODES])> {
    let dir = std::env::temp_dir().join(format!("knode-bench-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let alloc = Allocators::parse("10.96.0.0/12", "30000-32767").context("allocators")?;
    let cp: Arc<dyn ControlPlane> = backend::open(&Backend::Embedded, &dir, alloc).await?;
    setup(cp.as_ref()).await?;
    let start = Instant::now();
    let manager = tokio::spawn(controllers::run(cp.clone(), "node-0".into()));
    let mut first = None;
    let deadline = start + Duration::from_secs(120);
    let per = loop {
        let (n, per) = bound(cp.as_ref()).await?;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n == PODS {
            break per;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {PODS} pods bound after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let end = Instant::now();
    manager.abort();
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((end - first.unwrap_or(start), end - start, per))
}

pub fn run(opts: &Opts) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut phases = Vec::new();
    let mut totals = Vec::new();
    let mut spreads = Vec::new();
    for r in 0..ROUNDS {
        let (phase, total, per) = rt.block_on(round())?;
        eprintln!(
            "round {r}: {PODS} pods bound in {:.0} ms ({:.0} pods/s), {:.0} ms with election and first lists; per node {per:?}",
            phase.as_secs_f64() * 1000.0,
            PODS as f64 / phase.as_secs_f64(),
            total.as_secs_f64() * 1000.0
        );
        phases.push(phase);
        totals.push(total);
        spreads.push(per.to_vec());
    }
    phases.sort();
    totals.sort();
    let median = phases[ROUNDS / 2];
    let rate = PODS as f64 / median.as_secs_f64();
    let rate_total = PODS as f64 / totals[ROUNDS / 2].as_secs_f64();
    println!(
        "scheduler: {PODS} pending pods over {NODES} nodes, median of {ROUNDS}: {rate:.0} pods/s binding ({:.0} ms), {rate_total:.0} pods/s from manager start",
        median.as_secs_f64() * 1000.0
    );
    let mut doc = host_facts();
    doc["results"] = json!({
        "pods": PODS, "nodes": NODES, "rounds": ROUNDS,
        "binding_ms": phases.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "total_ms": totals.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "pods_per_node": spreads,
        "median_pods_per_s": rate,
        "median_pods_per_s_from_start": rate_total,
    });
    let doc = with_targets(
        doc,
        vec![
            json!({"what": "scheduler throughput, 1,000 pods over 3 nodes", "goal": ">= 500 pods/s",
                    "value": rate, "met": rate >= 500.0}),
        ],
    );
    write_file(
        &opts.out,
        "scheduler.json",
        &format!("{}\n", serde_json::to_string_pretty(&doc)?),
    )
}
