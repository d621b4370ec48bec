//! Lifecycle hooks end to end: a real `knode agent`, a private containerd,
//! busybox pods writing to a host directory the test reads. preStop runs
//! before SIGTERM reaches the process; postStart runs after the start, and
//! a failing one restarts the container.

use std::time::{Duration, Instant};

use anyhow::Result;
use knode_tests::node::Node;
use knode_tests::TempDir;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

/// Waits until `path` holds `want`; fails with what it holds.
fn wait_file(path: &std::path::Path, want: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{} holds {got:?}, not {want:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On delete, the preStop hook writes its line before the process gets
/// SIGTERM and writes its own.
#[test]
fn pre_stop_runs_before_sigterm() -> Result<()> {
    let Some(n) = Node::for_test("pre_stop_runs_before_sigterm") else {
        return Ok(());
    };
    let host = TempDir::new("prestop")?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo term >> /host/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: host, mountPath: /host}}]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /host/log; sleep 1"]}}
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
        host.path().display()
    ))?;
    n.wait_running("graceful")?;
    n.knode(&["delete", "pod", "graceful"])?;
    wait_file(
        &host.path().join("log"),
        "prestop\nterm\n",
        Duration::from_secs(30),
    )?;
    Ok(())
}

/// A postStart hook runs once the container has started; a failing one
/// stops the container, which restarts by its policy.
#[test]
fn post_start_runs_and_a_failing_one_restarts_the_container() -> Result<()> {
    let Some(n) = Node::for_test("post_start_runs_and_a_failing_one_restarts_the_container") else {
        return Ok(());
    };
    let host = TempDir::new("poststart")?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "echo $$ > /tmp/pid; exec sleep 600"]
    volumeMounts: [{{name: host, mountPath: /host}}]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "while [ ! -f /tmp/pid ]; do sleep 0.1; done; echo started > /host/poststart"]}}
  - name: broken
    image: {BUSYBOX}
    command: ["sleep", "600"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "exit 3"]}}
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
        host.path().display()
    ))?;
    wait_file(
        &host.path().join("poststart"),
        "started\n",
        Duration::from_secs(60),
    )?;
    let p = n.wait_pod("hooked", Duration::from_secs(60), |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "broken"))
            .is_some_and(|c| c["restartCount"].as_i64() >= Some(1))
    })?;
    let app = p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "app"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(app["restartCount"], 0, "{app:#}");
    Ok(())
}

/// A new image for one container of a running pod (the update Kubernetes
/// allows) restarts only that container, with the new image; any other
/// spec change is refused naming the rule.
#[test]
fn an_image_change_restarts_only_that_container() -> Result<()> {
    let Some(n) = Node::for_test("an_image_change_restarts_only_that_container") else {
        return Ok(());
    };
    let dir = TempDir::new("image2")?;
    let tar = dir.path().join("busybox2.tar");
    knode_tests::image::TestImage::busybox("knode.test/busybox:2")?.write_oci(&tar)?;
    n.import(&tar)?;
    let pod = |image: &str, extra: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: twins}}
spec:
  terminationGracePeriodSeconds: 1{extra}
  containers:
  - name: a
    image: {image}
    command: ["sleep", "600"]
  - name: b
    image: {BUSYBOX}
    command: ["sleep", "600"]
"#
        )
    };
    n.apply(&pod(BUSYBOX, ""))?;
    let before = n.wait_running("twins")?;
    let status = |p: &serde_json::Value, c: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|s| s["name"] == c))
            .cloned()
            .unwrap_or_default()
    };
    n.apply(&pod("knode.test/busybox:2", ""))?;
    let after = n.wait_pod("twins", Duration::from_secs(60), |p| {
        let a = status(p, "a");
        a["image"] == "knode.test/busybox:2"
            && a["restartCount"] == 1
            && a["state"]["running"].is_object()
    })?;
    assert_eq!(status(&after, "b")["restartCount"], 0);
    assert_eq!(
        status(&after, "b")["containerID"],
        status(&before, "b")["containerID"]
    );
    // Anything else about a running pod's spec is not for updating.
    let path = dir.path().join("host-network.yaml");
    std::fs::write(&path, pod("knode.test/busybox:2", "\n  hostNetwork: true"))?;
    let refused = n.knode(&["apply", "-f", &path.display().to_string()]);
    let msg = format!("{:#}", refused.expect_err("a spec change is refused"));
    assert!(msg.contains("pod updates may not change fields"), "{msg}");
    Ok(())
}

/// activeDeadlineSeconds: the pod fails with DeadlineExceeded and its
/// containers stop.
#[test]
fn a_pod_past_its_active_deadline_fails() -> Result<()> {
    let Some(n) = Node::for_test("a_pod_past_its_active_deadline_fails") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: bounded}}
spec:
  activeDeadlineSeconds: 3
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "600"]
"#
    ))?;
    let p = n.wait_pod("bounded", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Failed"
    })?;
    assert_eq!(
        p["status"]["reason"], "DeadlineExceeded",
        "{:#}",
        p["status"]
    );
    assert!(p["status"]["containerStatuses"][0]["state"]["terminated"].is_object());
    Ok(())
}
