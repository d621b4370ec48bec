//! Pod start latency, ours against raw containerd, interleaved: from the
//! spawn of `knode apply -f -` of a one-container pod until the watch shows
//! it Running with a podIP, against the spawn of `ctr run -d` of the same
//! image until it returns (the task is RUNNING then). Each sample starts on
//! a clean node: after it, the pod is deleted (or the ctr task killed and
//! its container removed) and the harness waits, untimed, until nothing of
//! it is left before the next sample.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::{ControlPlane, Kind, ObjectRef};
use knode_tests::node::Node;
use tokio::process::Command;

use super::watch::PodWatch;
use super::{knode_cmd, pod_manifest, run_while, POD_NAMESPACE, POD_TIMEOUT, RAW_NAMESPACE};

/// Which way a pod was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Raw,
}

impl Side {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Raw => "reference",
        }
    }

    /// What it times, for the report.
    pub fn about(self) -> &'static str {
        match self {
            Side::Ours => {
                "`knode apply -f -` of a one-container pod, spawn until the control plane's \
                 watch shows it Running with a podIP (sandbox, CNI, container, status write)"
            }
            Side::Raw => {
                "`ctr run -d --snapshotter overlayfs IMAGE ID sleep 3600`, spawn until it \
                 returns (task RUNNING; no network setup)"
            }
        }
    }
}

/// The timings of both sides (warm-up excluded).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Ours: spawn until Running with a podIP.
    pub ours: Vec<Duration>,
    /// Ours: spawn until `knode apply` returned.
    pub ours_ack: Vec<Duration>,
    /// Raw: spawn until `ctr run -d` returned.
    pub raw: Vec<Duration>,
    /// The very first sample of each side (a warm-up one unless warm-up is 0).
    pub ours_first: Option<Duration>,
    pub raw_first: Option<Duration>,
}

/// Runs `warmup` untimed and `n` timed starts per side, one at a time,
/// alternating which side goes first.
pub async fn measure(
    node: &Node,
    pods: &mut PodWatch,
    image: &str,
    raw_image: &str,
    warmup: usize,
    n: usize,
) -> Result<Samples> {
    let mut s = Samples::default();
    for i in 0..warmup + n {
        let timed = i >= warmup;
        let tag = if timed {
            format!("{}", i - warmup)
        } else {
            format!("warm-{i}")
        };
        let order = if i % 2 == 0 {
            [Side::Ours, Side::Raw]
        } else {
            [Side::Raw, Side::Ours]
        };
        for side in order {
            match side {
                Side::Ours => {
                    let name = format!("start-{tag}");
                    let (ack, running) = start_ours(node, pods, image, &name)
                        .await
                        .with_context(|| format!("start pod {name}"))?;
                    s.ours_first.get_or_insert(running);
                    if timed {
                        s.ours.push(running);
                        s.ours_ack.push(ack);
                    }
                    remove_ours(node, pods, &name)
                        .await
                        .with_context(|| format!("remove pod {name}"))?;
                }
                Side::Raw => {
                    let id = format!("raw-{tag}");
                    let took = start_raw(node, raw_image, &id)
                        .await
                        .with_context(|| format!("ctr run {id}"))?;
                    s.raw_first.get_or_insert(took);
                    if timed {
                        s.raw.push(took);
                    }
                    remove_raw(node, &id)
                        .await
                        .with_context(|| format!("remove ctr container {id}"))?;
                }
            }
        }
    }
    Ok(s)
}

/// Applies the pod and waits for it: (until apply returned, until Running).
async fn start_ours(
    node: &Node,
    pods: &mut PodWatch,
    image: &str,
    name: &str,
) -> Result<(Duration, Duration)> {
    let manifest = serde_json::to_string(&pod_manifest(name, image))?;
    let cmd = knode_cmd(node, &["apply", "-f", "-"]);
    let what = format!("pod {name} Running with a podIP");
    let wait = pods.wait_until(POD_TIMEOUT, &what, |p| p.running(name), |p| p.detail(name));
    let (t0, ack, at) = run_while("knode apply", cmd, &manifest, wait).await?;
    Ok((ack, at.duration_since(t0)))
}

/// Deletes the pod through the socket and waits, untimed, until it is gone
/// from the control plane and the node holds nothing of it.
async fn remove_ours(node: &Node, pods: &mut PodWatch, name: &str) -> Result<()> {
    pods.client()
        .delete(&ObjectRef::new(Kind::Pod, POD_NAMESPACE, name), None)
        .await
        .map_err(|e| anyhow::anyhow!("delete pod {name}: {e}"))?;
    pods.wait_until(
        POD_TIMEOUT,
        &format!("pod {name} deleted"),
        |p| !p.exists(name),
        |_| "still listed".into(),
    )
    .await?;
    wait_node_idle(node).await
}

/// Waits until the node runs no pod: its log dirs (removed last by a
/// teardown) and netns pins are gone and containerd holds no container.
async fn wait_node_idle(node: &Node) -> Result<()> {
    let deadline = Instant::now() + POD_TIMEOUT;
    let empty =
        |rel: &str| std::fs::read_dir(node.path(rel)).map_or(true, |mut d| d.next().is_none());
    loop {
        if empty("logs") && empty("netns") && node.containers()?.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the node still holds a deleted pod after {POD_TIMEOUT:?}: containers {:?}",
                node.containers()?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ctr run -d` of the image: spawn until it returned.
async fn start_raw(node: &Node, image: &str, id: &str) -> Result<Duration> {
    let mut cmd = ctr(node);
    cmd.args(["run", "-d", "--snapshotter", "overlayfs", image, id])
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = cmd.output().await.context("spawn ctr run")?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "ctr run: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Untimed: the task really is running.
    let tasks = ctr_out(node, &["tasks", "ls"]).await?;
    let running = tasks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.first() == Some(&id) && f.last() == Some(&"RUNNING")
    });
    if !running {
        bail!("ctr run {id} returned but its task is not RUNNING:\n{tasks}");
    }
    Ok(took)
}

/// Kills the ctr task and removes task, container and snapshot.
async fn remove_raw(node: &Node, id: &str) -> Result<()> {
    ctr_out(node, &["tasks", "kill", "-s", "SIGKILL", id]).await?;
    // `rm -f` waits out the kill instead of failing on a task still running.
    ctr_out(node, &["tasks", "rm", "-f", id]).await?;
    ctr_out(node, &["containers", "rm", id]).await?;
    Ok(())
}

/// `ctr --address SOCK -n RAW_NAMESPACE`.
fn ctr(node: &Node) -> Command {
    Command::from(node.containerd.ctr(RAW_NAMESPACE))
}

/// Runs `ctr ARGS` in the raw namespace; fails with its stderr.
pub async fn ctr_out(node: &Node, args: &[&str]) -> Result<String> {
    let out = ctr(node)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run ctr")?;
    if !out.status.success() {
        bail!(
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
