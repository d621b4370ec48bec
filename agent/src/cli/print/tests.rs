//! Unit tests for the printers, with objects built from JSON.

use jiff::SignedDuration;
use serde_json::{json, Value};

use super::pod::{pod_summary, PodSummary};
use super::*;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().expect("timestamp")
}

/// RFC 3339 for `secs` seconds before [`now`].
fn ago(secs: i64) -> String {
    now()
        .checked_sub(SignedDuration::from_secs(secs))
        .expect("in range")
        .to_string()
}

fn obj(v: Value) -> Object {
    Object::from_value(v).expect("valid object")
}

fn opts(output: Output) -> PrintOptions {
    PrintOptions {
        output,
        all_namespaces: false,
        now: now(),
    }
}

fn all_ns(output: Output) -> PrintOptions {
    PrintOptions {
        all_namespaces: true,
        ..opts(output)
    }
}

/// A running, ready one-container `app=web` pod in `default` on node-a,
/// created 5 minutes ago.
fn pod_json(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                     "creationTimestamp": ago(300)},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]},
        "status": {
            "phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "",
                                   "ready": true, "restartCount": 0, "state": {"running": {}}}]
        }
    })
}

fn summary(v: Value) -> PodSummary {
    pod_summary(&serde_json::from_value(v).expect("valid pod"))
}

fn reason(v: Value) -> String {
    summary(v).reason
}

/// The cells of the pod's (narrow) table row.
fn pod_row(v: Value) -> Vec<String> {
    match obj(v) {
        Object::Pod(p) => pod_cells(&p, false, now()),
        _ => unreachable!("a pod"),
    }
}

fn service_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(25 * 3600)},
           "spec": spec})
}

fn service_row(spec: Value, wide: bool) -> Vec<String> {
    match obj(service_json("s", spec)) {
        Object::Service(s) => service_cells(&s, wide, now()),
        _ => unreachable!("a service"),
    }
}

#[test]
fn output_parses_kubectl_names_and_lists_them_on_error() {
    assert_eq!("wide".parse(), Ok(Output::Wide));
    assert_eq!("yaml".parse(), Ok(Output::Yaml));
    assert_eq!("json".parse(), Ok(Output::Json));
    assert_eq!("name".parse(), Ok(Output::Name));
    let err = "xml".parse::<Output>().unwrap_err();
    assert!(
        err.contains("\"xml\"") && err.contains("json,name,wide,yaml"),
        "{err}"
    );
}

#[test]
fn no_resources_messages_match_kubectl() {
    assert_eq!(
        no_resources(Some("default")),
        "No resources found in default namespace."
    );
    assert_eq!(no_resources(None), "No resources found");
}

#[test]
fn human_age_follows_apimachinery_boundaries() {
    let cases: &[(i64, &str)] = &[
        (-3, "<invalid>"),
        (-2, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (90, "90s"),
        (119, "119s"),
        (120, "2m"),
        (192, "3m12s"),
        (599, "9m59s"),
        (600, "10m"),
        (45 * 60, "45m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (5 * 3600 + 30 * 60, "5h30m"),
        (8 * 3600 - 1, "7h59m"),
        (8 * 3600, "8h"),
        (20 * 3600, "20h"),
        (48 * 3600 - 1, "47h"),
        (48 * 3600, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (8 * 86400 - 1, "7d23h"),
        (8 * 86400, "8d"),
        (120 * 86400, "120d"),
        (730 * 86400 - 1, "729d"),
        (730 * 86400, "2y"),
        ((3 * 365 + 45) * 86400, "3y45d"),
        (8 * 365 * 86400 - 1, "7y364d"),
        (8 * 365 * 86400, "8y"),
        (9 * 365 * 86400 + 100 * 86400, "9y"),
    ];
    for &(secs, want) in cases {
        let since = now().checked_sub(SignedDuration::from_secs(secs)).unwrap();
        assert_eq!(human_age(since, now()), want, "{secs}s");
    }
    // Go truncates toward zero: 1.5s in the future is still "now".
    let soon = now()
        .checked_add(SignedDuration::from_millis(1500))
        .unwrap();
    assert_eq!(human_age(soon, now()), "0s");
}

#[test]
fn table_pads_like_kubectls_tabwriter() {
    let rows = vec![
        vec!["a".to_string(), "b".to_string(), "c".to_string()],
        vec!["longer-name".to_string(), String::new(), String::new()],
    ];
    assert_eq!(
        table(vec!["X", "Y", "Z"], false, rows),
        concat!(
            "X             Y     Z\n", // 11 + 3, then the minimum width of 6
            "a             b     c\n",
            "longer-name\n", // no trailing spaces
        )
    );
    assert_eq!(table(vec!["NAME"], false, vec![]), "");
}

#[test]
fn pods_table() {
    let mut crashing = pod_json("crash", "10.244.0.6");
    crashing["status"]["containerStatuses"][0] = json!({
        "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 5,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(150)}}
    });
    let items = [obj(pod_json("web-1", "10.244.0.5")), obj(crashing)];
    assert_eq!(
        objects(Kind::Pod, &items, false, &opts(Output::Table)),
        concat!(
            "NAME    READY   STATUS             RESTARTS        AGE\n",
            "web-1   1/1     Running            0               5m\n",
            "crash   0/1     CrashLoopBackOff   5 (2m30s ago)   5m\n",
        )
    );
}

#[test]
fn pods_wide_adds_ip_node_and_gates() {
    let mut pending = pod_json("pending", "");
    pending["spec"].as_object_mut().unwrap().remove("nodeName");
    pending["status"] = json!({"phase": "Pending"});
    let items = [obj(pod_json("web-1", "10.244.0.5")), obj(pending)];
    assert_eq!(
        objects(Kind::Pod, &items, false, &opts(Output::Wide)),
        concat!(
            "NAME      READY   STATUS    RESTARTS   AGE   IP           NODE     NOMINATED NODE   READINESS GATES\n",
            "web-1     1/1     Running   0          5m    10.244.0.5   node-a   <none>           <none>\n",
            "pending   0/1     Pending   0          5m    <none>       <none>   <none>           <none>\n",
        )
    );
}

#[test]
fn readiness_gates_count_true_conditions() {
    let mut p = pod_json("web", "10.244.0.5");
    p["spec"]["readinessGates"] = json!([{"conditionType": "a"}, {"conditionType": "b"}]);
    p["status"]["conditions"] =
        json!([{"type": "a", "status": "True"}, {"type": "b", "status": "False"}]);
    let Object::Pod(pod) = obj(p) else {
        unreachable!()
    };
    assert_eq!(pod_cells(&pod, true, now())[8], "1/2");
}

#[test]
fn all_namespaces_adds_a_namespace_column_for_namespaced_kinds_only() {
    let mut other = pod_json("db", "10.244.0.9");
    other["metadata"]["namespace"] = json!("kube-system");
    let items = [obj(pod_json("web-1", "10.244.0.5")), obj(other)];
    assert_eq!(
        objects(Kind::Pod, &items, false, &all_ns(Output::Table)),
        concat!(
            "NAMESPACE     NAME    READY   STATUS    RESTARTS   AGE\n",
            "default       web-1   1/1     Running   0          5m\n",
            "kube-system   db      1/1     Running   0          5m\n",
        )
    );
    let node = obj(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));
    let out = objects(Kind::Node, &[node], false, &all_ns(Output::Table));
    assert!(out.starts_with("NAME   STATUS"), "{out}");
}

#[test]
fn pod_status_crash_loop_counts_restarts_since_last_termination() {
    let mut p = pod_json("web", "10.244.0.5");
    p["status"]["containerStatuses"][0] = json!({
        "name": "c", "image": "", "imageID": "", "ready": false, "restartCount": 5,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(300)}}
    });
    let row = pod_row(p);
    assert_eq!(row[1..4], ["0/1", "CrashLoopBackOff", "5 (5m ago)"]);
}

#[test]
fn pod_status_restarts_without_a_known_finish_time_are_a_bare_count() {
    let mut p = pod_json("web", "10.244.0.5");
    p["status"]["containerStatuses"][0]["restartCount"] = json!(2);
    assert_eq!(pod_row(p)[3], "2");
}

#[test]
fn pod_status_completed_error_exit_code_and_signal() {
    let terminated = |t: Value, phase: &str| {
        let mut p = pod_json("job", "10.244.0.5");
        p["status"]["phase"] = json!(phase);
        p["status"]["containerStatuses"][0]["ready"] = json!(false);
        p["status"]["containerStatuses"][0]["state"] = json!({"terminated": t});
        p
    };
    let done = summary(terminated(
        json!({"exitCode": 0, "reason": "Completed"}),
        "Succeeded",
    ));
    assert_eq!(
        (done.ready, done.total, done.reason.as_str()),
        (0, 1, "Completed")
    );
    assert_eq!(
        reason(terminated(
            json!({"exitCode": 1, "reason": "Error"}),
            "Failed"
        )),
        "Error"
    );
    assert_eq!(
        reason(terminated(json!({"exitCode": 137}), "Failed")),
        "ExitCode:137"
    );
    assert_eq!(
        reason(terminated(json!({"exitCode": 137, "signal": 9}), "Failed")),
        "Signal:9"
    );
}

#[test]
fn pod_status_terminating_unless_terminal_or_node_lost() {
    let mut p = pod_json("web", "10.244.0.5");
    p["metadata"]["deletionTimestamp"] = json!(ago(10));
    assert_eq!(reason(p.clone()), "Terminating");

    let mut done = p.clone();
    done["status"]["phase"] = json!("Succeeded");
    done["status"]["containerStatuses"][0]["state"] =
        json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
    assert_eq!(reason(done), "Completed");

    let mut lost = p;
    lost["status"]["reason"] = json!("NodeLost");
    assert_eq!(reason(lost), "Unknown");
}

#[test]
fn pod_status_pending_and_waiting_reasons() {
    let mut p = pod_json("web", "");
    p["status"] = json!({"phase": "Pending"});
    assert_eq!(reason(p.clone()), "Pending");
    for waiting in ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"] {
        p["status"]["containerStatuses"] = json!([{"name": "c", "image": "", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": waiting}}}]);
        assert_eq!(reason(p.clone()), waiting);
    }
    let mut evicted = pod_json("web", "");
    evicted["status"] = json!({"phase": "Failed", "reason": "Evicted"});
    assert_eq!(reason(evicted), "Evicted");
    let mut gated = pod_json("web", "");
    gated["status"] = json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]});
    assert_eq!(reason(gated), "SchedulingGated");
}

#[test]
fn pod_status_first_container_with_a_reason_wins() {
    let mut p = pod_json("web", "10.244.0.5");
    p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}]);
    p["status"]["containerStatuses"] = json!([
        {"name": "a", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "ImagePullBackOff"}}},
        {"name": "b", "image": "", "imageID": "", "ready": true, "restartCount": 0,
         "state": {"running": {}}}
    ]);
    let s = summary(p);
    assert_eq!(
        (s.ready, s.total, s.reason.as_str()),
        (1, 2, "ImagePullBackOff")
    );
}

#[test]
fn pod_status_completed_container_beside_a_running_one() {
    let mut p = pod_json("web", "10.244.0.5");
    p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}]);
    p["status"]["containerStatuses"] = json!([
        {"name": "a", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "b", "image": "", "imageID": "", "ready": true, "restartCount": 0,
         "state": {"running": {}}}
    ]);
    assert_eq!(reason(p.clone()), "Running");
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    assert_eq!(reason(p), "NotReady");
}

#[test]
fn pod_status_init_containers() {
    let mut p = pod_json("web", "");
    p["spec"]["initContainers"] = json!([{"name": "setup"}, {"name": "migrate"}]);
    p["status"] = json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "setup", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "migrate", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "PodInitializing"}}}
    ]});
    assert_eq!(reason(p.clone()), "Init:1/2");
    p["status"]["initContainerStatuses"][1]["state"] =
        json!({"waiting": {"reason": "CrashLoopBackOff"}});
    p["status"]["initContainerStatuses"][1]["restartCount"] = json!(3);
    let s = summary(p.clone());
    assert_eq!(
        (s.reason.as_str(), s.restarts),
        ("Init:CrashLoopBackOff", 3)
    );
    p["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 2}});
    assert_eq!(reason(p), "Init:ExitCode:2");
}

#[test]
fn sidecar_init_containers_count_toward_ready() {
    let mut p = pod_json("web", "10.244.0.5");
    p["spec"]["initContainers"] = json!([{"name": "proxy", "restartPolicy": "Always"}]);
    p["status"]["initContainerStatuses"] = json!([
        {"name": "proxy", "image": "", "imageID": "", "ready": true, "restartCount": 1,
         "started": true, "state": {"running": {}}}
    ]);
    let s = summary(p);
    assert_eq!(
        (s.ready, s.total, s.reason.as_str(), s.restarts),
        (2, 2, "Running", 1)
    );
}

#[test]
fn bare_objects_print_without_panicking() {
    let now = now();
    let bare = |kind: &str, api: &str| {
        obj(json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}))
    };
    for (kind, api) in [
        ("Pod", "v1"),
        ("Service", "v1"),
        ("Node", "v1"),
        ("Namespace", "v1"),
        ("ConfigMap", "v1"),
        ("Secret", "v1"),
        ("Lease", "coordination.k8s.io/v1"),
    ] {
        let o = bare(kind, api);
        for wide in [false, true] {
            let row = cells(&o, wide, now);
            assert_eq!(row.len(), headers(o.kind(), wide).len(), "{kind}");
            assert_eq!(row[0], "x");
            assert!(row.contains(&"<unknown>".to_string()), "{kind}: {row:?}");
        }
    }
    assert_eq!(
        pod_row(json!({"apiVersion": "v1", "kind": "Pod"})),
        ["", "0/0", "", "0", "<unknown>"]
    );
}

#[test]
fn services_table_and_wide() {
    let items = [
        obj(service_json(
            "web",
            json!({"clusterIP": "10.96.0.10", "selector": {"tier": "fe", "app": "web"},
                   "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )),
        obj(service_json(
            "dns",
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.11"], "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                {"name": "tcp", "port": 53, "nodePort": 30054}]}),
        )),
    ];
    assert_eq!(
        objects(Kind::Service, &items, false, &opts(Output::Table)),
        concat!(
            "NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)                     AGE\n",
            "web    ClusterIP   10.96.0.10   <none>        80/TCP                      25h\n",
            "dns    NodePort    10.96.0.11   <none>        53:30053/UDP,53:30054/TCP   25h\n",
        )
    );
    let wide = objects(Kind::Service, &items, false, &opts(Output::Wide));
    let lines: Vec<&str> = wide.lines().collect();
    assert!(lines[0].ends_with("   AGE   SELECTOR"), "{wide}");
    assert!(lines[1].ends_with("   25h   app=web,tier=fe"), "{wide}");
    assert!(lines[2].ends_with("   25h   <none>"), "{wide}");
}

#[test]
fn service_ports_format_like_kubectl() {
    let ports: Vec<ServicePort> = serde_json::from_value(json!([
        {"port": 80},
        {"port": 443, "nodePort": 30443},
        {"port": 53, "protocol": "UDP"},
        {"port": 9, "protocol": "SCTP", "nodePort": 0}
    ]))
    .unwrap();
    assert_eq!(format_ports(&ports), "80/TCP,443:30443/TCP,53/UDP,9/SCTP");
    assert_eq!(format_ports(&[]), "");
    assert_eq!(
        service_row(json!({"clusterIP": "None"}), false)[2..5],
        ["None", "<none>", "<none>"]
    );
}

#[test]
fn service_external_ips() {
    assert_eq!(
        service_row(json!({"externalIPs": ["192.0.2.1", "192.0.2.2"]}), false)[3],
        "192.0.2.1,192.0.2.2"
    );
    assert_eq!(
        service_row(json!({"type": "LoadBalancer"}), false)[3],
        "<pending>"
    );
    let mut lb = service_json(
        "lb",
        json!({"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.20"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.20"}]}});
    let Object::Service(svc) = obj(lb) else {
        unreachable!()
    };
    assert_eq!(
        service_external_ip(&svc, true),
        "203.0.113.20,lb.example.com,192.0.2.9"
    );
    assert_eq!(
        service_external_ip(&svc, false),
        "203.0.113.20,...,192.0.2.9"
    );
    let ext = service_row(
        json!({"type": "ExternalName", "externalName": "db.example.com"}),
        false,
    );
    assert_eq!(ext[1..4], ["ExternalName", "<none>", "db.example.com"]);
    assert_eq!(service_row(json!({"type": "Weird"}), false)[3], "<unknown>");
}

fn node_json(name: &str, ready: Option<&str>, unschedulable: bool) -> Value {
    let conditions: Vec<Value> = ready
        .map(|s| json!({"type": "Ready", "status": s}))
        .into_iter()
        .collect();
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "creationTimestamp": ago(3 * 86400 + 4 * 3600),
                        "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "true"}},
           "spec": {"podCIDR": "10.244.1.0/24", "unschedulable": unschedulable},
           "status": {"conditions": conditions,
                      "addresses": [{"type": "Hostname", "address": name},
                                    {"type": "InternalIP", "address": "192.168.1.10"}],
                      "nodeInfo": {"osImage": "Debian GNU/Linux 12 (bookworm)",
                                   "kernelVersion": "6.1.0-18-amd64",
                                   "kubeletVersion": "v1.33.0-knode.0.1.0",
                                   "containerRuntimeVersion": "containerd://1.7.13"}}})
}

#[test]
fn nodes_table_and_wide() {
    let bare = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n3"}});
    let items = [
        obj(node_json("n1", Some("True"), false)),
        obj(node_json("n2", Some("False"), true)),
        obj(bare),
    ];
    assert_eq!(
        objects(Kind::Node, &items, false, &opts(Output::Table)),
        concat!(
            "NAME   STATUS                        ROLES                  AGE         VERSION\n",
            "n1     Ready                         control-plane,worker   3d4h        v1.33.0-knode.0.1.0\n",
            "n2     NotReady,SchedulingDisabled   control-plane,worker   3d4h        v1.33.0-knode.0.1.0\n",
            "n3     Unknown                       <none>                 <unknown>\n",
        )
    );
    let wide = objects(Kind::Node, &items, false, &opts(Output::Wide));
    let lines: Vec<&str> = wide.lines().collect();
    assert!(
        lines[0].ends_with(
            "INTERNAL-IP    EXTERNAL-IP   OS-IMAGE                         KERNEL-VERSION   CONTAINER-RUNTIME"
        ),
        "{wide}"
    );
    assert!(
        lines[1].ends_with(
            "192.168.1.10   <none>        Debian GNU/Linux 12 (bookworm)   6.1.0-18-amd64   containerd://1.7.13"
        ),
        "{wide}"
    );
    assert!(
        lines[3].ends_with(
            "<none>         <none>        <unknown>                        <unknown>        <unknown>"
        ),
        "{wide}"
    );
}

#[test]
fn namespaces_configmaps_secrets_leases_and_subnet_leases() {
    let t = |kind: Kind, v: Value| objects(kind, &[obj(v)], false, &opts(Output::Table));
    assert_eq!(
        t(
            Kind::Namespace,
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "creationTimestamp": ago(120 * 86400)}})
        ),
        "NAME      STATUS   AGE\ndefault   Active   120d\n"
    );
    assert_eq!(
        t(
            Kind::Namespace,
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "old"}, "status": {"phase": "Terminating"}})
        ),
        "NAME   STATUS        AGE\nold    Terminating   <unknown>\n"
    );
    assert_eq!(
        t(
            Kind::ConfigMap,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "creationTimestamp": ago(90)},
            "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AAE="}})
        ),
        "NAME   DATA   AGE\ncfg    3      90s\n"
    );
    assert_eq!(
        t(
            Kind::Secret,
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "tls", "creationTimestamp": ago(90)},
            "type": "kubernetes.io/tls", "data": {"tls.crt": "YQ==", "tls.key": "Yg=="}})
        ),
        "NAME   TYPE                DATA   AGE\ntls    kubernetes.io/tls   2      90s\n"
    );
    assert_eq!(
        t(
            Kind::Secret,
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pw", "creationTimestamp": ago(90)},
            "data": {"user": "YQ=="}, "stringData": {"user": "a", "pass": "b"}})
        ),
        "NAME   TYPE     DATA   AGE\npw     Opaque   2      90s\n"
    );
    assert_eq!(
        t(
            Kind::Lease,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "n1", "namespace": "kube-node-lease", "creationTimestamp": ago(90)},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})
        ),
        "NAME   HOLDER   AGE\nn1     n1       90s\n"
    );
    assert_eq!(
        t(
            Kind::Lease,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "free", "creationTimestamp": ago(90)}})
        ),
        "NAME   HOLDER   AGE\nfree            90s\n"
    );
    assert_eq!(
        t(Kind::SubnetLease, subnet_lease_json()),
        concat!(
            "NAME            SUBNET          PUBLIC-IP   BACKEND   AGE\n",
            "10.244.3.0-24   10.244.3.0/24   192.0.2.7   vxlan     5m\n",
        )
    );
}

#[test]
fn wide_subnet_leases_show_the_ipv6_half() {
    let mut dual = subnet_lease_json();
    dual["spec"]["IPv6Subnet"] = json!("fd00:10:244:3::/64");
    dual["spec"]["PublicIPv6"] = json!("fd00:198:18::b");
    let items = [obj(dual), obj(subnet_lease_json())];
    let wide = objects(Kind::SubnetLease, &items, false, &opts(Output::Wide));
    let lines: Vec<&str> = wide.lines().collect();
    assert!(
        lines[0].ends_with("AGE   IPV6-SUBNET          PUBLIC-IPV6"),
        "{wide}"
    );
    assert!(
        lines[1].ends_with("fd00:10:244:3::/64   fd00:198:18::b"),
        "{wide}"
    );
    assert!(lines[2].ends_with("<none>               <none>"), "{wide}");
}

fn subnet_lease_json() -> Value {
    json!({"apiVersion": "knode.io/v1", "kind": "SubnetLease",
           "metadata": {"name": "10.244.3.0-24", "creationTimestamp": ago(300)},
           "spec": {"subnet": "10.244.3.0/24", "PublicIP": "192.0.2.7", "BackendType": "vxlan"}})
}

#[test]
fn tables_of_nothing_are_empty_and_other_kinds_are_skipped() {
    assert_eq!(objects(Kind::Pod, &[], false, &opts(Output::Table)), "");
    assert_eq!(objects(Kind::Pod, &[], false, &opts(Output::Name)), "");
    let node = obj(node_json("n1", Some("True"), false));
    let out = objects(
        Kind::Pod,
        &[obj(pod_json("web", "10.244.0.5")), node],
        false,
        &opts(Output::Table),
    );
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn name_output_uses_lower_case_kind_and_group() {
    let pods = [
        obj(pod_json("web-1", "10.244.0.5")),
        obj(pod_json("web-2", "10.244.0.6")),
    ];
    assert_eq!(
        objects(Kind::Pod, &pods, false, &all_ns(Output::Name)),
        "pod/web-1\npod/web-2\n"
    );
    let lease = obj(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "n1"}}),
    );
    assert_eq!(
        objects(Kind::Lease, &[lease], false, &opts(Output::Name)),
        "lease.coordination.k8s.io/n1\n"
    );
    assert_eq!(
        objects(
            Kind::SubnetLease,
            &[obj(subnet_lease_json())],
            false,
            &opts(Output::Name)
        ),
        "subnetlease.knode.io/10.244.3.0-24\n"
    );
    let names: Vec<String> = [
        Kind::Service,
        Kind::Node,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Namespace,
    ]
    .into_iter()
    .map(crate::cli::resource)
    .collect();
    assert_eq!(
        names,
        ["service", "node", "configmap", "secret", "namespace"]
    );
}

#[test]
fn json_lists_and_single_objects() {
    let pods = [
        obj(pod_json("web-1", "10.244.0.5")),
        obj(pod_json("web-2", "10.244.0.6")),
    ];
    let list = objects(Kind::Pod, &pods, false, &opts(Output::Json));
    assert!(
        list.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        {\n"),
        "{list}"
    );
    assert!(list.ends_with("}\n"), "{list}");
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["metadata"], json!({"resourceVersion": ""}));
    assert_eq!(v["items"][1]["metadata"]["name"], "web-2");
    assert_eq!(v["items"][0]["kind"], "Pod");

    // Asked for by name: the object itself.
    let single = objects(Kind::Pod, &pods[..1], true, &opts(Output::Json));
    let v: Value = serde_json::from_str(&single).unwrap();
    assert_eq!(v, pods[0].to_value());

    // Not by name: a List even of one, and of none.
    let one: Value =
        serde_json::from_str(&objects(Kind::Pod, &pods[..1], false, &opts(Output::Json))).unwrap();
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));
    let none: Value =
        serde_json::from_str(&objects(Kind::Pod, &[], false, &opts(Output::Json))).unwrap();
    assert_eq!(none["items"], json!([]));
}

#[test]
fn yaml_lists_and_single_objects() {
    let pods = [
        obj(pod_json("web-1", "10.244.0.5")),
        obj(pod_json("web-2", "10.244.0.6")),
    ];
    let single = objects(Kind::Pod, &pods[..1], true, &opts(Output::Yaml));
    assert!(
        single.starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n"),
        "{single}"
    );
    let back: Value = serde_yaml::from_str(&single).unwrap();
    assert_eq!(back, pods[0].to_value());

    let list = objects(Kind::Pod, &pods, false, &opts(Output::Yaml));
    assert!(
        list.starts_with("apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n"),
        "{list}"
    );
    assert!(
        list.contains("kind: List\nmetadata:\n  resourceVersion: ''\n"),
        "{list}"
    );
    let back: Value = serde_yaml::from_str(&list).unwrap();
    assert_eq!(back["items"][1], pods[1].to_value());
}

fn web_service(ports: Value) -> Object {
    let mut v = service_json(
        "web",
        json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": ports}),
    );
    v["metadata"]["creationTimestamp"] = json!(ago(600));
    obj(v)
}

#[test]
fn endpoints_table_truncates_after_three_and_shows_none() {
    let pods = [
        obj(pod_json("web-1", "10.244.0.5")),
        obj(pod_json("web-2", "10.244.0.6")),
        obj(node_json("ignored", None, false)),
    ];
    let two_ports = web_service(json!([
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "metrics", "port": 9100}
    ]));
    let mut db = service_json(
        "db",
        json!({"selector": {"app": "db"}, "ports": [{"port": 5432}]}),
    );
    db["metadata"]["creationTimestamp"] = json!(ago(600));
    let mut ext = service_json("ext", json!({"ports": [{"port": 443}]}));
    ext["metadata"]["creationTimestamp"] = json!(ago(600));
    let services = [two_ports, obj(db), obj(ext)];
    assert_eq!(
        endpoints(&services, &pods, false, &opts(Output::Table)),
        concat!(
            "NAME   ENDPOINTS                                                     AGE\n",
            "web    10.244.0.5:8080,10.244.0.6:8080,10.244.0.5:9100 + 1 more...   10m\n",
            "db     <none>                                                        10m\n",
            "ext    <none>                                                        10m\n",
        )
    );
    let out = endpoints(&services[..1], &pods[..1], false, &all_ns(Output::Table));
    assert_eq!(
        out,
        concat!(
            "NAMESPACE   NAME   ENDPOINTS                         AGE\n",
            "default     web    10.244.0.5:8080,10.244.0.5:9100   10m\n",
        )
    );
}

#[test]
fn endpoints_column_edge_cases() {
    let three = [
        obj(pod_json("a", "10.244.0.1")),
        obj(pod_json("b", "10.244.0.2")),
        obj(pod_json("c", "fd00::3")),
    ];
    let svc = [web_service(json!([{"port": 80}]))];
    let out = endpoints(&svc, &three, false, &opts(Output::Table));
    assert!(
        out.contains("   10.244.0.1:80,10.244.0.2:80,[fd00::3]:80   "),
        "{out}"
    );
    let portless = [web_service(json!([]))];
    let out = endpoints(&portless, &three[..1], false, &opts(Output::Table));
    assert!(out.contains("   10.244.0.1   "), "{out}");
    assert_eq!(format_endpoints(&[]), "<none>");
    assert_eq!(
        endpoints(&svc, &three, false, &opts(Output::Name)),
        "endpoints/web\n"
    );
}

#[test]
fn endpoints_json_has_the_v1_endpoints_shape() {
    let pods = [obj(pod_json("web-1", "10.244.0.5"))];
    let services = [
        web_service(json!([{"name": "http", "port": 80, "targetPort": 8080}])),
        obj(service_json("ext", json!({"ports": [{"port": 443}]}))),
    ];
    let single: Value =
        serde_json::from_str(&endpoints(&services[..1], &pods, true, &opts(Output::Json))).unwrap();
    assert_eq!(
        single,
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.244.0.5", "nodeName": "node-a",
                               "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1"}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            }]
        })
    );
    let list: Value =
        serde_yaml::from_str(&endpoints(&services, &pods, false, &opts(Output::Yaml))).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0], single);
    assert_eq!(
        list["items"][1],
        json!({"apiVersion": "v1", "kind": "Endpoints",
               "metadata": {"name": "ext", "namespace": "default"}})
    );
}

fn table_of(kind: Kind, v: Value, output: Output) -> String {
    objects(kind, &[obj(v)], false, &opts(output))
}

#[test]
fn workload_tables_have_kubectls_columns() {
    let template = json!({"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "httpd", "image": "busybox:1"}]}});
    let meta = json!({"name": "web", "namespace": "default", "creationTimestamp": ago(300)});
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
    assert_eq!(
        table_of(Kind::Deployment, deploy.clone(), Output::Table),
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    2/3     3            2           5m\n"
    );
    assert_eq!(
        table_of(Kind::Deployment, deploy, Output::Wide),
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES      SELECTOR\n\
         web    2/3     3            2           5m    httpd        busybox:1   app=web\n"
    );
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta,
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        "status": {"replicas": 3, "readyReplicas": 1}});
    assert_eq!(
        table_of(Kind::ReplicaSet, rs, Output::Table),
        "NAME   DESIRED   CURRENT   READY   AGE\nweb    3         3         1       5m\n"
    );
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta,
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
        "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1,
                   "numberMisscheduled": 0, "updatedNumberScheduled": 2, "numberAvailable": 1}});
    assert_eq!(
        table_of(Kind::DaemonSet, ds, Output::Table),
        "NAME   DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE\n\
         web    2         2         1       2            1           <none>          5m\n"
    );
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        "status": {"replicas": 2, "readyReplicas": 2}});
    assert_eq!(
        table_of(Kind::StatefulSet, sts, Output::Table),
        "NAME   READY   AGE\nweb    2/2     5m\n"
    );
}

#[test]
fn job_and_cron_job_tables() {
    let meta = json!({"name": "pi", "namespace": "default", "creationTimestamp": ago(300)});
    let pod = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "busybox"}]}});
    let job = |spec: Value, status: Value| {
        let mut s = spec;
        s["template"] = pod.clone();
        table_of(
            Kind::Job,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": s, "status": status}),
            Output::Table,
        )
    };
    assert_eq!(
        job(
            json!({"completions": 5, "parallelism": 2}),
            json!({"succeeded": 5, "startTime": ago(200), "completionTime": ago(110),
                   "conditions": [{"type": "Complete", "status": "True"}]})
        ),
        "NAME   STATUS     COMPLETIONS   DURATION   AGE\npi     Complete   5/5           90s        5m\n"
    );
    assert_eq!(
        job(json!({"parallelism": 3}), json!({"startTime": ago(30)})),
        "NAME   STATUS    COMPLETIONS   DURATION   AGE\npi     Running   0/1 of 3      30s        5m\n"
    );
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
        "spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": pod}}},
        "status": {"lastScheduleTime": ago(60)}});
    assert_eq!(
        table_of(Kind::CronJob, cron, Output::Table),
        "NAME   SCHEDULE      TIMEZONE   SUSPEND   ACTIVE   LAST SCHEDULE   AGE\n\
         pi     */5 * * * *   <none>     False     0        60s             5m\n"
    );
}

#[test]
fn network_tables() {
    let meta = json!({"name": "web-abc", "namespace": "default", "creationTimestamp": ago(300)});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.1.6"]},
                      {"addresses": ["10.244.2.7"]}, {"addresses": ["10.244.2.8"]}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    assert_eq!(
        table_of(Kind::EndpointSlice, slice, Output::Table),
        "NAME      ADDRESSTYPE   PORTS   ENDPOINTS                                      AGE\n\
         web-abc   IPv4          80      10.244.1.5,10.244.1.6,10.244.2.7 + 1 more...   5m\n"
    );
    let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}}});
    assert_eq!(
        table_of(Kind::NetworkPolicy, np, Output::Table),
        "NAME      POD-SELECTOR   AGE\nweb-abc   app=db         5m\n"
    );
    let deny_all = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
        "spec": {"podSelector": {}}});
    assert!(table_of(Kind::NetworkPolicy, deny_all, Output::Table).contains("<none>"));
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
        "spec": {"minAvailable": 2}, "status": {"currentHealthy": 3, "desiredHealthy": 2,
        "disruptionsAllowed": 1, "expectedPods": 3}});
    assert_eq!(
        table_of(Kind::PodDisruptionBudget, pdb, Output::Table),
        "NAME      MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS   AGE\n\
         web-abc   2               N/A               1                     5m\n"
    );
    let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": meta,
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default"},
        "type": "Normal", "reason": "Started", "message": "Started container httpd",
        "lastTimestamp": ago(42)});
    assert_eq!(
        table_of(Kind::Event, ev, Output::Table),
        "LAST SEEN   TYPE     REASON    OBJECT      MESSAGE\n\
         42s         Normal   Started   pod/web-0   Started container httpd\n"
    );
}

#[test]
fn names_of_grouped_kinds() {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
    assert_eq!(
        table_of(Kind::Deployment, d, Output::Name),
        "deployment.apps/web\n"
    );
}
