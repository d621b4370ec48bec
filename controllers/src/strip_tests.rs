//! The pod informer's transform ([`crate::pods::strip_pod`]) keeps
//! everything a decision reads: every controller's plan and the
//! scheduler's choice are the same for stripped pods as for whole ones,
//! and the transform does drop the bulk.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::pods::strip_pod;
use crate::scheduler::plan::{self as sched, Candidate, Usage};

const UID: &str = "web-uid";

fn owner(kind: &str, api: &str, spec: Value) -> Value {
    json!({"apiVersion": api, "kind": kind,
           "metadata": {"name": "web", "namespace": "default", "uid": UID, "generation": 2},
           "spec": spec})
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "busybox"}]}})
}

/// A pod with every field the controllers read and much they do not.
fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, extra: Value) -> Pod {
    let mut v = json!({
        "metadata": {
            "name": name, "namespace": "default", "uid": format!("{name}-uid"),
            "resourceVersion": "42",
            "creationTimestamp": "2026-01-01T00:00:10Z",
            "labels": {"app": "web", "pod-template-hash": "h1", "controller-revision-hash": "web-r1",
                       "statefulset.kubernetes.io/pod-name": name},
            "annotations": {"note": "x".repeat(200)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                 "uid": UID, "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {
            "schedulerName": "default-scheduler",
            "nodeSelector": {"disk": "ssd"},
            "hostname": name, "subdomain": "web",
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]}]}}]}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}],
            "overhead": {"cpu": "10m"},
            "containers": [{
                "name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "sleep 1d"],
                "env": [{"name": "A", "value": "b".repeat(100)}],
                "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"containerPort": 9000, "hostPort": 9000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                "volumeMounts": [{"name": "v", "mountPath": "/data"}],
            }],
            "initContainers": [{"name": "side", "image": "proxy", "restartPolicy": "Always",
                                "resources": {"limits": {"cpu": "50m"}},
                                "ports": [{"name": "admin", "containerPort": 15000}]}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "status": {
            "phase": phase, "hostIP": "192.0.2.1", "podIP": "10.244.0.5",
            "podIPs": [{"ip": "10.244.0.5"}], "qosClass": "Burstable",
            "startTime": "2026-01-01T00:00:11Z",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2026-01-01T00:00:20Z"}],
            "containerStatuses": [{"name": "c", "image": "busybox:1.36", "imageID": "sha256:abc",
                                   "ready": ready, "restartCount": 3,
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:12Z"}}}],
        },
    });
    if let Some(n) = node {
        v["spec"]["nodeName"] = json!(n);
    }
    merge(&mut v, extra);
    serde_json::from_value(v).expect("pod")
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn stripped(p: &Pod) -> Pod {
    let mut o = controlplane::Object::from(p.clone());
    strip_pod(&mut o);
    match o {
        controlplane::Object::Pod(p) => *p,
        _ => unreachable!(),
    }
}

fn pods() -> Vec<Pod> {
    vec![
        pod("web-0", Some("n1"), "Running", true, json!({})),
        pod("web-1", Some("n2"), "Running", false, json!({})),
        pod("web-2", None, "Pending", false, json!({})),
        pod("web-3", Some("n1"), "Failed", false, json!({})),
        pod(
            "web-4",
            Some("n2"),
            "Running",
            true,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:01:00Z",
                                "finalizers": ["orphan"]}}),
        ),
        pod("web-5", Some("n1"), "Succeeded", false, json!({})),
        pod(
            "orphan",
            Some("n1"),
            "Running",
            true,
            json!({"metadata": {"ownerReferences": null}}),
        ),
    ]
}

fn node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"disk": "ssd", "zone": zone}},
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                             "timeAdded": "2026-01-01T00:00:30Z"}]},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("node")
}

fn now() -> Timestamp {
    Timestamp::from_second(1_767_225_700).unwrap()
}

/// Runs `f` on the whole pods and on the stripped ones; they must agree.
fn same<T: std::fmt::Debug>(what: &str, f: impl Fn(&[Pod]) -> T) {
    let whole = pods();
    let thin: Vec<Pod> = whole.iter().map(stripped).collect();
    let (a, b) = (format!("{:?}", f(&whole)), format!("{:?}", f(&thin)));
    assert_eq!(a, b, "{what} differs for stripped pods");
}

#[test]
fn every_controller_decides_the_same_on_stripped_pods() {
    let t = now();
    let rs: ReplicaSet = serde_json::from_value(owner(
        "ReplicaSet",
        "apps/v1",
        json!({"replicas": 3, "minReadySeconds": 5, "selector": {"matchLabels": {"app": "web"}},
               "template": template()}),
    ))
    .unwrap();
    same("replicaset", |p| crate::replicaset::plan(&rs, p, t, true));
    let d: Deployment = serde_json::from_value(owner(
        "Deployment",
        "apps/v1",
        json!({"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template()}),
    ))
    .unwrap();
    same("deployment", |p| {
        crate::deployment::plan(&d, std::slice::from_ref(&rs), p, t)
    });
    let sts: StatefulSet = serde_json::from_value(owner(
        "StatefulSet",
        "apps/v1",
        json!({"replicas": 4, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
               "template": template()}),
    ))
    .unwrap();
    same("statefulset", |p| crate::statefulset::plan(&sts, p, t));
    let ds: DaemonSet = serde_json::from_value(owner(
        "DaemonSet",
        "apps/v1",
        json!({"selector": {"matchLabels": {"app": "web"}}, "template": template()}),
    ))
    .unwrap();
    let nodes = [node("n1", "a"), node("n2", "b"), node("n3", "a")];
    same("daemonset", |p| crate::daemonset::plan(&ds, &nodes, p, t));
    let job: Job = serde_json::from_value(owner(
        "Job",
        "batch/v1",
        json!({"completions": 5, "parallelism": 2, "backoffLimit": 4,
               "selector": {"matchLabels": {"app": "web"}}, "template": template()}),
    ))
    .unwrap();
    same("job", |p| crate::job::plan(&job, p, t));
    same("nodelifecycle", |p| {
        crate::nodelifecycle::plan(&nodes[0], true, p, t)
    });
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "admin", "port": 15000, "targetPort": "admin"}]}
    }))
    .unwrap();
    same("endpointslice", |p| {
        crate::endpointslice::plan::desired(&svc, p.iter(), |_| Default::default())
    });
    same("pod helpers", |p| {
        p.iter()
            .map(|p| {
                (
                    crate::pods::is_active(p),
                    crate::pods::ready_since(p),
                    crate::pods::is_available(p, 5, t),
                    crate::pods::controller_of(&p.metadata).cloned(),
                    crate::pods::is_terminating(&p.metadata),
                    crate::scheduler::pending(p),
                )
            })
            .collect::<Vec<_>>()
    });
}

#[test]
fn the_scheduler_decides_the_same_on_stripped_pods() {
    let nodes = [node("n1", "a"), node("n2", "b"), node("n3", "a")];
    let usage = Usage::default();
    same("scheduler", |pods| {
        pods.iter()
            .map(|p| {
                let cands: Vec<Candidate> = nodes
                    .iter()
                    .map(|n| Candidate {
                        node: n,
                        lost: false,
                        usage: &usage,
                        spread: vec![Some(1)],
                    })
                    .collect();
                (
                    sched::requests(p),
                    sched::spread_constraints(p),
                    sched::owner_uid(p).map(str::to_string),
                    sched::schedule(p, &cands, |_| 0),
                )
            })
            .collect::<Vec<_>>()
    });
}

#[test]
fn stripping_drops_the_bulk_and_keeps_the_identity() {
    let whole = pod("web-0", Some("n1"), "Running", true, json!({}));
    let thin = stripped(&whole);
    // This pod carries every field a decision reads, so much stays; the
    // bench measures a Deployment's pods.
    let size = |p: &Pod| serde_json::to_string(p).unwrap().len();
    assert!(
        size(&thin) + 700 < size(&whole),
        "{} of {} bytes kept",
        size(&thin),
        size(&whole)
    );
    assert_eq!(thin.metadata.name, whole.metadata.name);
    assert_eq!(thin.metadata.resource_version.as_deref(), Some("42"));
    assert!(thin.metadata.annotations.is_none() && thin.metadata.managed_fields.is_none());
    let c = &thin.spec.as_ref().unwrap().containers[0];
    assert!(c.image.is_none() && c.env.is_none() && c.readiness_probe.is_none());
    assert!(thin.spec.as_ref().unwrap().volumes.is_none());
    let s = thin.status.as_ref().unwrap();
    assert!(s.host_ip.is_none() && s.container_statuses.as_ref().unwrap()[0].image.is_empty());
}
