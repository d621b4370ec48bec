//! Server-side apply and server-side dry run with the real kubectl:
//! `apply --server-side` (create, no-op, conflict after `kubectl scale`,
//! `--force-conflicts`, a field dropped from the file leaves the object),
//! `apply --dry-run=server` and `kubectl diff` (exit 1 on a change, 0
//! without), and malformed applies answered with the field at fault; on
//! the embedded store and on etcd.

use std::process::Command;

use knode_tests::api::{kubectl_present, Api};
use knode_tests::etcd::{require_etcd, EtcdCluster};

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web, tier: front}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
";

fn get(api: &Api, what: &str, path: &str) -> String {
    api.ok(&["get", what, "-o", &format!("jsonpath={{{path}}}")])
}

/// A PATCH (or other method) with the admin's client certificate, the
/// way no kubectl verb sends it: (HTTP code, body).
fn raw(api: &Api, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
    let dir = api.agent.dir();
    for (field, file) in [
        ("client-certificate-data", "admin.crt"),
        ("client-key-data", "admin.key"),
    ] {
        let b64 = api.ok(&[
            "config",
            "view",
            "--raw",
            "-o",
            &format!("jsonpath={{.users[0].user.{field}}}"),
        ]);
        let o = Command::new("base64")
            .args(["-d"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        std::fs::write(dir.join(file), o.stdout).unwrap();
    }
    let url = format!("https://127.0.0.1:{}{path}", api.port);
    let o = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sk",
            "--cert",
            "admin.crt",
            "--key",
            "admin.key",
            "-X",
            method,
        ])
        .args([
            "-H",
            &format!("Content-Type: {ctype}"),
            "--data-binary",
            body,
        ])
        .args(["-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn kubectl_apply_server_side_dry_run_and_diff() {
    if !kubectl_present() {
        return;
    }
    exercise(&Api::start());
}

/// The same on the etcd control plane (its storage under the dry run).
#[test]
fn kubectl_apply_server_side_dry_run_and_diff_on_etcd() {
    if !kubectl_present() || !require_etcd("kubectl_apply_on_etcd") {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let cp = etcd.control_plane();
    exercise(&Api::start_agent(&["--control-plane", cp.as_str()], &[]));
}

fn exercise(api: &Api) {
    let file = api.agent.dir().join("web.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, DEPLOY).unwrap();

    // Created, then applied again without a write.
    let out = api.ok(&["apply", "--server-side", "-f", f]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let rv = get(api, "deploy/web", ".metadata.resourceVersion");
    let managers = get(api, "deploy/web", ".metadata.managedFields[*].manager");
    assert_eq!(managers, "kubectl", "kubectl's default apply manager");
    let fields = get(api, "deploy/web", ".metadata.managedFields[0].fieldsV1");
    assert!(
        fields.contains(r#""k:{\"name\":\"web\"}""#)
            && fields.contains(r#""k:{\"containerPort\":80,\"protocol\":\"TCP\"}""#),
        "{fields}"
    );
    let out = api.ok(&["apply", "--server-side", "-f", f]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    assert_eq!(get(api, "deploy/web", ".metadata.resourceVersion"), rv);

    // Other kinds, cluster-scoped and with server-assigned fields (a
    // Service's ClusterIP, a Pod's defaults): applied twice, written once.
    let kinds = api.agent.dir().join("kinds.yaml");
    std::fs::write(
        &kinds,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: team}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team}\n\
         spec: {nodeName: test-node, containers: [{name: c, image: busybox, ports: [{containerPort: 80}]}]}\n",
    )
    .unwrap();
    let k = kinds.to_str().unwrap();
    let out = api.ok(&["apply", "--server-side", "-f", k]);
    for line in [
        "namespace/team serverside-applied",
        "service/svc serverside-applied",
        "pod/p serverside-applied",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let versions = |api: &Api| {
        ["ns/team", "-n=team svc/svc", "-n=team pod/p"].map(|w| {
            let mut args: Vec<&str> = w.split(' ').collect();
            let target = args.pop().unwrap();
            args.extend(["get", target, "-o", "jsonpath={.metadata.resourceVersion}"]);
            api.ok(&args)
        })
    };
    let before = versions(api);
    api.ok(&["apply", "--server-side", "-f", k]);
    assert_eq!(versions(api), before);

    // Someone else takes replicas: the next apply conflicts, naming them.
    api.ok(&["scale", "deploy/web", "--replicas=5"]);
    let e = api.kubectl(&["apply", "--server-side", "-f", f]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert_eq!(e.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert_eq!(get(api, "deploy/web", ".spec.replicas"), "5");
    let out = api.ok(&["apply", "--server-side", "--force-conflicts", "-f", f]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(get(api, "deploy/web", ".spec.replicas"), "2");

    // A label dropped from the file goes from the object.
    std::fs::write(&file, DEPLOY.replace(", tier: front", "")).unwrap();
    api.ok(&["apply", "--server-side", "-f", f]);
    let labels = get(api, "deploy/web", ".metadata.labels");
    assert!(
        !labels.contains("tier") && labels.contains("app"),
        "{labels}"
    );

    // kubectl diff: nothing to show (exit 0), then a change (exit 1) that
    // is not written.
    let d = api.kubectl(&["diff", "--server-side", "-f", f]);
    assert_eq!(d.status.code(), Some(0), "{d:?}");
    // (Client-side diff of an object applied client-side.)
    let settings = api.agent.dir().join("settings.yaml");
    std::fs::write(
        &settings,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: '1'}\n",
    )
    .unwrap();
    let s = settings.to_str().unwrap();
    api.ok(&["apply", "-f", s]);
    let d = api.kubectl(&["diff", "-f", s]);
    assert_eq!(d.status.code(), Some(0), "{d:?}");
    let changed = api.agent.dir().join("changed.yaml");
    std::fs::write(
        &changed,
        DEPLOY.replace("image: nginx", "image: nginx:1.27"),
    )
    .unwrap();
    let c = changed.to_str().unwrap();
    for flags in [&["diff", "-f", c][..], &["diff", "--server-side", "-f", c]] {
        let d = api.kubectl(flags);
        let out = String::from_utf8_lossy(&d.stdout);
        assert_eq!(d.status.code(), Some(1), "{flags:?}: {d:?}");
        assert!(out.contains("+      - image: nginx:1.27"), "{out}");
    }
    assert_eq!(
        get(api, "deploy/web", ".spec.template.spec.containers[0].image"),
        "nginx"
    );

    // A server-side dry run: created and configured as a write would be,
    // and nothing kept.
    let rv = get(api, "deploy/web", ".metadata.resourceVersion");
    let cm = api.agent.dir().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\ndata: {a: '1'}\n",
    )
    .unwrap();
    let out = api.ok(&["apply", "--dry-run=server", "-f", cm.to_str().unwrap()]);
    assert!(
        out.contains("configmap/dry created (server dry run)"),
        "{out}"
    );
    let out = api.ok(&["apply", "--server-side", "--dry-run=server", "-f", c]);
    assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    let gone = api.kubectl(&["get", "cm", "dry"]);
    assert!(!gone.status.success(), "{gone:?}");
    assert_eq!(get(api, "deploy/web", ".metadata.resourceVersion"), rv);
    let out = api.ok(&["delete", "deploy/web", "--dry-run=server"]);
    assert!(out.contains("deleted (server dry run)"), "{out}");
    assert_eq!(get(api, "deploy/web", ".metadata.resourceVersion"), rv);
    // A dry-run Service gets a ClusterIP that nobody keeps.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";
    let sf = api.agent.dir().join("svc.yaml");
    std::fs::write(&sf, svc).unwrap();
    let ip = api.ok(&[
        "create",
        "--dry-run=server",
        "-f",
        sf.to_str().unwrap(),
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    // From the service CIDR, 10.96.0.0/12.
    let octets = ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    assert!(octets[0] == 10 && (96..112).contains(&octets[1]), "{ip}");
    assert!(!api.kubectl(&["get", "svc", "s"]).status.success());

    // An object applied client-side: another manager's apply conflicts
    // with kubectl-client-side-apply; kubectl's own --server-side apply
    // takes the client-side fields over (kubectl patches managedFields
    // first) and applies.
    let csa = api.agent.dir().join("csa.yaml");
    let csa_deploy = DEPLOY.replace("name: web,", "name: csa,");
    std::fs::write(&csa, &csa_deploy).unwrap();
    let cf = csa.to_str().unwrap();
    api.ok(&["apply", "-f", cf]);
    assert_eq!(
        get(api, "deploy/csa", ".metadata.managedFields[*].manager"),
        "kubectl-client-side-apply"
    );
    std::fs::write(&csa, csa_deploy.replace("replicas: 2", "replicas: 3")).unwrap();
    let e = api.kubectl(&["apply", "--server-side", "--field-manager=other", "-f", cf]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    let out = api.ok(&["apply", "--server-side", "-f", cf]);
    assert!(
        out.contains("deployment.apps/csa serverside-applied"),
        "{out}"
    );
    assert_eq!(get(api, "deploy/csa", ".spec.replicas"), "3");
    // kubectl moved the client-side fields to its apply (a JSON patch of
    // managedFields) and applies the annotation as its own manager.
    assert_eq!(
        get(api, "deploy/csa", ".metadata.managedFields[*].manager"),
        "kubectl kubectl-last-applied"
    );

    // Malformed applies: 400/422 naming what is wrong.
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let apply = "application/apply-patch+yaml";
    let body = DEPLOY;
    let (code, out) = raw(api, "PATCH", path, apply, body);
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("fieldManager: Required value"), "{out}");
    let q = format!("{path}?fieldManager=t");
    let (code, out) = raw(api, "PATCH", &q, apply, "{not: [yaml");
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("error decoding YAML"), "{out}");
    let (code, out) = raw(api, "PATCH", &q, apply, &body.replace("apps/v1", "apps/v2"));
    assert_eq!(code, 400, "{out}");
    assert!(
        out.contains("Incorrect version specified in apply patch"),
        "{out}"
    );
    let (code, out) = raw(
        api,
        "PATCH",
        &q,
        apply,
        &body.replace("name: web,", "name: other,"),
    );
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("metadata.name"), "{out}");
    let keyless = body.replace("{name: web, image: nginx", "{image: nginx");
    let (code, out) = raw(api, "PATCH", &q, apply, &keyless);
    assert_eq!(code, 422, "{out}");
    assert!(
        out.contains("spec.template.spec.containers[0].name"),
        "{out}"
    );
    let (code, out) = raw(api, "PATCH", &format!("{q}&dryRun=Bogus"), apply, body);
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("dryRun: Unsupported value"), "{out}");
    let (code, out) = raw(
        api,
        "PATCH",
        &format!("{q}&force=true"),
        "application/merge-patch+json",
        "{}",
    );
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("force: Forbidden"), "{out}");
    // Strict field validation names an unknown field of the configuration.
    let unknown = body.replace("replicas: 2", "replicas: 2\n  bogus: 1");
    let (code, out) = raw(
        api,
        "PATCH",
        &format!("{q}&fieldValidation=Strict"),
        apply,
        &unknown,
    );
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("unknown field \\\"spec.bogus\\\""), "{out}");
    // A resourceVersion in the configuration is a precondition.
    let stale = body.replace(
        "metadata: {name: web,",
        "metadata: {resourceVersion: '1', name: web,",
    );
    let (code, out) = raw(api, "PATCH", &q, apply, &stale);
    assert_eq!(code, 409, "{out}");
    assert!(out.contains("the object has been modified"), "{out}");
}
