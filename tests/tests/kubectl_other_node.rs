//! A pod on another node, reached through the API of the first as
//! kube-apiserver reaches a kubelet: two agents on etcd, each serving the
//! API and the node API (kubelet's port) on its underlay address; a pod
//! on node-1; the real kubectl pointed at node-0's API runs `logs` (and
//! `-f` sees a new line), `attach`, `exec -i` with stdin and an exit code over
//! WebSocket and over SPDY, and `port-forward`. The node API itself
//! answers node identities, refuses a token user with 403, anonymous
//! with 401, and a client certificate of another CA at the handshake.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use knode_tests::api::kubectl_present;
use knode_tests::cluster::{http_get, Cluster};
use knode_tests::TempDir;

const KUBELET_PORT: &str = "10250";

/// kubectl in node-0's namespace, against node-0's API.
fn kubectl(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", c.ns(0).path().display()))
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(c.nodes[0].agent.dir().join("kubeconfig.yaml"))
        .args(args)
        .envs(env.iter().copied());
    cmd
}

fn run(c: &Cluster, env: &[(&str, &str)], args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = kubectl(c, env, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(b) = stdin {
        input.write_all(b).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running kubectl whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn start(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Lines { child, rx }
    }

    /// Waits (60 s at most) for a line containing `want`.
    fn until(&self, want: &str, c: &Cluster) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {want:?} ({e}):\n{}", c.logs()),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl in node-0's namespace: (HTTP code or 0, body, curl's exit code).
fn curl(c: &Cluster, args: &[&str]) -> (String, String, i32) {
    let out = netns_tests::ns_command(Some(c.ns(0).path()), "curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    (
        code.to_string(),
        format!("{body}{}", text(&out.stderr)),
        out.status.code().unwrap_or(-1),
    )
}

fn tls_file(c: &Cluster, node: usize, name: &str) -> PathBuf {
    c.nodes[node].agent.data_dir().join("tls").join(name)
}

/// A client certificate for `system:node:node-0` in `system:nodes`, but
/// from a CA of its own (openssl): (cert, key).
fn foreign_cert(dir: &Path) -> (String, String) {
    let (crt, key) = (dir.join("evil.crt"), dir.join("evil.key"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args(["-nodes", "-days", "1", "-subj"])
        .arg("/O=system:nodes/CN=system:node:node-0")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl: {}", text(&ok.stderr));
    (crt.display().to_string(), key.display().to_string())
}

#[test]
fn kubectl_reaches_a_pod_on_another_node_through_the_first_nodes_api() {
    if !kubectl_present() {
        return;
    }
    let dir = TempDir::new("kport").unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "tok-alice,alice,u1\n").unwrap();
    let tokens_s = tokens.display().to_string();
    // The harness serves every node's API on its underlay address
    // (kubelet-bind-address 0.0.0.0, port 10250) with one cluster token.
    let flags = ["--api-port", "6443", "--token-auth-file", &tokens_s];
    let Some(c) = Cluster::for_test_with("kubectl_reaches_a_pod_on_another_node", 2, &flags) else {
        return;
    };
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "far"},
        "spec": {"nodeName": "node-1", "containers": [{
            "name": "app", "image": knode_tests::image::BUSYBOX,
            "command": ["sh", "-c",
                "mkdir -p /www && echo hello-from-node-1 > /www/index.html && httpd -p 127.0.0.1:8081 -h /www; \
                 echo first line; while true; do if [ -f /tmp/more ]; then rm /tmp/more; echo second line; fi; sleep 0.2; done"]
        }]}
    });
    c.apply(&pod.to_string()).unwrap();
    c.wait_running("far").unwrap();
    let node1_ip = c.node_ip(1);

    // The Node says where its API is.
    let node = run(&c, &[], &["get", "node", "node-1", "-o", "json"], None);
    let node: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250,
        "{node}"
    );

    // logs, and -f sees a line written after it started.
    let got = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            run(&c, &[], &["logs", "far"], None)
        })
        .find(|o| text(&o.stdout).contains("first line"))
        .unwrap_or_else(|| panic!("no first line in the logs:\n{}", c.logs()));
    assert!(got.status.success());
    let follow = Lines::start(kubectl(&c, &[], &["logs", "-f", "far"]));
    follow.until("first line", &c);
    let out = run(&c, &[], &["exec", "far", "--", "touch", "/tmp/more"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    follow.until("second line", &c);
    drop(follow);

    // attach: the running container's output from now on.
    let attach = Lines::start(kubectl(&c, &[], &["attach", "far", "-c", "app"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Until attach is streaming, a line may come before it looks.
        let out = run(&c, &[], &["exec", "far", "--", "touch", "/tmp/more"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        match attach.rx.recv_timeout(Duration::from_secs(2)) {
            Ok(l) if l.contains("second line") => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "attach saw nothing:\n{}",
                c.logs()
            ),
        }
    }
    drop(attach);

    // exec -i: stdin in, stdout out, the exit code back; WebSocket (GET)
    // and SPDY (POST), the transport checked in kubectl's own log.
    for (websockets, verb) in [("true", "GET"), ("false", "POST")] {
        let env = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)];
        let out = run(
            &c,
            &env,
            &[
                "-v=6",
                "exec",
                "-i",
                "far",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; exit 3",
            ],
            Some(b"hello from node-0\n"),
        );
        let err = text(&out.stderr);
        assert_eq!(text(&out.stdout), "HELLO FROM NODE-0\n", "{err}");
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.lines().any(|l| l.contains(&format!("verb=\"{verb}\""))
                && l.contains("/exec?")
                && l.contains("101 Switching Protocols")),
            "websockets={websockets}: {err}"
        );
    }

    // port-forward to the pod's own 127.0.0.1: SPDY tunnelled in
    // WebSocket (kubectl's default), then plain SPDY.
    for (websockets, port) in [("true", "18090"), ("false", "18091")] {
        let env = [("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)];
        let ports = format!("{port}:8081");
        let forward = Lines::start(kubectl(&c, &env, &["port-forward", "pod/far", &ports]));
        forward.until(&format!("Forwarding from 127.0.0.1:{port}"), &c);
        let url = format!("http://127.0.0.1:{port}/index.html");
        let page = http_get(c.ns(0).path(), &url).unwrap();
        assert_eq!(page, "hello-from-node-1\n", "websockets={websockets}");
    }

    // A pod bound to a node that cannot be reached: a Status naming it.
    let ghost = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "haunt"},
         "spec": {"nodeName": "ghost", "containers": [
             {"name": "app", "image": knode_tests::image::BUSYBOX}]}}]});
    let file = dir.path().join("ghost.json");
    std::fs::write(&file, ghost.to_string()).unwrap();
    let out = run(
        &c,
        &[],
        &["apply", "--validate=false", "-f", file.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&c, &[], &["logs", "haunt"], None);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node ghost reports no IP address"),
        "{err}"
    );
    // ... and one whose address answers nothing there.
    let status = r#"{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}],"daemonEndpoints":{"kubeletEndpoint":{"Port":1}}}}"#;
    let out = run(
        &c,
        &[],
        &[
            "patch",
            "node",
            "ghost",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in [&["logs", "haunt"][..], &["exec", "haunt", "--", "true"]] {
        let out = run(&c, &[], args, None);
        let err = text(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("error dialing backend: node ghost's API at 127.0.0.1:1"),
            "{args:?}: {err}"
        );
    }

    // The node API itself, from node-0's namespace.
    let url = format!("https://{node1_ip}:{KUBELET_PORT}/containerLogs/default/far/app");
    let ca = tls_file(&c, 0, "ca.crt").display().to_string();
    let (crt, key) = (
        tls_file(&c, 0, "node.crt").display().to_string(),
        tls_file(&c, 0, "node.key").display().to_string(),
    );
    let resolve = format!("node-1:{KUBELET_PORT}:{node1_ip}");
    let by_name = format!("https://node-1:{KUBELET_PORT}/containerLogs/default/far/app");
    // A node identity, the serving certificate verified for node-1.
    let (code, body, _) = curl(
        &c,
        &[
            "--cacert",
            &ca,
            "--cert",
            &crt,
            "--key",
            &key,
            "--resolve",
            &resolve,
            &by_name,
        ],
    );
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("first line"), "{body}");
    // A token user: 403, saying who may.
    let (code, body, _) = curl(&c, &["-k", "-H", "Authorization: Bearer tok-alice", &url]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("API servers only"), "{body}");
    // Nobody: 401.
    let (code, body, _) = curl(&c, &["-k", &url]);
    assert_eq!(code, "401", "{body}");
    // The same names from another CA: refused at the handshake.
    let (crt, key) = foreign_cert(dir.path());
    let (code, body, exit) = curl(&c, &["-k", "--cert", &crt, "--key", &key, &url]);
    assert!(
        exit != 0 && code == "000",
        "code {code}, exit {exit}: {body}"
    );
    // Not a kubelet path: 404.
    let (code, _, _) = curl(
        &c,
        &[
            "--cacert",
            &ca,
            "--cert",
            &crt_of(&c),
            "--key",
            &key_of(&c),
            "--resolve",
            &resolve,
            &format!("https://node-1:{KUBELET_PORT}/api/v1/pods"),
        ],
    );
    assert_eq!(code, "404");
}

fn crt_of(c: &Cluster) -> String {
    tls_file(c, 0, "node.crt").display().to_string()
}

fn key_of(c: &Cluster) -> String {
    tls_file(c, 0, "node.key").display().to_string()
}
