//! Init and sidecar containers end to end: a real `knode agent`, a private
//! containerd, busybox pods. Checked as a user sees it: what the app
//! container reads from the shared volume, the init container statuses,
//! and the STATUS column `knode get pods` prints while they run.

use std::time::Duration;

use anyhow::Result;
use knode_tests::node::{is_running, Node};
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

fn init_status(p: &Value, i: usize) -> &Value {
    &p["status"]["initContainerStatuses"][i]
}

/// Two init containers write to a shared emptyDir in order, the second
/// failing once and being retried; the app container starts only after
/// both completed and sees what they wrote, in order.
#[test]
fn init_containers_run_in_order_to_completion_before_the_app() -> Result<()> {
    let Some(n) = Node::for_test("init_containers_run_in_order_to_completion_before_the_app")
    else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: setup}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: first
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 2; echo first >> /work/log"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: second
    image: {BUSYBOX}
    command: ["sh", "-c", "if [ ! -f /work/tried ]; then touch /work/tried; exit 3; fi; echo second >> /work/log"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "cat /work/log; exec sleep 600"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  volumes:
  - name: work
    emptyDir: {{}}
"#
    ))?;
    // While the first runs, the pod is Pending and shows Init:0/2.
    let p = n.wait_pod("setup", Duration::from_secs(60), |p| {
        init_status(p, 0)["state"]["running"].is_object()
    })?;
    assert_eq!(p["status"]["phase"], "Pending", "{:#}", p["status"]);
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let table = n.knode(&["get", "pod", "setup"])?;
    assert!(table.contains("Init:0/2"), "{table}");

    let p = n.wait_pod("setup", Duration::from_secs(90), is_running)?;
    let second = init_status(&p, 1);
    assert_eq!(second["restartCount"], 1, "{second:#}");
    assert_eq!(second["state"]["terminated"]["exitCode"], 0, "{second:#}");
    assert_eq!(
        second["lastState"]["terminated"]["exitCode"], 3,
        "{second:#}"
    );
    assert_eq!(
        init_status(&p, 0)["state"]["terminated"]["reason"],
        "Completed"
    );
    let cond = |t: &str| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| c["status"].clone())
    };
    assert_eq!(cond("Initialized"), Some("True".into()));
    let logs = n.knode(&["logs", "setup", "-c", "app"])?;
    assert_eq!(logs, "first\nsecond\n");
    Ok(())
}

/// An init container that fails under restartPolicy Never fails the pod:
/// the app container never starts.
#[test]
fn a_failed_init_container_fails_a_never_restarting_pod() -> Result<()> {
    let Some(n) = Node::for_test("a_failed_init_container_fails_a_never_restarting_pod") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: broken}}
spec:
  restartPolicy: Never
  initContainers:
  - name: check
    image: {BUSYBOX}
    command: ["sh", "-c", "exit 7"]
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "600"]
"#
    ))?;
    let p = n.wait_pod("broken", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Failed"
    })?;
    assert_eq!(init_status(&p, 0)["state"]["terminated"]["exitCode"], 7);
    assert!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{:#}",
        p["status"]
    );
    let table = n.knode(&["get", "pod", "broken"])?;
    assert!(table.contains("Init:Error"), "{table}");
    Ok(())
}

/// A sidecar (an init container with restartPolicy Always) starts before
/// the app container and keeps running beside it; the app reaches it on
/// localhost.
#[test]
fn a_sidecar_runs_beside_the_app_container() -> Result<()> {
    let Some(n) = Node::for_test("a_sidecar_runs_beside_the_app_container") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: withside}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: side
    image: {BUSYBOX}
    restartPolicy: Always
    command: ["sh", "-c", "mkdir -p /www; echo from-sidecar > /www/index.html; exec httpd -f -p 8081 -h /www"]
    startupProbe:
      tcpSocket: {{port: 8081}}
      periodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "nc 127.0.0.1 8081 </dev/null >/dev/null && echo sidecar-was-up; exec sleep 600"]
"#
    ))?;
    let p = n.wait_pod("withside", Duration::from_secs(60), |p| {
        is_running(p) && init_status(p, 0)["state"]["running"].is_object()
    })?;
    assert_eq!(init_status(&p, 0)["started"], true, "{:#}", p["status"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = n.knode(&["logs", "withside", "-c", "app"])?;
        if logs == "sidecar-was-up\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "app log: {logs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = n.knode(&["get", "pod", "withside"])?;
    assert!(table.contains("2/2"), "{table}");
    Ok(())
}
