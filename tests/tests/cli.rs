//! The `knode` CLI against a real agent: apply/get/delete round trips and
//! the errors a user sees for bad input.

use knode_tests::agent::Agent;

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const WEB: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: httpd
    image: busybox
    ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team}
data: {a: '1'}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
";

#[test]
fn apply_get_delete_round_trip() {
    let agent = Agent::start().unwrap();
    let file = agent.dir().join("web.yaml");
    std::fs::write(&file, WEB).unwrap();
    let f = file.to_str().unwrap();

    let out = agent.knode(&["apply", "-f", f]).unwrap();
    let (so, se) = text(&out);
    assert!(out.status.success(), "{se}");
    // The namespace is created before the ConfigMap that lives in it.
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        [
            "namespace/team created",
            "configmap/settings created",
            "service/web created",
            "pod/web created"
        ]
    );
    let out = agent.knode(&["apply", "-f", f]).unwrap();
    assert!(
        text(&out).0.contains("pod/web unchanged"),
        "{:?}",
        text(&out)
    );

    let (so, _) = text(&agent.knode(&["get", "pods"]).unwrap());
    let mut lines = so.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(lines.next().unwrap().starts_with("web "), "{so}");

    let (so, _) = text(&agent.knode(&["get", "services"]).unwrap());
    assert!(so.starts_with("NAME"), "{so}");
    for col in ["TYPE", "CLUSTER-IP", "PORT(S)", "AGE"] {
        assert!(so.lines().next().unwrap().contains(col), "{so}");
    }
    // default/kubernetes is listed too (the control plane keeps it).
    assert!(
        so.lines()
            .any(|l| l.starts_with("kubernetes ") && l.contains("10.96.0.1")),
        "{so}"
    );
    let row = so.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(row.contains("NodePort") && row.contains("10."), "{row}");
    assert!(row.contains("80:3"), "node port shown: {row}");

    let (so, _) = text(&agent.knode(&["get", "cm", "-A"]).unwrap());
    assert!(so.contains("team") && so.contains("settings"), "{so}");

    let (so, _) = text(&agent.knode(&["get", "svc", "web", "-o", "json"]).unwrap());
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    let ip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(!v["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(v["metadata"]["creationTimestamp"].is_string());

    // Re-applying keeps the allocated ClusterIP.
    agent.knode(&["apply", "-f", f]).unwrap();
    let (so, _) = text(&agent.knode(&["get", "svc", "web", "-o", "yaml"]).unwrap());
    assert!(so.contains(&format!("clusterIP: {ip}")), "{so}");

    let (so, _) = text(&agent.knode(&["get", "endpoints"]).unwrap());
    assert!(so.starts_with("NAME") && so.contains("web"), "{so}");

    let out = agent.knode(&["delete", "pod", "web"]).unwrap();
    assert_eq!(text(&out).0.trim(), "pod \"web\" deleted");
    let out = agent.knode(&["delete", "-f", f]).unwrap();
    let (so, se) = text(&out);
    assert!(!out.status.success(), "the pod was already gone: {so}");
    assert!(se.contains("not found"), "{se}");
    assert!(
        so.contains("service \"web\" deleted") && so.contains("namespace \"team\" deleted"),
        "{so}"
    );
    let out = agent.knode(&["get", "pods"]).unwrap();
    assert!(text(&out)
        .1
        .contains("No resources found in default namespace."));
    let out = agent.knode(&["get", "cm", "-n", "team"]).unwrap();
    assert!(
        text(&out).1.contains("No resources found"),
        "{:?}",
        text(&out)
    );

    // And from stdin.
    let out = agent.knode_stdin(&["apply", "-f", "-"], Some(WEB)).unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn bad_yaml_names_the_document_and_line() {
    let agent = Agent::start().unwrap();
    let file = agent.dir().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n   bad: indent\n",
    )
    .unwrap();
    let out = agent
        .knode(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert!(se.contains("bad.yaml"), "{se}");
    assert!(se.contains("document 2"), "{se}");
    assert!(se.contains("line 9"), "{se}");
    // Nothing was applied: the good document before it is not there either.
    let out = agent.knode(&["get", "cm", "ok"]).unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_invalid_object_names_the_field() {
    let agent = Agent::start().unwrap();
    let out = agent
        .knode_stdin(
            &["apply", "-f", "-"],
            Some("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n"),
        )
        .unwrap();
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert!(se.contains("spec.containers[0].image"), "{se}");
    assert!(se.contains("required") || se.contains("Required"), "{se}");

    let out = agent
        .knode_stdin(
            &["apply", "-f", "-"],
            Some("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 192.168.0.1\n  ports: [{port: 80}]\n"),
        )
        .unwrap();
    let (_, se) = text(&out);
    assert!(se.contains("spec.clusterIP"), "{se}");
    assert!(se.contains("not in the valid range"), "{se}");

    let out = agent.knode(&["get", "widgets"]).unwrap();
    assert!(text(&out).1.contains("unknown kind"));
}
