//! `kubectl port-forward` through the agent's API to a pod the node runs:
//! over WebSocket (SPDY tunnelled, kubectl's default) and plain SPDY
//! (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`): bytes both ways (a megabyte
//! each way, checked), two connections at once, a server bound to the
//! pod's own 127.0.0.1, a port nothing listens on (kubectl prints the
//! error), and a kubectl stopped with Ctrl-C leaves no connection in the
//! pod. kubectl and the test's clients run inside the node's namespace,
//! where the API listens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use knode_tests::api::{kubectl_present, python, wait_for};
use knode_tests::image;
use knode_tests::node::Node;
use netns_tests::run_in;

/// The pod: an echo server on every address (8080), a web server on the
/// pod's loopback only (8081) serving a file of known contents, nothing
/// on 9999.
fn pod_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pf}}\nspec:\n  containers:\n  - name: app\n    image: {}\n    command: [sh, -c, 'mkdir -p /www && seq 1 200000 > /www/big && httpd -p 127.0.0.1:8081 -h /www && exec nc -ll -p 8080 -e cat']\n",
        image::BUSYBOX
    )
}

/// What `/www/big` holds.
fn big_file() -> Vec<u8> {
    (1..=200_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A running `kubectl port-forward`, stopped (SIGINT, as Ctrl-C) on drop.
struct Forward {
    child: Child,
    /// Everything kubectl printed on stderr so far (filled by a thread).
    stderr: Arc<Mutex<String>>,
}

impl Forward {
    /// Starts kubectl in the node's namespace and waits for its
    /// "Forwarding from" line for every port.
    fn start(n: &Node, kubeconfig: &Path, ports: &[&str], websockets: bool) -> Forward {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", n.host.path().display()))
            .args(["kubectl", "-v=6", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["port-forward", "pod/pf"])
            .args(ports)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = text.lock().unwrap();
                t.push_str(&l);
                t.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        while seen < ports.len() {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let e = stderr.lock().unwrap().clone();
                panic!("kubectl port-forward ended: {e}\n{}", n.agent.log());
            }
            if line.starts_with("Forwarding from 127.0.0.1:") {
                seen += 1;
            }
        }
        // Keep reading ("Handling connection for ...") so kubectl never
        // blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let f = Forward { child, stderr };
        // The transport asked for is the one used (kubectl falls back
        // from WebSocket to SPDY quietly): the upgrade is a GET on
        // WebSocket, a POST on SPDY.
        let want = if websockets { "GET" } else { "POST" };
        let upgraded = |e: &str| {
            e.lines().any(|l| {
                l.contains(&format!("verb=\"{want}\""))
                    && l.contains("/portforward\"")
                    && l.contains("101 Switching Protocols")
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !upgraded(&f.errors()) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {want} upgrade:\n{}",
                f.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    /// What kubectl printed on stderr so far.
    fn errors(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops kubectl as Ctrl-C does; its exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `data` to 127.0.0.1:`port` in the node's namespace, ends its
/// side, and returns what came back until the other side closed.
fn exchange(n: &Node, port: u16, data: &[u8]) -> Vec<u8> {
    run_in(n.host.path(), || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        got
    })
    .unwrap()
}

/// An HTTP GET of `path` through 127.0.0.1:`port`: the body.
fn http_get(n: &Node, port: u16, path: &str) -> Vec<u8> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: pf\r\n\r\n");
    let resp = exchange(n, port, req.as_bytes());
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {}", String::from_utf8_lossy(&resp)));
    assert!(
        resp.starts_with(b"HTTP/1.") && resp[8..13].starts_with(b" 200"),
        "{}",
        String::from_utf8_lossy(&resp[..at])
    );
    resp[at + 4..].to_vec()
}

/// A payload of `len` bytes that is not all one value.
fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Established TCP connections inside the pod's namespace.
fn pod_connections(netns: &Path) -> usize {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ss", "-Htn", "state", "established"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn kubectl_in(n: &Node, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", n.host.path().display()))
        .args(["timeout", "60", "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn setup(test: &str) -> Option<(Node, PathBuf, PathBuf)> {
    if !kubectl_present() {
        return None;
    }
    let port = knode_tests::free_port().unwrap().to_string();
    let n = Node::for_test_with(test, &["--api-port", &port])?;
    n.apply(&pod_yaml()).unwrap();
    let pod = n.wait_running("pf").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let netns = n.path("netns").join(format!("knode-{uid}"));
    let kubeconfig = n.agent.dir().join("kubeconfig.yaml");
    // The servers are up once they answer inside the pod.
    wait_for(|| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ss", "-Htln"])
            .output()
            .ok()?;
        let l = String::from_utf8_lossy(&out.stdout).into_owned();
        (l.contains(":8080") && l.contains("127.0.0.1:8081")).then_some(())
    });
    Some((n, kubeconfig, netns))
}

/// Everything over one transport; `websockets` picks it.
fn forwards_both_ways(n: &Node, kubeconfig: &Path, netns: &Path, websockets: bool) {
    let f = Forward::start(n, kubeconfig, &["18080:8080", "18081:8081"], websockets);
    // A megabyte up and back (the echo), over many frames.
    let up = payload(1 << 20, 7);
    let got = exchange(n, 18080, &up);
    assert!(
        got == up,
        "echoed {} bytes of {}: {}",
        got.len(),
        up.len(),
        f.errors()
    );
    // A file down from a server on the pod's own loopback.
    assert!(http_get(n, 18081, "/big") == big_file(), "{}", f.errors());
    // Two connections at once, each its own bytes.
    let (a, b) = (payload(300_000, 1), payload(300_000, 2));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| exchange(n, 18080, &a));
        let tb = s.spawn(|| exchange(n, 18080, &b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra == a && rb == b, "{}", f.errors());
    // A connection held open, then Ctrl-C: kubectl exits, the pod's side
    // of the connection goes, the local port is free again.
    let held = run_in(n.host.path(), || {
        let mut s = TcpStream::connect(("127.0.0.1", 18080)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s
    })
    .unwrap();
    assert!(pod_connections(netns) >= 1);
    let status = f.interrupt();
    assert!(status.success() || status.code().is_some(), "{status:?}");
    wait_for(|| (pod_connections(netns) == 0).then_some(()));
    drop(held);
    let free = run_in(n.host.path(), || {
        std::net::TcpListener::bind(("127.0.0.1", 18080)).is_ok()
    })
    .unwrap();
    assert!(free, "kubectl still holds its local port");

    // A port nothing listens on: kubectl prints the error it got on the
    // error stream, and gives up on the connection.
    let f = Forward::start(n, kubeconfig, &["19999:9999"], websockets);
    let got = exchange(n, 19999, b"hello");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let errors = wait_for(|| {
        let e = f.errors();
        e.contains("9999").then_some(e)
    });
    assert!(
        errors.contains("error forwarding port 9999 to pod default/pf")
            && errors.contains("Connection refused"),
        "{errors}"
    );
}

#[test]
fn kubectl_port_forward_reaches_a_pods_ports() {
    let Some((n, kubeconfig, netns)) = setup("kubectl_port_forward_reaches") else {
        return;
    };
    forwards_both_ways(&n, &kubeconfig, &netns, true);
    forwards_both_ways(&n, &kubeconfig, &netns, false);

    // A node's certificate may not forward (exec's rule); an admin may.
    let node_cfg = n.agent.data_dir().join("tls/node.kubeconfig");
    for (cfg, want) in [(&node_cfg, "no"), (&kubeconfig, "yes")] {
        let can = [
            "auth",
            "can-i",
            "create",
            "pods",
            "--subresource=portforward",
        ];
        let out = kubectl_in(&n, cfg, &can);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(said.starts_with(want), "{}: {out:?}", cfg.display());
    }
    // A pod on another node: refused naming that node.
    let far = n.agent.dir().join("far.yaml");
    std::fs::write(
        &far,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: far}\nspec:\n  nodeName: other-node\n  containers: [{name: app, image: busybox}]\n",
    )
    .unwrap();
    let out = kubectl_in(&n, &kubeconfig, &["apply", "-f", far.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // kubectl forwards to running pods only: say it runs there.
    let running = r#"{"status":{"phase":"Running"}}"#;
    let patch = [
        "patch",
        "pod",
        "far",
        "--subresource=status",
        "--type=merge",
        "-p",
        running,
    ];
    let out = kubectl_in(&n, &kubeconfig, &patch);
    assert!(out.status.success(), "{out:?}");
    let out = kubectl_in(&n, &kubeconfig, &["port-forward", "pod/far", "18082:80"]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && e.contains("node other-node is not registered"),
        "{e}"
    );
    // Bad ports: a 400 naming `ports`.
    for q in ["", "?ports=0", "?ports=65536", "?ports=http"] {
        let out = kubectl_in(
            &n,
            &kubeconfig,
            &[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/pf/portforward{q}"),
            ],
        );
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        let want = if q.is_empty() {
            "Upgrade request required"
        } else {
            "ports: "
        };
        assert!(!out.status.success() && e.contains(want), "{q}: {e}");
    }
}

/// The Python client's `portforward` (WebSocket channels): an echo, an
/// HTTP response read to its end, a refused port's error.
#[test]
fn the_python_client_forwards_ports() {
    let Some(python) = python() else { return };
    let Some((n, kubeconfig, _netns)) = setup("the_python_client_forwards_ports") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/portforward.py");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", n.host.path().display()))
        .args(["timeout", "60"])
        .arg(python)
        .arg(script)
        .arg(&kubeconfig)
        .arg("pf")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ok\n"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        n.agent.log()
    );
}
