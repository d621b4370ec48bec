//! Probes end to end: a real `knode agent`, a private containerd, busybox
//! pods whose probes pass or fail on a schedule the test sets, and pods
//! running `knode-test-server` (a gRPC health service and an HTTPS server
//! with a self-signed certificate). Checked the way a user sees it: the
//! pod's conditions and container statuses, events, and the Service's
//! endpoints.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use knode_tests::image::TestImage;
use knode_tests::node::Node;
use knode_tests::TempDir;
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;
/// busybox with `/bin/knode-test-server` and the libraries it links.
const SERVER: &str = "knode.test/probe-server:1";

fn container(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]
}

/// The status of the container named `name`.
fn container_named<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// A node for `test` with the busybox and [`SERVER`] images imported, or
/// `None` (skip) as [`Node::for_test`].
fn node_with_server(test: &str) -> Option<Node> {
    let n = Node::for_test(test)?;
    let bin = Path::new(env!("CARGO_BIN_EXE_knode-test-server"));
    let dir = TempDir::new("probe-server-img").expect("temp dir");
    let tar = dir.path().join("probe-server.tar");
    TestImage::busybox_with_binary(SERVER, bin)
        .and_then(|i| i.write_oci(&tar))
        .expect("build the probe server image");
    n.import(&tar).expect("import the probe server image");
    Some(n)
}

/// Waits until the pod's events hold one with `reason` whose message
/// contains `message`, for the container named `container`; returns that
/// message.
fn wait_event(n: &Node, pod: &str, container: &str, reason: &str, message: &str) -> Result<String> {
    let field = format!("spec.containers{{{container}}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = serde_json::from_str(&n.knode(&["get", "events", "-o", "json"])?)?;
        let seen: Vec<(String, String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == pod)
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&e["involvedObject"]["fieldPath"]),
                    s(&e["reason"]),
                    s(&e["message"]),
                )
            })
            .collect();
        if let Some((_, _, m)) = seen
            .iter()
            .find(|(f, r, m)| *f == field && r == reason && m.contains(message))
        {
            return Ok(m.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event with {message:?} for {pod}/{container}; events: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the container's log has at least `count` lines containing
/// `needle`; returns the log.
fn wait_log(n: &Node, pod: &str, container: &str, needle: &str, count: usize) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = n.knode(&["logs", pod, "-c", container])?;
        if log.lines().filter(|l| l.contains(needle)).count() >= count {
            return Ok(log);
        }
        assert!(
            Instant::now() < deadline,
            "{pod}/{container} logged {needle:?} fewer than {count} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn condition(p: &Value, t: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn transition(p: &Value, t: &str) -> Value {
    p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-01-02T03:04:05Z`).
fn unix_seconds(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().expect("digits") };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

fn running(p: &Value) -> bool {
    container(p)["state"]["running"].is_object()
}

/// The addresses `knode get endpoints <svc>` lists.
fn endpoint_ips(n: &Node, svc: &str) -> Result<Vec<String>> {
    let out = n.knode(&["get", "endpoints", svc, "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect())
}

/// A readiness probe that passes only once the server is up (5 s after
/// the start): the pod runs but is not Ready, and not an endpoint, until
/// then; then both follow within a few probe periods.
#[test]
fn readiness_holds_the_pod_out_of_its_service_until_the_probe_passes() -> Result<()> {
    let Some(n) =
        Node::for_test("readiness_holds_the_pod_out_of_its_service_until_the_probe_passes")
    else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow, labels: {{app: slow}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 5; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 80 -h /www"]
    readinessProbe:
      httpGet: {{path: /, port: 80}}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: slow}}
spec:
  selector: {{app: slow}}
  ports: [{{port: 80}}]
"#
    ))?;
    let p = n.wait_pod("slow", Duration::from_secs(60), running)?;
    // Running, not ready (the server sleeps for 5 s first).
    if container(&p)["ready"] == false {
        assert_eq!(condition(&p, "Ready"), "False", "{p:#}");
        assert_eq!(condition(&p, "ContainersReady"), "False");
        assert!(endpoint_ips(&n, "slow")?.is_empty());
    }
    let p = n.wait_pod("slow", Duration::from_secs(60), |p| {
        condition(p, "Ready") == "True"
    })?;
    assert_eq!(container(&p)["ready"], true);
    // Ready no sooner than the server could answer (the clock's seconds
    // are whole: 5 s of sleep can read as 4).
    let started = unix_seconds(&container(&p)["state"]["running"]["startedAt"]);
    let ready = unix_seconds(&transition(&p, "Ready"));
    assert!(
        ready - started >= 4,
        "ready {}s after the start:\n{p:#}",
        ready - started
    );
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint_ips(&n, "slow")? != [ip.clone()] {
        assert!(Instant::now() < deadline, "{ip} never became an endpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An exec liveness probe that starts failing after 3 s: the container is
/// killed and restarted, and the restart count says so. A tcpSocket
/// readiness probe on the same pod passes while the server listens.
#[test]
fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let Some(n) = Node::for_test("a_failing_liveness_probe_restarts_the_container") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "touch /tmp/healthy; httpd -p 8080 -h /tmp; sleep 3; rm /tmp/healthy; exec sleep 600"]
    livenessProbe:
      exec: {{command: ["cat", "/tmp/healthy"]}}
      periodSeconds: 1
      failureThreshold: 1
      terminationGracePeriodSeconds: 1
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
"#
    ))?;
    n.wait_pod("sick", Duration::from_secs(60), |p| {
        container(p)["ready"] == true && condition(p, "Ready") == "True"
    })?;
    let p = n.wait_pod("sick", Duration::from_secs(60), |p| {
        container(p)["restartCount"].as_i64() >= Some(1)
    })?;
    // The killed run is the last state.
    assert!(
        container(&p)["lastState"]["terminated"].is_object(),
        "{:#}",
        container(&p)
    );
    // And the kubelet told the story in Events (what kubectl describe shows).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = serde_json::from_str(&n.knode(&["get", "events", "-o", "json"])?)?;
        let seen: Vec<(String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == "sick")
            .map(|e| {
                let reason = e["reason"].as_str().unwrap_or_default().to_string();
                (
                    reason,
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let has = |r: &str, m: &str| seen.iter().any(|(a, b)| a == r && b.contains(m));
        if has("Pulled", BUSYBOX)
            && has("Created", "Created container: app")
            && has("Started", "Started container app")
            && has("Unhealthy", "Liveness probe failed")
            && has("Killing", "Stopping container app")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "events: {seen:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// A startup probe that passes after 4 s holds off a liveness probe that
/// would fail until then: no restart, and `started` turns true.
#[test]
fn a_startup_probe_holds_liveness_off_until_it_passes() -> Result<()> {
    let Some(n) = Node::for_test("a_startup_probe_holds_liveness_off_until_it_passes") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: late}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 4; touch /tmp/started; exec sleep 600"]
    startupProbe:
      exec: {{command: ["cat", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 60
    livenessProbe:
      exec: {{command: ["cat", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    ))?;
    let p = n.wait_pod("late", Duration::from_secs(60), running)?;
    if container(&p)["started"] == false {
        assert_eq!(container(&p)["ready"], false);
    }
    let p = n.wait_pod("late", Duration::from_secs(60), |p| {
        container(p)["started"] == true
    })?;
    assert_eq!(container(&p)["restartCount"], 0, "{:#}", container(&p));
    // Liveness now runs and passes: still no restart a few periods later.
    std::thread::sleep(Duration::from_secs(3));
    let p = n.pod("late")?.expect("pod");
    assert_eq!(container(&p)["restartCount"], 0, "{:#}", container(&p));
    assert_eq!(condition(&p, "Ready"), "True");
    Ok(())
}

/// A grpc readiness probe against a real `grpc.health.v1` server in the
/// pod: Ready while the server answers SERVING, not Ready (and out of its
/// Service) once it answers NOT_SERVING, Ready again when it is back.
#[test]
fn a_grpc_readiness_probe_follows_the_servers_health() -> Result<()> {
    let Some(n) = node_with_server("a_grpc_readiness_probe_follows_the_servers_health") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: health, labels: {{app: health}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {SERVER}
    command: ["/bin/knode-test-server", "--grpc-port", "9000", "--not-serving-file", "/tmp/down"]
    readinessProbe:
      grpc: {{port: 9000}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: health}}
spec:
  selector: {{app: health}}
  ports: [{{port: 9000}}]
"#
    ))?;
    let ready = |p: &Value| container(p)["ready"] == true && condition(p, "Ready") == "True";
    let not_ready = |p: &Value| {
        running(p) && container(p)["ready"] == false && condition(p, "Ready") == "False"
    };
    let p = n.wait_pod("health", Duration::from_secs(60), ready)?;
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_endpoints(&n, "health", &[ip.as_str()])?;
    // The probe reached the server in the pod, and it said SERVING.
    wait_log(&n, "health", "app", r#"grpc Check "": Ok(1)"#, 1)?;

    n.knode(&["exec", "health", "--", "touch", "/tmp/down"])?;
    let p = n.wait_pod("health", Duration::from_secs(30), not_ready)?;
    assert_eq!(condition(&p, "ContainersReady"), "False", "{p:#}");
    assert_eq!(container(&p)["restartCount"], 0, "{:#}", container(&p));
    wait_event(
        &n,
        "health",
        "app",
        "Unhealthy",
        r#"Readiness probe failed: service unhealthy (responded with "NOT_SERVING")"#,
    )?;
    wait_endpoints(&n, "health", &[])?;

    n.knode(&["exec", "health", "--", "rm", "/tmp/down"])?;
    n.wait_pod("health", Duration::from_secs(30), ready)?;
    wait_endpoints(&n, "health", &[ip.as_str()])?;
    Ok(())
}

/// A grpc probe names a service: one the server knows is probed as
/// SERVING, one it does not know (NotFound) keeps its container, and so
/// the pod, not Ready.
#[test]
fn a_grpc_probe_of_an_unknown_service_keeps_the_pod_not_ready() -> Result<()> {
    let Some(n) = node_with_server("a_grpc_probe_of_an_unknown_service_keeps_the_pod_not_ready")
    else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: services}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: known
    image: {SERVER}
    command: ["/bin/knode-test-server", "--grpc-port", "9000", "--service", "db"]
    readinessProbe:
      grpc: {{port: 9000, service: db}}
      periodSeconds: 1
  - name: unknown
    image: {SERVER}
    command: ["/bin/knode-test-server", "--grpc-port", "9001", "--service", "db"]
    readinessProbe:
      grpc: {{port: 9001, service: cache}}
      periodSeconds: 1
"#
    ))?;
    n.wait_pod("services", Duration::from_secs(60), |p| {
        container_named(p, "known")["ready"] == true
    })?;
    // Asked, and answered NotFound, several times; every failed run is an
    // Unhealthy event, as with kubelet, though the result never changed
    // (readiness starts failed).
    wait_log(&n, "services", "unknown", r#"grpc Check "cache": Err("#, 4)?;
    wait_event(
        &n,
        "services",
        "unknown",
        "Unhealthy",
        "Readiness probe failed: ",
    )?;
    let p = n.pod("services")?.expect("pod");
    assert_eq!(container_named(&p, "known")["ready"], true, "{p:#}");
    assert_eq!(container_named(&p, "unknown")["ready"], false, "{p:#}");
    assert!(
        container_named(&p, "unknown")["state"]["running"].is_object(),
        "{p:#}"
    );
    assert_eq!(condition(&p, "ContainersReady"), "False", "{p:#}");
    assert_eq!(condition(&p, "Ready"), "False", "{p:#}");
    Ok(())
}

/// httpGet probes with scheme HTTPS against a server whose certificate is
/// self-signed (kubelet does not verify it): startup, readiness and liveness pass,
/// the container is never restarted; a path the server answers 404 fails
/// over the same TLS.
#[test]
fn https_probes_pass_against_a_self_signed_server() -> Result<()> {
    let Some(n) = node_with_server("https_probes_pass_against_a_self_signed_server") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: tls}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {SERVER}
    command: ["/bin/knode-test-server", "--https-port", "8443"]
    readinessProbe:
      httpGet: {{path: /healthz, port: 8443, scheme: HTTPS}}
      periodSeconds: 1
    startupProbe:
      httpGet: {{path: /healthz, port: 8443, scheme: HTTPS}}
      periodSeconds: 1
      failureThreshold: 60
    livenessProbe:
      httpGet: {{path: /healthz, port: 8443, scheme: HTTPS}}
      periodSeconds: 1
      timeoutSeconds: 5
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: tls-missing}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {SERVER}
    command: ["/bin/knode-test-server", "--https-port", "8443"]
    readinessProbe:
      httpGet: {{path: /missing, port: 8443, scheme: HTTPS}}
      periodSeconds: 1
"#
    ))?;
    n.wait_pod("tls", Duration::from_secs(60), |p| {
        container(p)["ready"] == true && condition(p, "Ready") == "True"
    })?;
    // The probes reach the server over TLS, several times each, and the
    // liveness probe (failureThreshold 1; the startup probe covers the
    // server's start, a generous timeout a loaded machine) never kills the
    // container.
    wait_log(&n, "tls", "app", "https GET /healthz (kube-probe/", 6)?;
    let p = n.pod("tls")?.expect("pod");
    assert_eq!(container(&p)["restartCount"], 0, "{:#}", container(&p));
    assert_eq!(condition(&p, "Ready"), "True", "{p:#}");

    // Over the same TLS, a path the server does not serve: asked several
    // times, answered 404, never Ready.
    wait_log(
        &n,
        "tls-missing",
        "app",
        "https GET /missing (kube-probe/",
        4,
    )?;
    wait_event(
        &n,
        "tls-missing",
        "app",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 404",
    )?;
    let p = n.pod("tls-missing")?.expect("pod");
    assert!(running(&p), "{p:#}");
    assert_eq!(condition(&p, "Ready"), "False", "{p:#}");
    Ok(())
}

/// Waits until the Service's endpoints are exactly `ips`.
fn wait_endpoints(n: &Node, svc: &str, ips: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = endpoint_ips(n, svc)?;
        if now == ips {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "endpoints of {svc}: {now:?}, want {ips:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
