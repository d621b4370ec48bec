//! More of the pod spec end to end, with a real `knode agent` and a private
//! containerd: downwardAPI and projected volumes as a container reads
//! them, privileged containers where the node allows them (and refused
//! where it does not), hostPorts answering on the node address.

use std::time::Duration;

use anyhow::Result;
use knode_tests::node::Node;
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

fn exec(n: &Node, pod: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    n.knode(&args)
}

/// The waiting reason and message of the pod's first container.
fn waiting(p: &Value) -> (String, String) {
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_string(),
        w["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A container reads its own name, labels and memory limit from a
/// downwardAPI volume, and a ConfigMap key beside its uid from a projected
/// one; neither volume is writable.
#[test]
fn downward_api_and_projected_volumes_reach_the_container() -> Result<()> {
    let Some(n) = Node::for_test("downward_api_and_projected_volumes_reach_the_container") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Pod
metadata: {{name: downward, labels: {{app: web}}}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    resources: {{limits: {{memory: 64Mi}}}}
    volumeMounts:
    - {{name: info, mountPath: /etc/podinfo}}
    - {{name: all, mountPath: /etc/all}}
  volumes:
  - name: info
    downwardAPI:
      items:
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: mem, resourceFieldRef: {{containerName: app, resource: limits.memory, divisor: 1Mi}}}}
  - name: all
    projected:
      defaultMode: 288  # 0440
      sources:
      - configMap: {{name: cfg}}
      - downwardAPI: {{items: [{{path: uid, fieldRef: {{fieldPath: metadata.uid}}}}]}}
"#
    ))?;
    let p = n.wait_running("downward")?;
    let uid = p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        exec(&n, "downward", &["cat", "/etc/podinfo/name"])?,
        "downward"
    );
    assert_eq!(
        exec(&n, "downward", &["cat", "/etc/podinfo/labels"])?,
        "app=\"web\""
    );
    assert_eq!(exec(&n, "downward", &["cat", "/etc/podinfo/mem"])?, "64");
    assert_eq!(
        exec(&n, "downward", &["cat", "/etc/all/greeting"])?,
        "hello"
    );
    assert_eq!(exec(&n, "downward", &["cat", "/etc/all/uid"])?, uid);
    assert_eq!(
        exec(
            &n,
            "downward",
            &["stat", "-L", "-c", "%a", "/etc/all/greeting"]
        )?
        .trim(),
        "440"
    );
    let write = exec(&n, "downward", &["sh", "-c", "echo x > /etc/podinfo/x"]);
    assert!(write.is_err(), "a downwardAPI volume is read-only");
    Ok(())
}

/// `privileged: true` waits in CreateContainerConfigError naming the field
/// by default.
#[test]
fn privileged_is_refused_by_default() -> Result<()> {
    let Some(n) = Node::for_test("privileged_is_refused_by_default") else {
        return Ok(());
    };
    n.apply(&privileged_pod())?;
    let p = n.wait_pod("priv", Duration::from_secs(60), |p| {
        waiting(p).0 == "CreateContainerConfigError"
    })?;
    let (_, message) = waiting(&p);
    assert!(
        message.contains("spec.containers[0].securityContext.privileged")
            && message.contains("allow-privileged"),
        "{message}"
    );
    Ok(())
}

fn privileged_pod() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: priv}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    securityContext: {{privileged: true}}
"#
    )
}

/// With `allow-privileged`, the container holds every capability and sees
/// the host's devices.
#[test]
fn privileged_runs_where_the_node_allows_it() -> Result<()> {
    let Some(n) = Node::for_test_with(
        "privileged_runs_where_the_node_allows_it",
        &["--allow-privileged", "true"],
    ) else {
        return Ok(());
    };
    n.apply(&privileged_pod())?;
    n.wait_running("priv")?;
    let status = exec(&n, "priv", &["cat", "/proc/self/status"])?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_default()
        .trim();
    let bits = u64::from_str_radix(cap_eff, 16)?;
    // CAP_SYS_ADMIN (21) and CAP_NET_ADMIN (12), which the default set lacks.
    assert!(
        bits & (1 << 21) != 0 && bits & (1 << 12) != 0,
        "CapEff {cap_eff}"
    );
    exec(&n, "priv", &["test", "-c", "/dev/kmsg"])?;
    Ok(())
}
