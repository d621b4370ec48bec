//! The pods benchmark: pod start latency of `knode agent` against raw
//! containerd (`ctr run -d`), interleaved; a churn of many pods created and
//! deleted at once, with every leftover counted; and the agent's memory
//! with 0 and with many pods. Everything runs on a whole test node (private
//! containerd, a host network namespace, the agent inside it, every path
//! in a temp dir) that is removed when `run` returns, success or not; the
//! root network namespace is never touched.

mod churn;
mod leaks;
mod report;

use crate::controlplane::procfs;
mod start;
pub(crate) mod watch;

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::containerd::{CONTAINERD, CTR};
use knode_tests::node::{tail, Node};
use knode_tests::TempDir;
use netns_tests::bin_dir;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Opts;

/// Timed pod starts per side.
pub const START_SAMPLES: usize = 50;
/// Pods in the churn manifest.
pub const CHURN_PODS: usize = 100;
/// The Kubernetes namespace the pods go to.
pub const POD_NAMESPACE: &str = "default";
/// The containerd namespace of the `ctr run` side (the agent has its own).
pub const RAW_NAMESPACE: &str = "bench-raw";
/// How long one pod may take to start or to go.
pub const POD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the churn's create, delete and clean-up phases may each take.
pub const CLEAN_TIMEOUT: Duration = Duration::from_secs(300);
/// Quiet time before a memory reading, so it shows a steady state.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Everything one run measured.
pub struct Results {
    pub image: String,
    pub raw_image: String,
    pub warmup: usize,
    pub start: start::Samples,
    pub churn: churn::Churn,
    /// The agent's memory with no pod, before anything ran.
    pub mem_idle: procfs::Mem,
    /// The agent's memory with no pod, after everything ran.
    pub mem_after: procfs::Mem,
    /// How often the pod watch had to be reopened.
    pub watch_reopened: usize,
    pub containerd_version: String,
    pub runc_version: String,
}

/// Runs the benchmark and writes `pods.json` and `pods.svg` to `opts.out`;
/// fails (after writing them) when the churn left anything behind.
pub fn run(opts: &Opts) -> Result<()> {
    for tool in [CONTAINERD, CTR] {
        if !Path::new(tool).is_file() {
            bail!("{tool} missing: install containerd (make bootstrap does)");
        }
    }
    crate::require_node_bins()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;

    eprintln!("pods: starting a node (private containerd, host namespace, knode agent)");
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
        .with_context(|| with_log("import the image into the agent's namespace"))?;
    let image = knode_tests::image::BUSYBOX.to_string();
    let raw_image = import_raw(&node, &tar, &image)?;
    let agent_pid = agent_pid(&node)?;
    std::thread::sleep(SETTLE);
    let mem_idle = procfs::mem(agent_pid)?;

    let (start, churn, reopened) = rt.block_on(async {
        let mut pods = watch::PodWatch::open(&node.agent.socket(), POD_NAMESPACE).await?;
        eprintln!(
            "pods: start latency, {} warm-up + {START_SAMPLES} timed starts per side, interleaved",
            opts.warmup
        );
        let start = start::measure(
            &node,
            &mut pods,
            &image,
            &raw_image,
            opts.warmup,
            START_SAMPLES,
        )
        .await
        .with_context(|| with_log("start latency"))?;
        eprintln!("pods: churn, {CHURN_PODS} pods applied at once, then deleted at once");
        let churn = churn::measure(&node, &mut pods, &image, CHURN_PODS, agent_pid)
            .await
            .with_context(|| with_log("churn"))?;
        Ok::<_, anyhow::Error>((start, churn, pods.reopened))
    })?;
    std::thread::sleep(SETTLE);
    let mem_after = procfs::mem(agent_pid)?;
    let results = Results {
        image,
        raw_image,
        warmup: opts.warmup,
        start,
        churn,
        mem_idle,
        mem_after,
        watch_reopened: reopened,
        containerd_version: crate::report::first_line(&[CONTAINERD, "--version"]),
        runc_version: crate::report::first_line(&["runc", "--version"]),
    };
    report::write(opts, &results)?;
    let leaks = &results.churn.leaks;
    if leaks.total() > 0 {
        bail!(
            "the churn left {} things behind: {}\n{}",
            leaks.total(),
            leaks.describe_nonzero(),
            with_log("leaks")
        );
    }
    Ok(())
}

/// The manifest of the benchmark's pod: one busybox container sleeping,
/// the image already imported, and no grace period (its `sleep`, PID 1,
/// ignores SIGTERM, so a grace period would only measure the wait; the
/// reference side is SIGKILLed too).
pub fn pod_manifest(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": POD_NAMESPACE, "labels": {"app": "bench-pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    })
}

/// `knode ARGS` pointed at the node's agent.
pub fn knode_cmd(node: &Node, args: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("knode"));
    c.args(node.agent.flags()).args(args);
    c
}

/// Spawns `cmd` (called `what` in errors) with `stdin` fed to it while
/// `wait` runs; returns the spawn instant, the time until `cmd` exited and
/// what `wait` returned. A failing command fails this at once, without
/// waiting for `wait`.
pub async fn run_while<T>(
    what: &str,
    mut cmd: Command,
    stdin: &str,
    wait: impl Future<Output = Result<T>>,
) -> Result<(Instant, Duration, T)> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let mut input = child.stdin.take().context("no stdin pipe")?;
    let exited = async move {
        input.write_all(stdin.as_bytes()).await?;
        drop(input);
        let out = child.wait_with_output().await?;
        Ok::<_, anyhow::Error>((out, t0.elapsed()))
    };
    let check = |out: std::process::Output| -> Result<()> {
        if !out.status.success() {
            bail!(
                "{what}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    tokio::pin!(exited);
    tokio::pin!(wait);
    let mut took = None;
    let value = loop {
        tokio::select! {
            r = &mut exited, if took.is_none() => {
                let (out, t) = r?;
                check(out)?;
                took = Some(t);
            }
            v = &mut wait => break v?,
        }
    };
    let took = match took {
        Some(t) => t,
        None => {
            let (out, t) = exited.await?;
            check(out)?;
            t
        }
    };
    Ok((t0, took, value))
}

/// Imports the image tar into the raw side's containerd namespace
/// (unpacked for overlayfs, as the agent's is) and returns the name `ctr`
/// stored it under.
fn import_raw(node: &Node, tar: &Path, image: &str) -> Result<String> {
    let tar_s = tar.display().to_string();
    node.containerd
        .ctr_out(
            RAW_NAMESPACE,
            &["images", "import", "--snapshotter", "overlayfs", &tar_s],
        )
        .context("ctr images import")?;
    let names = node
        .containerd
        .ids(RAW_NAMESPACE, &["images", "ls", "-q"])?;
    pick_image(&names, image).with_context(|| {
        format!("ctr images import {tar_s}: no image named like {image:?} among {names:?}")
    })
}

/// The stored name for `image`: itself, its docker.io normal form, or the
/// only image there is.
fn pick_image(names: &[String], image: &str) -> Option<String> {
    let normal = if image.contains('/') {
        let first = image.split('/').next().unwrap_or_default();
        if first.contains('.') || first.contains(':') || first == "localhost" {
            image.to_string()
        } else {
            format!("docker.io/{image}")
        }
    } else {
        format!("docker.io/library/{image}")
    };
    let tagged = |n: &str| {
        if n.rsplit('/').next()?.contains(':') {
            Some(n.to_string())
        } else {
            None
        }
    };
    let candidates = [
        Some(image.to_string()),
        Some(normal.clone()),
        tagged(&normal)
            .is_none()
            .then(|| format!("{normal}:latest")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|c| names.contains(c))
        .or_else(|| (names.len() == 1).then(|| names[0].clone()))
}

/// The pid of the `knode agent` process (the fixture starts it through
/// `nsenter`, which execs it, so the child's pid is the agent's).
fn agent_pid(node: &Node) -> Result<u32> {
    let pid = node.agent.pid().context("the agent is not running")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("read /proc/{pid}/comm"))?;
    if comm.trim() != "knode" {
        bail!(
            "pid {pid} is {:?}, not the knode agent (did the fixture stop exec'ing it?)",
            comm.trim()
        );
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_manifest_is_a_valid_pod() -> Result<()> {
        let v = pod_manifest("p-1", "example.test/busybox:1");
        let o = controlplane::Object::from_value(v.clone())?;
        assert_eq!((o.name(), o.namespace()), ("p-1", POD_NAMESPACE));
        assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 0);
        assert_eq!(
            v["spec"]["containers"][0]["command"],
            json!(["sleep", "3600"])
        );
        Ok(())
    }

    #[test]
    fn image_names_match_as_containerd_stores_them() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = names(&["docker.io/library/busybox:latest", "example.test/x:1"]);
        assert_eq!(
            pick_image(&two, "busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            pick_image(&two, "example.test/x:1").as_deref(),
            Some("example.test/x:1")
        );
        let one = names(&["example.test/only:2"]);
        assert_eq!(
            pick_image(&one, "other").as_deref(),
            Some("example.test/only:2")
        );
        assert_eq!(pick_image(&two, "other"), None);
        let lib = names(&["docker.io/me/app:3"]);
        assert_eq!(
            pick_image(&lib, "me/app:3").as_deref(),
            Some("docker.io/me/app:3")
        );
    }
}
