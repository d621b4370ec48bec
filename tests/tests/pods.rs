//! Pods end to end: a real `knode agent` in its own host namespace, a
//! private containerd, the project's CNI plugins, busybox images built from
//! the machine's busybox-static. Each test checks one of the issue's
//! promises the way a user would see it: through `knode get/exec/logs`,
//! the pod's IP and what is left on the node.

use std::time::{Duration, Instant};

use anyhow::Result;
use knode_tests::containerd::require_containerd;
use knode_tests::node::Node;
use knode_tests::{require_root, TempDir};
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;

fn node(test: &str) -> Option<Node> {
    Node::for_test(test)
}

fn status<'a>(p: &'a Value, container: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .unwrap_or(&Value::Null)
}

fn exec(n: &Node, pod: &str, c: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", pod, "-c", c, "--"];
    args.extend_from_slice(cmd);
    n.knode(&args)
}

/// The seeds' web-server example: busybox httpd serving a hostPath
/// directory; a file written on the host is served at the pod IP.
#[test]
fn web_server_serves_a_host_path_at_the_pod_ip() -> Result<()> {
    let Some(n) = node("web_server_serves_a_host_path_at_the_pod_ip") else {
        return Ok(());
    };
    let www = TempDir::new("www")?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    volumeMounts: [{{name: www, mountPath: /www}}]
  volumes:
  - name: www
    hostPath: {{path: {}, type: Directory}}
"#,
        www.path().display()
    ))?;
    let p = n.wait_running("web")?;
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244.0."), "{ip}");
    assert_eq!(p["status"]["hostIP"], knode_tests::node::NODE_IP);
    std::fs::write(www.path().join("index.html"), "hello from the host\n")?;
    let got = n.host_sh(&["busybox", "wget", "-q", "-O", "-", &format!("http://{ip}/")])?;
    assert_eq!(got, "hello from the host\n");
    // `ip netns` style pin, and the pod is reachable only through cni0.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert!(n.path("netns").join(format!("knode-{uid}")).exists());
    Ok(())
}

/// Two containers share network, IPC, UTS and volumes; with
/// shareProcessNamespace they see each other's processes.
#[test]
fn containers_of_a_pod_share_namespaces_and_volumes() -> Result<()> {
    let Some(n) = node("containers_of_a_pod_share_namespaces_and_volumes") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pair}}
spec:
  shareProcessNamespace: true
  containers:
  - name: server
    image: {BUSYBOX}
    command: ["sh", "-c", "echo shared > /data/note; httpd -f -p 8080 -h /data"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  - name: client
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    emptyDir: {{}}
"#
    ))?;
    n.wait_running("pair")?;
    // Network: localhost reaches the other container.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match exec(
            &n,
            "pair",
            "client",
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/note"],
        ) {
            Ok(body) => {
                assert_eq!(body, "shared\n");
                break;
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    // Volume: written by one, read by the other.
    assert_eq!(
        exec(&n, "pair", "client", &["cat", "/data/note"])?,
        "shared\n"
    );
    // IPC, UTS and net namespaces are the same objects.
    for ns in ["ipc", "uts", "net"] {
        let path = format!("/proc/self/ns/{ns}");
        let a = exec(&n, "pair", "server", &["readlink", &path])?;
        let b = exec(&n, "pair", "client", &["readlink", &path])?;
        assert_eq!(a, b, "{ns} namespace differs");
    }
    assert_eq!(exec(&n, "pair", "client", &["hostname"])?.trim(), "pair");
    // Shared PID namespace: the client sees the server's httpd.
    let ps = exec(&n, "pair", "client", &["ps", "-o", "comm"])?;
    assert!(ps.contains("httpd"), "{ps}");
    assert!(ps.contains("pause"), "{ps}");
    Ok(())
}

/// A crashing container restarts with kubelet's back-off and the status
/// says CrashLoopBackOff with the restart count and last exit.
#[test]
fn a_crashing_container_backs_off() -> Result<()> {
    let Some(n) = node("a_crashing_container_backs_off") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "echo crashing; exit 3"]
"#
    ))?;
    let p = n.wait_pod("crash", Duration::from_secs(60), |p| {
        let c = status(p, "c");
        c["restartCount"].as_i64() >= Some(1)
            && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })?;
    let c = status(&p, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(p["status"]["phase"], "Running");
    // The back-off holds the next restart for about 10 s.
    let seen = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let p = n.pod("crash")?.unwrap();
    assert_eq!(
        status(&p, "c")["restartCount"],
        1,
        "restarted inside the back-off"
    );
    n.wait_pod("crash", Duration::from_secs(30), |p| {
        status(p, "c")["restartCount"].as_i64() >= Some(2)
    })?;
    assert!(seen.elapsed() >= Duration::from_secs(5));
    // The next wait is 20 s.
    let msg = n
        .wait_pod("crash", Duration::from_secs(10), |p| {
            status(p, "c")["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("back-off 20s"))
        })
        .map(|p| status(&p, "c")["state"]["waiting"]["message"].clone())?;
    assert!(msg.as_str().unwrap().contains("container=c"), "{msg}");
    let logs = n.knode(&["logs", "crash"])?;
    assert_eq!(logs, "crashing\n");
    Ok(())
}

/// After a delete nothing of the pod is left: netns, veth, IP, container,
/// snapshot.
/// Deletion is graceful, as in Kubernetes: the pod stays listed as
/// Terminating with a deletionTimestamp while its containers stop, and
/// when it is gone from the API nothing of it is left on the node.
#[test]
fn a_deleted_pod_is_terminating_until_nothing_of_it_is_left() -> Result<()> {
    let Some(n) = node("a_deleted_pod_is_terminating_until_nothing_of_it_is_left") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: gone}}
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
"#
    ))?;
    let p = n.wait_running("gone")?;
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(!n.containers()?.is_empty());
    n.knode(&["delete", "pod", "gone", "--wait=false"])?;
    // It ignores SIGTERM, so it runs on for the 4 s of grace: Terminating.
    let p = n
        .pod("gone")?
        .expect("still listed while its containers stop");
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p:#}");
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 4);
    let table = n.knode(&["get", "pod", "gone"])?;
    assert!(table.contains("Terminating"), "{table}");
    let gone = n.wait_pod_gone("gone", Duration::from_secs(60));
    assert!(gone.is_ok(), "{gone:?}");
    let left = leftovers(&n, &uid)?;
    assert!(
        left.is_empty(),
        "left when the pod left the API: {left:?}\nagent log:\n{}",
        knode_tests::node::tail(&n.agent.log(), 40)
    );
    // A force delete removes at once.
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: forced}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
    ))?;
    n.wait_running("forced")?;
    n.knode(&["delete", "pod", "forced", "--force", "--wait=false"])?;
    assert!(n.pod("forced")?.is_none());
    Ok(())
}

/// Everything a pod can leave on a node, named.
fn leftovers(n: &Node, uid: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for c in n.containers()? {
        left.push(format!("container {c}"));
    }
    for s in n.active_snapshots()? {
        left.push(format!("snapshot {s}"));
    }
    if n.path("netns").join(format!("knode-{uid}")).exists() {
        left.push("netns".into());
    }
    let veths = n.host_sh(&["ip", "-o", "link", "show", "type", "veth"])?;
    if !veths.trim().is_empty() {
        left.push(format!("veth {}", veths.trim()));
    }
    if let Ok(dir) = std::fs::read_dir(n.path("ipam/knode")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                left.push(format!("ip {name}"));
            }
        }
    }
    Ok(left)
}

/// Service env vars are there for a Service created before the pod.
#[test]
fn service_env_vars_for_services_created_before_the_pod() -> Result<()> {
    let Some(n) = node("service_env_vars_for_services_created_before_the_pod") else {
        return Ok(());
    };
    n.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: redis-master}
spec:
  selector: {app: redis}
  ports: [{port: 6379, targetPort: 6379}]
"#,
    )?;
    let svc: Value =
        serde_json::from_str(&n.knode(&["get", "service", "redis-master", "-o", "json"])?)?;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: envs}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    env: [{{name: GREETING, value: "hi $(REDIS_MASTER_SERVICE_HOST)"}}]
"#
    ))?;
    n.wait_running("envs")?;
    let env = exec(&n, "envs", "c", &["env"])?;
    for want in [
        format!("REDIS_MASTER_SERVICE_HOST={ip}"),
        "REDIS_MASTER_SERVICE_PORT=6379".to_string(),
        format!("REDIS_MASTER_PORT=tcp://{ip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP=tcp://{ip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP_ADDR={ip}"),
        format!("GREETING=hi {ip}"),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }
    Ok(())
}

/// A wrong image name is ErrImagePull / ImagePullBackOff, not a crash.
#[test]
fn a_wrong_image_is_err_image_pull() -> Result<()> {
    let Some(n) = node("a_wrong_image_is_err_image_pull") else {
        return Ok(());
    };
    let port = knode_tests::free_port()?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: nope}}
spec:
  containers:
  - name: c
    image: 127.0.0.1:{port}/no/such:1
"#
    ))?;
    let p = n.wait_pod("nope", Duration::from_secs(30), |p| {
        let r = &status(p, "c")["state"]["waiting"]["reason"];
        r == "ErrImagePull" || r == "ImagePullBackOff"
    })?;
    assert_eq!(p["status"]["phase"], "Pending");
    // The agent is fine: another pod still runs.
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: fine}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
    ))?;
    n.wait_running("fine")?;
    Ok(())
}

/// The agent registers its Node (capacity, addresses, Ready) and keeps a
/// heartbeat Lease in kube-node-lease.
#[test]
fn the_node_registers_and_keeps_a_lease() -> Result<()> {
    let Some(n) = node("the_node_registers_and_keeps_a_lease") else {
        return Ok(());
    };
    let node: Value =
        serde_json::from_str(&n.knode(&["get", "node", "test-node", "-o", "json"])?)?;
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert_eq!(node["spec"]["podCIDR"], knode_tests::node::POD_CIDR);
    let addrs = node["status"]["addresses"].as_array().unwrap();
    assert!(addrs
        .iter()
        .any(|a| a["type"] == "InternalIP" && a["address"] == knode_tests::node::NODE_IP));
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(node["status"]["conditions"][0]["status"], "True");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = n.agent.knode(&[
            "get",
            "lease",
            "test-node",
            "-n",
            "kube-node-lease",
            "-o",
            "json",
        ])?;
        if out.status.success() {
            let lease: Value = serde_json::from_slice(&out.stdout)?;
            assert_eq!(lease["spec"]["holderIdentity"], "test-node");
            assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
            break;
        }
        assert!(Instant::now() < deadline, "no node lease");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Static pods: a manifest dropped in --pod-manifest-path runs as
/// `<name>-<node>`; removing the file removes the pod.
#[test]
fn static_pods_follow_the_manifest_dir() -> Result<()> {
    let Some(n) = node("static_pods_follow_the_manifest_dir") else {
        return Ok(());
    };
    let dir = n.path("manifests");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("static.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: static}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    let p = n.wait_pod("static-test-node", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    })?;
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    std::fs::remove_file(dir.join("static.yaml"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n.pod("static-test-node")?.is_some() {
        assert!(Instant::now() < deadline, "static pod not removed");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A hostNetwork pod has no namespace of its own: its IP is the node's.
#[test]
fn a_host_network_pod_uses_the_node_ip() -> Result<()> {
    let Some(n) = node("a_host_network_pod_uses_the_node_ip") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
    ))?;
    let p = n.wait_running("hostnet")?;
    assert_eq!(p["status"]["podIP"], knode_tests::node::NODE_IP);
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert!(!n.path("netns").join(format!("knode-{uid}")).exists());
    n.knode(&["delete", "pod", "hostnet"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !n.containers()?.is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers left: {:?}\n{}",
            n.containers()?,
            knode_tests::node::tail(&n.agent.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The README's example as `make up` sets it up: the busybox image from
/// scripts/busybox-image.sh, imported with `knode image import`, and
/// examples/web.yaml (its hostPath moved to a temp dir): three pods serve a
/// file written on the node, at their IPs and through the Service's
/// ClusterIP from the node itself.
#[test]
fn the_readme_example_runs_on_the_image_make_up_imports() -> Result<()> {
    if !require_root("the_readme_example") || !require_containerd("the_readme_example") {
        return Ok(());
    }
    let n = Node::start()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = TempDir::new("readme")?;
    let tar = dir.path().join("busybox.tar");
    let out = std::process::Command::new(root.join("scripts/busybox-image.sh"))
        .arg(&tar)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.import(&tar)?;
    let www = dir.path().join("www");
    let manifest = std::fs::read_to_string(root.join("examples/web.yaml"))?
        .replace("/srv/www", &www.display().to_string());
    n.apply(&manifest)?;
    let mut ips = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        let p = n.wait_running(name)?;
        ips.push(
            p["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    std::fs::write(www.join("index.html"), "hello\n")?;
    let get = |url: &str| n.host_sh(&["curl", "-sS", "--max-time", "3", url]);
    for ip in &ips {
        assert_eq!(get(&format!("http://{ip}/"))?, "hello\n");
    }
    let svc: Value = serde_json::from_str(&n.knode(&["get", "svc", "web", "-o", "json"])?)?;
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in [
        format!("http://{vip}/"),
        format!("http://{}:30080/", knode_tests::node::NODE_IP),
    ] {
        loop {
            match get(&url) {
                Ok(body) => {
                    assert_eq!(body, "hello\n");
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("{url}\n{}", n.agent.log())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
}

/// A pod that finished (restartPolicy Never, exit 0) is Succeeded, and its
/// sandbox is gone (netns, IP) while its log stays readable.
#[test]
fn a_finished_pod_releases_its_sandbox_and_keeps_its_log() -> Result<()> {
    let Some(n) = node("a_finished_pod_releases_its_sandbox_and_keeps_its_log") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: once}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "echo done"]
"#
    ))?;
    let p = n.wait_pod("once", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    let c = status(&p, "c");
    assert_eq!(c["state"]["terminated"]["exitCode"], 0);
    assert_eq!(c["state"]["terminated"]["reason"], "Completed");
    assert_eq!(c["restartCount"], 0);
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.path("netns").join(format!("knode-{uid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "sandbox kept after the pod finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(n.knode(&["logs", "once"])?, "done\n");
    n.knode(&["delete", "pod", "once"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers(&n, &uid)?;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Deletion is graceful: SIGTERM first (a container that traps it gets to
/// finish), SIGKILL after terminationGracePeriodSeconds for one that does
/// not exit.
#[test]
fn deletion_sends_sigterm_then_sigkill_after_the_grace_period() -> Result<()> {
    let Some(n) = node("deletion_sends_sigterm_then_sigkill_after_the_grace_period") else {
        return Ok(());
    };
    let out = TempDir::new("grace")?;
    n.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: trapper
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo got-term > /out/trapper; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  - name: stubborn
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo ignoring > /out/stubborn' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - name: out
    hostPath: {{path: {}}}
"#,
        out.path().display()
    ))?;
    n.wait_running("polite")?;
    let started = Instant::now();
    n.knode(&["delete", "pod", "polite"])?;
    while !n.containers()?.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "not stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert_eq!(
        std::fs::read_to_string(out.path().join("trapper"))?,
        "got-term\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("stubborn"))?,
        "ignoring\n"
    );
    assert!(
        took >= Duration::from_secs(3),
        "killed before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "grace period not enforced: {took:?}"
    );
    Ok(())
}
