//! The real `kubectl` against the agent's Kubernetes API over HTTPS, with
//! the admin kubeconfig the agent wrote: discovery, get, apply twice,
//! delete, watch, patch, and the refusals (no certificate: 401; a
//! certificate from another CA: refused at the handshake).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use knode_tests::api::{kubectl_present, wait_for, Api};

const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data: {a: '1'}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: c, image: busybox, ports: [{containerPort: 80}]}]
";

#[test]
fn kubectl_discovers_gets_applies_watches_and_deletes() {
    if !kubectl_present() {
        return;
    }
    let api = Api::start();
    let mode = std::fs::metadata(api.kubeconfig())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    assert!(api.ok(&["version"]).contains("Server Version: v1."));
    // Aggregated discovery: kubectl learns every resource from /api and
    // /apis alone (with plain discovery it asks each group/version too).
    let out = api.kubectl(&["api-resources", "-v=6", "--cache-dir", &cache_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("/apis?timeout"), "{log}");
    assert!(
        !log.contains("/apis/apps/v1?timeout") && !log.contains("/api/v1?timeout"),
        "kubectl fell back to per-group discovery:\n{log}"
    );
    let res = api.ok(&["api-resources"]);
    for row in ["pods ", "deployments ", "services "] {
        assert!(res.lines().any(|l| l.starts_with(row)), "{res}");
    }
    assert!(
        res.lines()
            .any(|l| l.starts_with("pods") && l.contains(" po ")),
        "{res}"
    );
    let ns = api.ok(&["get", "ns"]);
    assert!(
        ns.lines().next().unwrap().starts_with("NAME") && ns.contains("default"),
        "{ns}"
    );
    api.ok(&["get", "svc", "-A"]);

    let file = api.agent.dir().join("web.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();
    let out = api.ok(&["apply", "-f", f]);
    assert!(
        out.contains("configmap/settings created") && out.contains("pod/web created"),
        "{out}"
    );
    let out = api.ok(&["apply", "-f", f]);
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    std::fs::write(&file, MANIFEST.replace("a: '1'", "a: '2'")).unwrap();
    let out = api.ok(&["apply", "-f", f]);
    assert!(out.contains("configmap/settings configured"), "{out}");
    assert_eq!(
        api.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.a}"]),
        "2"
    );

    // Server-side tables with kubectl's pod columns.
    let pods = api.ok(&["get", "pods"]);
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert!(api
        .ok(&["get", "pods", "-o", "wide"])
        .lines()
        .next()
        .unwrap()
        .contains("NODE"));
    assert!(api.ok(&["get", "po", "-l", "app=web"]).contains("web"));
    assert!(!api.ok(&["get", "po", "-l", "app=db"]).contains("web"));
    assert!(api
        .ok(&["get", "po", "--field-selector", "metadata.name=web"])
        .contains("web"));

    api.ok(&[
        "patch",
        "pod",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"x":"1"}}}"#,
    ]);
    api.ok(&[
        "patch",
        "pod",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/y","value":"2"}]"#,
    ]);
    api.ok(&["label", "pod", "web", "z=3"]);
    let labels = api.ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.labels}"]);
    for l in [r#""x":"1""#, r#""y":"2""#, r#""z":"3""#, r#""app":"web""#] {
        assert!(labels.contains(l), "{labels}");
    }

    // A watch sees the delete; delete returns once the object is gone.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args([
            "get",
            "cm",
            "-w",
            "--output-watch-events",
            "--request-timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut next_with = |what: &str| loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(what) => return l,
            Some(Ok(_)) => continue,
            other => panic!("watch ended before {what}: {other:?}"),
        }
    };
    assert!(next_with("ADDED").contains("settings"));
    assert!(api.ok(&["delete", "cm", "settings"]).contains("deleted"));
    let gone = api.kubectl(&["get", "cm", "settings"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{gone:?}"
    );
    assert!(next_with("DELETED").contains("settings"));
    let _ = watch.kill();
    let _ = watch.wait();

    // Chunked lists: every page from one snapshot, then all of it.
    let pages: String = (0..5)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: page-{i}}}\n---\n"))
        .collect();
    let pages_file = api.agent.dir().join("pages.yaml");
    std::fs::write(&pages_file, pages).unwrap();
    api.ok(&["create", "-f", pages_file.to_str().unwrap()]);
    let first: serde_json::Value = serde_json::from_str(&api.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2",
    ]))
    .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2, "{first}");
    let token = first["metadata"]["continue"].as_str().unwrap();
    let first_count = 2 + first["metadata"]["remainingItemCount"].as_u64().unwrap() as usize;
    assert!(first_count >= 5, "{first}");
    api.ok(&["label", "cm", "page-4", "after=first-page"]);
    let rest: serde_json::Value = serde_json::from_str(&api.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=500&continue={token}"),
    ]))
    .unwrap();
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    // The label came after the first page: the snapshot does not have it.
    assert!(!rest.to_string().contains("first-page"), "{rest}");
    assert_eq!(names.len() + 2, first_count, "{names:?}");
    assert!(rest["metadata"].get("continue").is_none(), "{rest}");
    let all = api.ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    for i in 0..5 {
        assert!(all.contains(&format!("configmap/page-{i}\n")), "{all}");
    }

    // Unknown fields: kubectl asks for Strict validation and gets the
    // field named; --validate=warn applies and prints the warning.
    let bad = api.agent.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict}\ndata: {a: '1'}\nbogus: 1\n",
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    let e = api.kubectl(&["apply", "-f", b]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        !e.status.success() && err.contains(r#"unknown field "bogus""#),
        "{e:?}"
    );
    assert!(api.kubectl(&["get", "cm", "strict"]).stdout.is_empty());
    let w = api.kubectl(&["apply", "--validate=warn", "-f", b]);
    assert!(w.status.success(), "{w:?}");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains(r#"Warning: unknown field "bogus""#),
        "{w:?}"
    );

    // client-go's typed clients send protobuf: kubectl create's generators.
    api.ok(&["create", "configmap", "literal", "--from-literal=a=1"]);
    assert_eq!(
        api.ok(&["get", "cm", "literal", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    api.ok(&["create", "secret", "generic", "token", "--from-literal=k=v"]);
    assert_eq!(
        api.ok(&["get", "secret", "token", "-o", "jsonpath={.data.k}"]),
        "dg=="
    );
    api.ok(&["create", "namespace", "team"]);
    api.ok(&[
        "create",
        "deployment",
        "app",
        "--image=busybox",
        "--replicas=0",
    ]);
    assert_eq!(
        api.ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.replicas}"]),
        "0"
    );
    // kubectl scale patches the scale subresource.
    api.ok(&["scale", "deploy", "app", "--replicas=2"]);
    assert_eq!(
        api.ok(&["get", "deploy", "app", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
    let e = api.kubectl(&[
        "scale",
        "deploy",
        "app",
        "--replicas=3",
        "--current-replicas=5",
    ]);
    assert!(!e.status.success(), "{e:?}");
    // Orphan propagation: the ReplicaSet stays, without its owner.
    let rs = wait_for(|| {
        let o = api.ok(&["get", "rs", "-l", "app=app", "-o", "name"]);
        (!o.trim().is_empty()).then(|| o.trim().to_string())
    });
    api.ok(&["delete", "deploy", "app", "--cascade=orphan"]);
    let owners = api.ok(&["get", &rs, "-o", "jsonpath={.metadata.ownerReferences}"]);
    assert!(!owners.contains("Deployment"), "{owners}");
    // A server-side dry run answers as the write would, and keeps nothing.
    let dry = api.ok(&["label", "cm", "literal", "dry=run", "--dry-run=server"]);
    assert!(dry.contains("labeled (server dry run)"), "{dry}");
    assert!(!api
        .ok(&["get", "cm", "literal", "--show-labels"])
        .contains("dry=run"));

    // A pod for another scheduler is bound through the binding
    // subresource, once.
    let manual = api.agent.dir().join("manual.yaml");
    std::fs::write(
        &manual,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: manual}\nspec:\n  schedulerName: my-scheduler\n  containers: [{name: c, image: busybox}]\n",
    )
    .unwrap();
    api.ok(&["create", "-f", manual.to_str().unwrap()]);
    let binding = api.agent.dir().join("binding.json");
    std::fs::write(
        &binding,
        r#"{"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "manual"}, "target": {"kind": "Node", "name": "elsewhere"}}"#,
    )
    .unwrap();
    let raw = "/api/v1/namespaces/default/pods/manual/binding";
    api.ok(&["create", "--raw", raw, "-f", binding.to_str().unwrap()]);
    assert_eq!(
        api.ok(&["get", "pod", "manual", "-o", "jsonpath={.spec.nodeName}"]),
        "elsewhere"
    );
    let again = api.kubectl(&["create", "--raw", raw, "-f", binding.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already assigned"),
        "{again:?}"
    );

    // Errors are kube-apiserver's Status objects.
    let e = api.kubectl(&["get", "pod", "nope"]);
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("NotFound"),
        "{e:?}"
    );
}

#[test]
fn strangers_are_refused() {
    if !kubectl_present() {
        return;
    }
    let api = Api::start();
    let url = format!("https://127.0.0.1:{}/api/v1/pods", api.port);
    // No client certificate: 401 with an Unauthorized Status.
    let o = Command::new("curl").args(["-sk", &url]).output().unwrap();
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(
        body.contains("\"code\":401") && body.contains("Unauthorized"),
        "{body}"
    );
    // A certificate from another CA fails the handshake.
    let dir = api.agent.dir();
    let sh = format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.crt -days 1 -subj '/O=system:masters/CN=mallory' 2>/dev/null && curl -sk --cert other.crt --key other.key {url}; echo rc=$?",
        d = dir.display()
    );
    let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("rc=0") && !out.contains("\"kind\""), "{out}");
    // `knode kubeconfig` prints what the agent wrote.
    let printed = api.agent.knode(&["kubeconfig"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        std::fs::read_to_string(api.kubeconfig()).unwrap()
    );

    // The node's own identity may do what a kubelet needs and no more.
    let node_cfg = api.agent.data_dir().join("tls/node.kubeconfig");
    let as_node = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&node_cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let manifest = "apiVersion: v1\nkind: Secret\nmetadata: {name: mine}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: theirs}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: here}\nspec:\n  nodeName: test-node\n  volumes: [{name: s, secret: {secretName: mine}}]\n  containers: [{name: c, image: busybox}]\n";
    let file = dir.join("node-objects.yaml");
    std::fs::write(&file, manifest).unwrap();
    api.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(as_node(&["get", "pods"]).status.success());
    assert!(as_node(&["get", "secret", "mine"]).status.success());
    let e = as_node(&["get", "secret", "theirs"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("Forbidden"), "{e:?}");
    let e = as_node(&["delete", "node", "test-node"]);
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("Forbidden"),
        "{e:?}"
    );
    let can = String::from_utf8_lossy(&as_node(&["auth", "can-i", "delete", "nodes"]).stdout)
        .into_owned();
    assert!(can.starts_with("no"), "{can}");
    let can = String::from_utf8_lossy(&as_node(&["auth", "can-i", "patch", "pods/status"]).stdout)
        .into_owned();
    assert!(can.starts_with("no"), "{can}");
    assert_eq!(api.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    // Impersonation is checked, not ignored.
    let can = api.kubectl(&["auth", "can-i", "list", "secrets", "--as", "bob"]);
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no", "{can:?}");
    let mode = std::fs::metadata(&node_cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// `kubectl logs` through the API: the pod's CRI log files on this node
/// (written here as the log writer would), with -c, --previous, --tail,
/// --timestamps, --limit-bytes and -f; a pod on another node is refused
/// with the reason.
#[test]
fn kubectl_logs_reads_this_nodes_pods() {
    if !kubectl_present() {
        return;
    }
    let logs_dir = knode_tests::TempDir::new("api-logs").unwrap();
    let api = Api::start_with(&["--log-dir", logs_dir.path().to_str().unwrap()]);
    let uid = api.web_and_far_pods();
    let dir = logs_dir.path().join(format!("default_web_{uid}/app"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0.log"),
        "2024-05-01T10:00:00Z stdout F first run\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("1.log"),
        "2024-05-01T10:01:00Z stdout F hello\n2024-05-01T10:01:01Z stderr F last\n",
    )
    .unwrap();

    assert_eq!(api.ok(&["logs", "web", "-c", "app"]), "hello\nlast\n");
    assert_eq!(api.ok(&["logs", "web", "-c", "app", "-p"]), "first run\n");
    assert_eq!(api.ok(&["logs", "web", "-c", "app", "--tail=1"]), "last\n");
    assert_eq!(
        api.ok(&["logs", "web", "-c", "app", "--timestamps", "--tail=1"]),
        "2024-05-01T10:01:01Z last\n"
    );
    assert_eq!(
        api.ok(&["logs", "web", "-c", "app", "--limit-bytes=3"]),
        "hel"
    );
    // kubectl picks the first container itself; the server, asked for
    // none, says a name is needed.
    assert_eq!(api.ok(&["logs", "web"]), "hello\nlast\n");
    let e = api.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/web/log"]);
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("a container name must be specified"),
        "{e:?}"
    );
    let e = api.kubectl(&["logs", "far", "-c", "app"]);
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("node other-node is not registered"),
        "{e:?}"
    );

    // Follow: the backlog, then growth, until the pod is deleted.
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["logs", "-f", "web", "-c", "app", "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "last");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("1.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"2024-05-01T10:02:00Z stdout F more\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "more");
    api.ok(&["delete", "pod", "web", "--grace-period=0", "--force"]);
    // The stream ends once the pod is gone.
    assert!(lines.next().is_none());
    assert!(child.wait().unwrap().success());
}

/// A discovery cache of this run's own (kubectl's default one could answer
/// from an earlier run instead of asking).
fn cache_dir() -> String {
    let d = std::env::temp_dir().join(knode_tests::unique("kubectl-cache-"));
    d.display().to_string()
}

/// kubectl's own rollout commands against the controllers (this agent
/// runs no pods, so the Deployment has 0 replicas: every rollout is done
/// once its ReplicaSets are): `rollout status` waits for and reports the
/// rollout, `set image` makes revision 2, `rollout history` lists both,
/// `rollout undo` (a JSON patch of the template from revision 1's
/// ReplicaSet) brings the first image back as revision 3, and `rollout
/// undo --to-revision` refuses a revision that does not exist.
#[test]
fn kubectl_rollout_status_history_and_undo() {
    if !kubectl_present() {
        return;
    }
    let api = Api::start();
    let status = |api: &Api| {
        let o = api.kubectl(&["rollout", "status", "deployment/roll", "--timeout=60s"]);
        assert!(
            o.status.success(),
            "rollout status: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            api.ok(&["get", "deploy,rs", "-o", "yaml"])
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let image = |api: &Api| {
        api.ok(&[
            "get",
            "deploy",
            "roll",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
    };
    let revision = |api: &Api| {
        api.ok(&[
            "get",
            "deploy",
            "roll",
            "-o",
            r"jsonpath={.metadata.annotations.deployment\.kubernetes\.io/revision}",
        ])
    };
    // The REVISION column of `rollout history`.
    let history = |api: &Api| -> Vec<String> {
        api.ok(&["rollout", "history", "deployment/roll"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<u32>().is_ok())
            .map(str::to_string)
            .collect()
    };
    api.ok(&[
        "create",
        "deployment",
        "roll",
        "--image=busybox:1",
        "--replicas=0",
    ]);
    let out = status(&api);
    assert!(
        out.contains("deployment \"roll\" successfully rolled out"),
        "{out}"
    );
    wait_for(|| (revision(&api) == "1").then_some(()));

    api.ok(&["set", "image", "deployment/roll", "busybox=busybox:2"]);
    let out = status(&api);
    assert!(
        out.contains("deployment \"roll\" successfully rolled out"),
        "{out}"
    );
    wait_for(|| (revision(&api) == "2").then_some(()));
    assert_eq!(history(&api), ["1", "2"]);
    let two = api.ok(&["rollout", "history", "deployment/roll", "--revision=2"]);
    assert!(two.contains("busybox:2"), "{two}");

    let out = api.ok(&["rollout", "undo", "deployment/roll"]);
    assert!(out.contains("deployment.apps/roll rolled back"), "{out}");
    assert_eq!(image(&api), "busybox:1");
    wait_for(|| (revision(&api) == "3").then_some(()));
    let out = status(&api);
    assert!(
        out.contains("deployment \"roll\" successfully rolled out"),
        "{out}"
    );
    // Revision 1's ReplicaSet became revision 3: the history is 2, 3.
    assert_eq!(history(&api), ["2", "3"]);
    let rs = api.ok(&["get", "rs", "-l", "app=roll", "-o", "name"]);
    assert_eq!(rs.lines().count(), 2, "{rs}");

    let e = api.kubectl(&["rollout", "undo", "deployment/roll", "--to-revision=9"]);
    assert!(
        !e.status.success() && String::from_utf8_lossy(&e.stderr).contains("revision"),
        "{e:?}"
    );
    assert_eq!(image(&api), "busybox:1");
}
