//! `kubectl exec` through the agent's API over WebSocket
//! (`v5.channel.k8s.io`) and SPDY/3.1 (`v4.channel.k8s.io`, what kubectl
//! falls back to and client-go tools use): stdout and stderr apart, the exit code, stdin to
//! its end, a terminal with its size, and the refusals (an unknown
//! container, a pod on another node, a node's certificate).
//!
//! The agent runs no pods here (pods disabled): the test starts the pod's
//! container with `ctr` in its own containerd, under the labels the agent
//! gives its containers, and the agent's API execs into it there.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use knode_tests::api::{kubectl_present, python, wait_for, Api};
use knode_tests::containerd::{with_busybox, Containerd};
use knode_tests::node::Node;
use knode_tests::{image, unique, TempDir};

/// An API whose node runs pod `web` (containers `app`, running `sleep`,
/// and `side`, never started) and knows pod `far` on another node.
struct Setup {
    api: Api,
    c: Containerd,
    ns: String,
    app: String,
    _img: TempDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !kubectl_present() {
        return None;
    }
    let ns = unique("knode-kexec-");
    let (c, img) = with_busybox(test, &ns)?;
    let sock = c.socket().display().to_string();
    let api = Api::start_with(&["--containerd-socket", &sock, "--containerd-namespace", &ns]);
    let uid = api.web_and_far_pods();
    let app = unique("app-");
    let labels = [
        format!("io.knode.pod.uid={uid}"),
        "io.knode.container.name=app".to_string(),
        "io.knode.container.attempt=0".to_string(),
    ];
    let mut args = vec!["run", "-d", "--null-io"];
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    args.extend([image::BUSYBOX, app.as_str(), "sleep", "600"]);
    c.ctr_out(&ns, &args).expect("start the pod's container");
    Some(Setup {
        api,
        c,
        ns,
        app,
        _img: img,
    })
}

impl Setup {
    /// kubectl with `args`, fed `stdin`, killed after 60 s (a hang fails
    /// the test instead of stalling it).
    fn kubectl(&self, kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.kubectl_env(kubeconfig, args, stdin, &[])
    }

    /// [`Setup::kubectl`] with environment variables `env` set.
    fn kubectl_env(
        &self,
        kubeconfig: &std::path::Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> Output {
        let mut child = Command::new("timeout")
            .args(["60", "kubectl", "--kubeconfig"])
            .arg(kubeconfig)
            .args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        child.wait_with_output().unwrap()
    }

    fn exec(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.exec_env(args, stdin, &[])
    }

    /// `kubectl exec` with environment variables `env` set.
    fn exec_env(&self, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
        let mut a = vec!["exec"];
        a.extend_from_slice(args);
        self.kubectl_env(&self.api.kubeconfig(), &a, stdin, env)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn kubectl_exec_runs_commands_in_this_nodes_pods() {
    let Some(s) = setup("kubectl_exec_runs_commands") else {
        return;
    };
    // The same checks over both transports kubectl speaks: WebSocket
    // (its default) and SPDY/3.1 (older kubectl, client-go tools; asked
    // for here).
    for (transport, env) in [
        ("websocket", &[][..]),
        (
            "spdy",
            &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")][..],
        ),
    ] {
        let exec = |args: &[&str], stdin: Option<&[u8]>| s.exec_env(args, stdin, env);
        // stdout and stderr apart, and the exit code.
        let out = exec(
            &[
                "web",
                "-c",
                "app",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{transport}: {}\n{}",
            text(&out.stderr),
            s.api.agent.log()
        );
        assert_eq!(text(&out.stdout), "out\n", "{transport}");
        assert!(
            text(&out.stderr).starts_with("err\n")
                && text(&out.stderr).contains("command terminated with exit code 3"),
            "{transport}: {}",
            text(&out.stderr)
        );
        // It ran in the pod's running container (whose pid 1 is `sleep 600`).
        let out = exec(&["web", "-c", "app", "--", "cat", "/proc/1/cmdline"], None);
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(out.stdout, b"sleep\x00600\x00", "{transport}");

        // stdin to its end, across many messages.
        let out = exec(&["-i", "web", "-c", "app", "--", "cat"], Some(b"hi\n"));
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hi\n", "{transport}");
        let input = b"hello\nworld\n".repeat(20_000);
        let out = exec(&["-i", "web", "-c", "app", "--", "wc", "-c"], Some(&input));
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            input.len().to_string(),
            "{transport}"
        );
        // Large output arrives whole.
        let out = exec(
            &[
                "web",
                "-c",
                "app",
                "--",
                "sh",
                "-c",
                "head -c 300000 /dev/zero | tr '\\0' x",
            ],
            None,
        );
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), 300_000, "{transport}");
        let out = exec(&["web", "-c", "nope", "--", "true"], None);
        assert!(
            !out.status.success()
                && text(&out.stderr).contains("container nope is not valid for pod web"),
            "{transport}: {}",
            text(&out.stderr)
        );
    }

    // The refusals, as kubectl prints kube-apiserver's.
    let out = s.exec(&["web", "-c", "side", "--", "true"], None);
    assert!(
        text(&out.stderr).contains("container side is not running in pod web"),
        "{}",
        text(&out.stderr)
    );
    let out = s.exec(&["far", "-c", "app", "--", "true"], None);
    assert!(
        text(&out.stderr).contains("node other-node is not registered"),
        "{}",
        text(&out.stderr)
    );
    // A plain request (no upgrade) is told what to do.
    let e = s.api.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/web/exec?container=app&command=true&stdout=true",
    ]);
    assert!(
        text(&e.stderr).contains("Upgrade request required"),
        "{}",
        text(&e.stderr)
    );
    let out = s.exec(&["nope", "--", "true"], None);
    assert!(text(&out.stderr).contains("NotFound") || text(&out.stderr).contains("not found"));
    let node_cfg = s.api.agent.data_dir().join("tls/node.kubeconfig");
    let out = s.kubectl(&node_cfg, &["exec", "web", "-c", "app", "--", "true"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Forbidden"),
        "{}",
        text(&out.stderr)
    );
    let can = s.kubectl(
        &node_cfg,
        &["auth", "can-i", "create", "pods", "--subresource=exec"],
        None,
    );
    assert!(text(&can.stdout).starts_with("no"), "{can:?}");
    let can = s
        .api
        .ok(&["auth", "can-i", "create", "pods", "--subresource=exec"]);
    assert_eq!(can.trim(), "yes");

    // A terminal: kubectl -it under `script`, which gives it a pty of
    // the size set first; the command sees a tty of that size, its exit
    // code comes back.
    let remote = "tty; for i in $(seq 50); do s=$(stty size 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != \"0 0\" ] && break; sleep 0.1; done; echo size $s; exit 4";
    let script = s.api.agent.dir().join("tty.sh");
    std::fs::write(
        &script,
        format!(
            "stty cols 97 rows 31\nexec kubectl --kubeconfig {} exec -it web -c app -- sh -c '{remote}'\n",
            s.api.kubeconfig().display()
        ),
    )
    .unwrap();
    let run = format!("timeout --foreground 60 sh {}", script.display());
    let out = Command::new("script")
        .args(["-qec", &run, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("/dev/pts/"), "{o}\n{}", text(&out.stderr));
    assert!(o.contains("size 31 97"), "{o}");
    assert_eq!(out.status.code(), Some(4), "{o}");

    // A client that goes away: the command is killed.
    let procs = || {
        let ps = s.c.ctr_out(&s.ns, &["tasks", "ps", &s.app]).unwrap();
        ps.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    };
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.api.kubeconfig())
        .args(["exec", "web", "-c", "app", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(|| (procs() == 2).then_some(()));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(|| (procs() == 1).then_some(()));

    // Nothing left behind: no FIFO dirs (removed once the exec is
    // reaped, just after its process is gone), no exec processes.
    let left = || -> Vec<_> {
        std::fs::read_dir(s.api.agent.run_dir().join("exec"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    wait_for(|| left().is_empty().then_some(()));
    assert_eq!(procs(), 1);
}

/// The Python client's `stream` exec (it speaks v4.channel.k8s.io): the
/// output, stdout and stderr apart with the exit code, stdin.
#[test]
fn the_python_client_execs_through_its_stream_api() {
    let Some(python) = python() else { return };
    let Some(s) = setup("the_python_client_execs") else {
        return;
    };
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/exec.py");
    let out = Command::new("timeout")
        .arg("60")
        .arg(python)
        .arg(script)
        .arg(s.api.kubeconfig())
        .args(["web", "app"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ok\n"),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        s.api.agent.log()
    );
}

/// `kubectl attach`: the running container's output from the moment of
/// attaching (read from its log as the log writer writes it), stdout and
/// stderr apart, until the container stops; stdin is refused with the
/// reason.
#[test]
fn kubectl_attach_streams_the_containers_output() {
    if !kubectl_present() {
        return;
    }
    let ns = unique("knode-kattach-");
    let Some((c, _img)) = with_busybox("kubectl_attach_streams", &ns) else {
        return;
    };
    let logs = TempDir::new("attach-logs").unwrap();
    let sock = c.socket().display().to_string();
    let api = Api::start_with(&[
        "--containerd-socket",
        &sock,
        "--containerd-namespace",
        &ns,
        "--log-dir",
        logs.path().to_str().unwrap(),
    ]);
    let file = api.agent.dir().join("pod.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  nodeName: test-node\n  containers: [{name: app, image: busybox}]\n",
    )
    .unwrap();
    api.ok(&["apply", "-f", file.to_str().unwrap()]);
    let uid = api.ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]);
    let log = logs.path().join(format!("default_web_{uid}/app/0.log"));
    let uri = format!(
        "binary://{}?log-writer={}",
        knode_tests::our_bin("knode").display(),
        log.display()
    );
    let labels = [
        format!("io.knode.pod.uid={uid}"),
        "io.knode.container.name=app".to_string(),
        "io.knode.container.attempt=0".to_string(),
    ];
    let mut args = vec!["run", "-d", "--log-uri", &uri];
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    let id = unique("attach-");
    let script = "for i in $(seq 1 60); do echo out $i; echo err $i >&2; sleep 0.2; done";
    args.extend([image::BUSYBOX, id.as_str(), "sh", "-c", script]);
    c.ctr_out(&ns, &args).expect("start the pod's container");
    // Attach once the container has written a few lines: those are the
    // log's, not the attach's.
    wait_for(|| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" out 3\n")
            .then_some(())
    });
    let s = |args: &[&str]| {
        Command::new("timeout")
            .args(["60", "kubectl", "--kubeconfig"])
            .arg(api.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    };
    let e = s(&["attach", "-i", "web", "-c", "app"]);
    assert!(!e.status.success());
    assert!(
        text(&e.stderr).contains("have no stdin or terminal open"),
        "{}",
        text(&e.stderr)
    );
    let out = s(&["attach", "web", "-c", "app"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        api.agent.log()
    );
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(o.ends_with("out 60\n") && !o.contains("err"), "{o}");
    assert!(!o.contains("out 1\n"), "{o}");
    assert!(e.contains("err 60\n") && !e.contains("out"), "{e}");
    // The lines in between all came, in order.
    let first: u32 = o.lines().next().unwrap()[4..].parse().unwrap();
    let want: String = (first..=60).map(|i| format!("out {i}\n")).collect();
    assert_eq!(o, want);
}

/// On a node that runs its pods (containerd, CNI, the log writer): kubectl
/// (from inside the node's namespace, where the API listens) execs into a
/// pod the agent started and attaches to its output.
#[test]
fn kubectl_execs_into_and_attaches_to_a_pod_the_node_runs() {
    if !kubectl_present() {
        return;
    }
    let port = knode_tests::free_port().unwrap().to_string();
    let Some(n) = Node::for_test_with(
        "kubectl_execs_into_a_pod_the_node_runs",
        &["--api-port", &port],
    ) else {
        return;
    };
    n.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticker}}\nspec:\n  containers:\n  - name: app\n    image: {}\n    command: [sh, -c, 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done']\n",
        image::BUSYBOX
    ))
    .unwrap();
    n.wait_running("ticker").unwrap();
    let kubeconfig = n.agent.dir().join("kubeconfig.yaml");
    let kubectl = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", n.host.path().display()))
            .args(["timeout", "60", "kubectl", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(args);
        c.output().unwrap()
    };
    let out = kubectl(&[
        "exec",
        "ticker",
        "--",
        "sh",
        "-c",
        "cat /proc/1/cmdline; exit 2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{}",
        text(&out.stderr),
        n.agent.log()
    );
    assert!(text(&out.stdout).contains("tick"), "{}", text(&out.stdout));
    // Attach sees the ticks as they come (it is stopped after 3 s: the
    // container runs on).
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", n.host.path().display()))
        .args(["timeout", "3", "kubectl", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["attach", "ticker"]);
    let out = c.output().unwrap();
    let o = text(&out.stdout);
    let ticks: Vec<u32> = o
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() >= 3, "{o}\n{}", text(&out.stderr));
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{o}");
    assert!(ticks[0] > 0, "{o}");
}
