//! Faults under a running agent, with its own private containerd: that
//! containerd restarted (killed, as a crash) leaves the pods untouched,
//! the agent reconnects, status keeps flowing and new pods start; an image
//! deleted from under a running pod does not stop it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use knode_tests::node::Node;
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

fn pod_yaml(name: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "{command}"]
"#
    )
}

fn restarts(p: &Value) -> i64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(-1)
}

/// Running task PIDs in the agent's containerd namespace.
fn pids(n: &Node) -> Result<BTreeMap<String, String>> {
    n.containerd.task_pids(n.namespace())
}

#[test]
fn containerd_restarted_under_the_agent_leaves_pods_running() -> Result<()> {
    let Some(mut n) = Node::for_test("containerd_restarted_under_the_agent_leaves_pods_running")
    else {
        return Ok(());
    };
    n.apply(&pod_yaml("steady", "sleep 3600"))?;
    // Exits with 3 when told to (a file), after containerd is back.
    n.apply(&pod_yaml(
        "blinker",
        "while [ ! -f /tmp/stop ]; do sleep 0.2; done; rm /tmp/stop; exit 3",
    ))?;
    n.wait_running("steady")?;
    n.wait_running("blinker")?;
    let before = pids(&n)?;
    assert_eq!(before.len(), 4, "two pause and two app tasks: {before:?}");

    n.containerd.restart()?;

    assert_eq!(pids(&n)?, before, "the same tasks, the same PIDs");
    // Status keeps flowing: an exit after the restart is seen and counted.
    n.knode(&["exec", "blinker", "--", "touch", "/tmp/stop"])?;
    let p = n.wait_pod("blinker", Duration::from_secs(60), |p| restarts(p) >= 1)?;
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );
    // A new pod starts afterwards.
    n.apply(&pod_yaml("after", "sleep 3600"))?;
    n.wait_running("after")?;
    let steady = n.pod("steady")?.expect("steady is there");
    assert_eq!(restarts(&steady), 0);
    let blinker = p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (id, pid) in &before {
        if id.starts_with(&format!("{blinker}-c")) {
            continue;
        }
        assert_eq!(pids(&n)?.get(id), Some(pid), "{id} untouched");
    }
    Ok(())
}

#[test]
fn an_image_deleted_under_a_running_pod_does_not_stop_it() -> Result<()> {
    let Some(n) = Node::for_test("an_image_deleted_under_a_running_pod_does_not_stop_it") else {
        return Ok(());
    };
    n.apply(&pod_yaml("steady", "sleep 3600"))?;
    n.wait_running("steady")?;
    let before = pids(&n)?;
    n.containerd
        .ctr_out(n.namespace(), &["images", "rm", "--sync", BUSYBOX])?;
    // The agent is still at work: a new pod of that image cannot start
    // (the image is gone, there is no registry) ...
    n.apply(&format!(
        "{}    imagePullPolicy: Never\n",
        pod_yaml("late", "sleep 3600")
    ))?;
    n.wait_pod("late", Duration::from_secs(60), |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    })?;
    // ... a change to the running pod (a label) is synced ...
    n.apply(&pod_yaml("steady", "sleep 3600").replace(
        "metadata: {name: steady}",
        "metadata: {name: steady, labels: {seen: \"yes\"}}",
    ))?;
    // ... and the running one is untouched.
    let p = n.wait_running("steady")?;
    assert_eq!(restarts(&p), 0);
    let after = pids(&n)?;
    for (id, pid) in &before {
        assert_eq!(after.get(id), Some(pid), "{id}: same task, same PID");
    }
    Ok(())
}
