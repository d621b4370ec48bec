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

/// An HTTP GET from the node's own namespace, once; the body or the error.
fn fetch(n: &Node, url: &str) -> Result<String> {
    n.host_sh(&["curl", "-sS", "--max-time", "2", url])
}

/// Polls `fetch` until it gives `want` (or, with `None`, until it fails).
fn wait_fetch(n: &Node, url: &str, want: Option<&str>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = fetch(n, url);
        match (&got, want) {
            (Ok(body), Some(w)) if body == w => return Ok(()),
            (Err(_), None) => return Ok(()),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{url}: {got:?}, not {want:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A hostPort answers on the node address (and a hostIP one only on its
/// address), from the node, from another pod and from the pod itself; it
/// survives an agent restart and is gone once the pod is deleted.
#[test]
fn host_ports_answer_on_the_node_address_until_the_pod_is_deleted() -> Result<()> {
    let Some(mut n) =
        Node::for_test("host_ports_answer_on_the_node_address_until_the_pod_is_deleted")
    else {
        return Ok(());
    };
    let node_ip = knode_tests::node::NODE_IP;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo hostport > /www/index.html && httpd -f -p 80 -h /www"]
    ports:
    - {{containerPort: 80, hostPort: 8080}}
    - {{containerPort: 80, hostPort: 8081, hostIP: "{node_ip}"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
    ))?;
    n.wait_running("web")?;
    n.wait_running("client")?;
    let any = format!("http://{node_ip}:8080/");
    let bound = format!("http://{node_ip}:8081/");
    wait_fetch(&n, &any, Some("hostport\n"))?;
    assert_eq!(fetch(&n, &bound)?, "hostport\n");
    // From a pod: through prerouting, to the node address.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {node_ip} 8080");
    let reply = exec(&n, "client", &["sh", "-c", &get])?;
    assert!(reply.ends_with("\r\n\r\nhostport\n"), "{reply:?}");
    // From the pod itself (hairpin: masqueraded so the reply comes back).
    let reply = exec(&n, "web", &["sh", "-c", &get])?;
    assert!(reply.ends_with("\r\n\r\nhostport\n"), "{reply:?}");
    // The port with a hostIP is not on the node's other addresses.
    let cni_gw = format!(
        "http://{}:8081/",
        knode_tests::node::POD_CIDR.replace(".0/24", ".1")
    );
    assert!(fetch(&n, &cni_gw).is_err(), "8081 only on {node_ip}");
    assert_eq!(
        fetch(
            &n,
            &format!(
                "http://{}:8080/",
                knode_tests::node::POD_CIDR.replace(".0/24", ".1")
            )
        )?,
        "hostport\n",
        "8080 on every node address"
    );

    // A restarted agent keeps them.
    n.agent.restart()?;
    n.wait_running("web")?;
    assert_eq!(fetch(&n, &any)?, "hostport\n");

    n.knode(&["delete", "pod", "web"])?;
    n.wait_pod_gone("web", Duration::from_secs(60))?;
    wait_fetch(&n, &any, None)?;
    assert!(fetch(&n, &bound).is_err());
    let table = n.host_sh(&["nft", "list", "table", "ip", "knode-hostport"])?;
    assert!(
        !table.contains("10.244."),
        "no element left:\n{table}\nagent log:\n{}",
        knode_tests::node::tail(&n.agent.log(), 40)
    );
    Ok(())
}
