//! NetworkPolicy with real pods: a real `knode agent` running pods through
//! a private containerd (the kubelet's gate and the guard on, as on any
//! node that runs pods). What a user would notice: a pod's first container
//! already reaches what its policies allow (the gate programmed it before
//! any container started), a pod under default-deny is refused from its
//! first container on, the node itself still reaches an isolated pod
//! (kubelet probes), and a malformed policy is refused naming its field.

use std::time::Duration;

use anyhow::{bail, Result};
use knode_tests::node::Node;
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

/// Waits for pod `name` to finish; its phase and its container's log.
fn finished(n: &Node, name: &str) -> Result<(String, String)> {
    let p = n.wait_pod(name, Duration::from_secs(60), |p: &Value| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    })?;
    let phase = p["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = n.knode(&["logs", name]).unwrap_or_default();
    Ok((phase, log.trim().to_string()))
}

/// A pod that fetches web's page at `ip` once (`nc -w 1`: busybox wget
/// segfaults with a timeout), from an init container (the pod's very
/// first process), and reports OPEN or CLOSED from its app container.
fn fetcher(name: &str, labels: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  restartPolicy: Never
  volumes: [{{name: out, emptyDir: {{}}}}]
  initContainers:
  - name: fetch
    image: {BUSYBOX}
    command: ["sh", "-c", "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} 80 | grep -q hi; then echo OPEN > /out/r; else echo CLOSED > /out/r; fi"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  containers:
  - name: report
    image: {BUSYBOX}
    command: ["cat", "/out/r"]
    volumeMounts: [{{name: out, mountPath: /out}}]
"#
    )
}

/// `knode apply` refuses a policy with a bad CIDR, an unknown protocol or
/// an endPort below its port, naming the field.
fn bad_policies_are_refused(n: &Node) -> Result<()> {
    let cases = [
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "ingress: [{ports: [{protocol: ICMP, port: 80}]}]",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "egress: [{ports: [{protocol: TCP, port: 90, endPort: 80}]}]",
            "spec.egress[0].ports[0].endPort",
        ),
    ];
    for (rules, field) in cases {
        let manifest = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad}}\nspec:\n  podSelector: {{}}\n  {rules}\n"
        );
        match n.apply(&manifest) {
            Ok(()) => bail!("accepted: {rules}"),
            Err(e) if e.to_string().contains(field) => {}
            Err(e) => bail!("{rules}: refused without naming {field}: {e}"),
        }
    }
    Ok(())
}

#[test]
fn policies_hold_from_a_pods_first_container() -> Result<()> {
    let Some(n) = Node::for_test("policies_hold_from_a_pods_first_container") else {
        return Ok(());
    };
    bad_policies_are_refused(&n)?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && httpd -f -p 80 -h /www"]
"#
    ))?;
    let p = n.wait_running("web")?;
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let request =
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socat -T 2 - TCP:{ip}:80,connect-timeout=2");
    let from_node = || {
        n.host_sh(&["sh", "-c", &request])
            .map(|r| r.lines().last().unwrap_or_default().to_string())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while from_node().map(|s| s.trim() != "hi").unwrap_or(true) {
        if std::time::Instant::now() > deadline {
            bail!(
                "web does not answer the node: {:?}; logs: {:?}",
                from_node(),
                n.knode(&["logs", "web"])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // No policy: the first process of a new pod reaches web at once (one
    // try, 1 s): the gate programmed it before the init container ran.
    n.apply(&fetcher("first", "app: client", &ip))?;
    let (phase, log) = finished(&n, "first")?;
    if log != "OPEN" {
        bail!(
            "a new pod's first container could not reach web ({phase}): {log:?}\n{}",
            n.agent.log()
        );
    }

    // Default-deny egress for role=locked: refused from the first process.
    n.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: locked-out}
spec:
  podSelector: {matchLabels: {role: locked}}
  policyTypes: [Egress]
"#,
    )?;
    n.apply(&fetcher("locked", "role: locked", &ip))?;
    let (_, log) = finished(&n, "locked")?;
    assert_eq!(log, "CLOSED", "a pod under default-deny egress got out");

    // Ingress to web only from app=client: a client gets in, a stranger
    // does not, and the node itself still does (probes).
    n.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#,
    )?;
    n.apply(&fetcher("stranger", "app: stranger", &ip))?;
    n.apply(&fetcher("client", "app: client", &ip))?;
    let (_, stranger) = finished(&n, "stranger")?;
    let (_, client) = finished(&n, "client")?;
    assert_eq!(
        (stranger.as_str(), client.as_str()),
        ("CLOSED", "OPEN"),
        "stranger, client"
    );
    assert_eq!(
        from_node()?.trim(),
        "hi",
        "the node reaches its isolated pod"
    );
    Ok(())
}
