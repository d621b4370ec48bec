//! Pod churn: one `knode apply -f -` of a manifest holding many pods, until
//! every one is Running; the agent's memory then; one `knode delete -f -`
//! of the same manifest, until the control plane lists none of them and
//! then until the node holds nothing of them; and the leftovers counted
//! after that (any is a leak).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use knode_tests::node::Node;

use super::leaks::Leaks;
use super::procfs::{self, Mem};
use super::watch::PodWatch;
use super::{knode_cmd, pod_manifest, run_while, CLEAN_TIMEOUT, SETTLE};

/// What one churn measured.
#[derive(Debug, Clone)]
pub struct Churn {
    pub pods: usize,
    /// Spawn of `knode apply` until it returned.
    pub apply_returned: Duration,
    /// Spawn of `knode apply` until the last pod was Running with a podIP.
    pub all_running: Duration,
    /// The agent's memory with every pod running (after [`SETTLE`]).
    pub mem_running: Mem,
    /// Spawn of `knode delete` until it returned.
    pub delete_returned: Duration,
    /// Spawn of `knode delete` until the control plane listed none.
    pub all_deleted: Duration,
    /// Spawn of `knode delete` until the node held nothing of them
    /// (every leftover count 0); `None` when that did not happen in
    /// [`CLEAN_TIMEOUT`].
    pub node_clean: Option<Duration>,
    /// The leftovers at the end (all 0 when `node_clean` is set).
    pub leaks: Leaks,
}

/// Runs one churn of `n` pods named `churn-NNN`.
pub async fn measure(
    node: &Node,
    pods: &mut PodWatch,
    image: &str,
    n: usize,
    agent_pid: u32,
) -> Result<Churn> {
    let names: Vec<String> = (0..n).map(|i| format!("churn-{i:03}")).collect();
    let mut manifest = String::new();
    for name in &names {
        manifest.push_str("---\n");
        manifest.push_str(&serde_json::to_string(&pod_manifest(name, image))?);
        manifest.push('\n');
    }

    let what = format!("{n} pods Running");
    let wait = pods.wait_until(
        CLEAN_TIMEOUT,
        &what,
        |p| p.count_running(&names) == n,
        |p| format!("{} of {n} running", p.count_running(&names)),
    );
    let (t0, apply_returned, at) = run_while(
        "knode apply",
        knode_cmd(node, &["apply", "-f", "-"]),
        &manifest,
        wait,
    )
    .await
    .context("create")?;
    let all_running = at.duration_since(t0);
    eprintln!(
        "pods: churn: {n} pods Running after {:.2} s",
        all_running.as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let mem_running = procfs::mem(agent_pid)?;

    let what = format!("{n} pods deleted");
    let wait = pods.wait_until(
        CLEAN_TIMEOUT,
        &what,
        |p| p.count_existing(&names) == 0,
        |p| format!("{} of {n} still listed", p.count_existing(&names)),
    );
    let (t0, delete_returned, at) = run_while(
        "knode delete",
        knode_cmd(node, &["delete", "-f", "-"]),
        &manifest,
        wait,
    )
    .await
    .context("delete")?;
    let all_deleted = at.duration_since(t0);

    // The dirs are polled (cheap); containerd and the host namespace are
    // asked only once they are empty, so polling adds little load to the
    // teardown it waits for.
    let deadline = t0 + CLEAN_TIMEOUT;
    let (leaks, node_clean) = loop {
        if Leaks::read_files(node)?.total() == 0 {
            let leaks = Leaks::read(node)?;
            if leaks.total() == 0 {
                break (leaks, Some(t0.elapsed()));
            }
        }
        if Instant::now() > deadline {
            break (Leaks::read(node)?, None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Churn {
        pods: n,
        apply_returned,
        all_running,
        mem_running,
        delete_returned,
        all_deleted,
        node_clean,
        leaks,
    })
}
