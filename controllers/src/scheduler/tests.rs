use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use super::plan::*;
use super::{pending, Placed, Usages};
use controlplane::Object;

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

/// A ready node with 2 CPUs, 4 GiB and room for 110 pods.
fn node(name: &str, extra: Value) -> Node {
    let mut v = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("node")
}

fn pod(extra: Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "i",
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("pod")
}

fn first(_: usize) -> usize {
    0
}

/// Schedules `p` on `nodes` with `usage` per node name.
fn place(p: &Pod, nodes: &[Node], usage: &BTreeMap<&str, Usage>) -> Result<String, String> {
    let empty = Usage::default();
    let cands: Vec<Candidate> = nodes
        .iter()
        .map(|n| Candidate {
            node: n,
            lost: false,
            usage: usage
                .get(n.metadata.name.as_deref().unwrap())
                .unwrap_or(&empty),
            spread: Vec::new(),
        })
        .collect();
    schedule(p, &cands, first)
}

fn used(cpu: i64, mem: i64) -> Usage {
    Usage {
        milli_cpu: cpu,
        memory: mem,
        score_milli_cpu: cpu,
        score_memory: mem,
        pods: 1,
        ..Usage::default()
    }
}

#[test]
fn requests_take_the_larger_of_containers_and_init_and_limits_stand_in() {
    let p = pod(json!({"spec": {
        "containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "100Mi"}}},
            {"name": "b", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        "initContainers": [{"name": "init", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}}));
    let r = requests(&p);
    assert_eq!((r.milli_cpu, r.memory), (2000, (100 << 20) + (1 << 30)));
    let none = pod(
        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": null,
        "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
    );
    let r = requests(&none);
    assert_eq!(
        (r.milli_cpu, r.score_milli_cpu, r.score_memory),
        (0, 100, 200 << 20)
    );
    assert_eq!(
        r.host_ports,
        [("TCP".to_string(), 8080, "0.0.0.0".to_string())]
    );
}

#[test]
fn filters_say_why_in_kubes_words() {
    let nodes = [
        node("a", json!({"spec": {"unschedulable": true}})),
        node(
            "b",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        ),
        node(
            "c",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        node("d", json!({})),
    ];
    let mut usage = BTreeMap::new();
    usage.insert("d", used(1800, 0));
    let err = place(&pod(json!({})), &nodes, &usage).unwrap_err();
    assert_eq!(
        err,
        "0/4 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, \
         1 node(s) were not ready, 1 node(s) were unschedulable."
    );
    // Tolerating the taint opens b.
    let tolerant = pod(
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}}),
    );
    assert_eq!(place(&tolerant, &nodes, &usage).unwrap(), "b");
    // An Exists toleration without a key tolerates every taint.
    let all = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
    assert_eq!(place(&all, &nodes[1..2], &usage).unwrap(), "b");
}

#[test]
fn node_selector_and_required_affinity_pick_the_nodes() {
    let nodes = [
        node(
            "a",
            json!({"metadata": {"labels": {"disk": "ssd", "gen": "3"}}}),
        ),
        node(
            "b",
            json!({"metadata": {"labels": {"disk": "hdd", "gen": "5"}}}),
        ),
    ];
    let none = BTreeMap::new();
    let sel = pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}}));
    assert_eq!(place(&sel, &nodes, &none).unwrap(), "b");
    let aff = |expr: Value| {
        pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}}),
        )
    };
    let gt = aff(json!({"key": "gen", "operator": "Gt", "values": ["4"]}));
    assert_eq!(place(&gt, &nodes, &none).unwrap(), "b");
    let notin = aff(json!({"key": "disk", "operator": "NotIn", "values": ["hdd"]}));
    assert_eq!(place(&notin, &nodes, &none).unwrap(), "a");
    let missing = aff(json!({"key": "gpu", "operator": "Exists"}));
    assert_eq!(
        place(&missing, &nodes, &none).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    let by_name = pod(
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}}),
    );
    assert_eq!(place(&by_name, &nodes, &none).unwrap(), "a");
    // Preferred affinity breaks what would be a tie.
    let pref = pod(
        json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
        [{"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}}]}}}}),
    );
    assert_eq!(place(&pref, &nodes, &none).unwrap(), "b");
}

#[test]
fn the_least_requested_node_wins_and_one_owners_pods_spread() {
    let nodes = [node("a", json!({})), node("b", json!({}))];
    let mut usage = BTreeMap::new();
    usage.insert("a", used(1000, 1 << 30));
    assert_eq!(place(&pod(json!({})), &nodes, &usage).unwrap(), "b");

    // Equal load, but a already runs two of this ReplicaSet's pods.
    let owned = pod(json!({"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]}}));
    let mut a = used(500, 1 << 30);
    a.owners.insert("rs-1".into(), 2);
    let mut b = used(1000, 2 << 30);
    b.owners.insert("rs-1".into(), 0);
    let usage: BTreeMap<&str, Usage> = [("a", a), ("b", b)].into();
    assert_eq!(place(&owned, &nodes, &usage).unwrap(), "b");
}

#[test]
fn host_ports_and_pod_counts_are_filters() {
    let nodes = [
        node("a", json!({"status": {"allocatable": {"pods": "1"}}})),
        node("b", json!({})),
    ];
    let mut b = Usage::default();
    b.host_ports
        .insert(("TCP".into(), 8080, "0.0.0.0".into()), 1);
    let usage: BTreeMap<&str, Usage> = [("a", used(0, 0)), ("b", b)].into();
    let hp = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
        "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}));
    assert_eq!(
        place(&hp, &nodes, &usage).unwrap_err(),
        "0/2 nodes are available: 1 Too many pods, 1 node(s) didn't have free ports for the requested pod ports."
    );
    let udp = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}}));
    assert_eq!(
        place(&udp, &nodes, &usage).unwrap(),
        "b",
        "another protocol is free"
    );
}

/// Live candidates with `usage`, each with its count of matching pods
/// for the pod's one spread constraint (`None`: no topology label).
fn spread_over<'a>(
    nodes: &'a [Node],
    usage: &'a Usage,
    counts: &[Option<u32>],
) -> Vec<Candidate<'a>> {
    nodes
        .iter()
        .zip(counts)
        .map(|(n, c)| Candidate {
            node: n,
            lost: false,
            usage,
            spread: vec![*c],
        })
        .collect()
}

#[test]
fn hard_topology_spread_keeps_the_skew() {
    let nodes = [
        node("a", json!({"metadata": {"labels": {"zone": "z1"}}})),
        node("b", json!({"metadata": {"labels": {"zone": "z2"}}})),
        node("c", json!({})),
    ];
    let p = pod(
        json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
    );
    let empty = Usage::default();
    let cands = |counts: [Option<u32>; 3]| spread_over(&nodes, &empty, &counts);
    // z1 has 2, z2 has 1: only z2 keeps the skew within 1; c has no zone.
    assert_eq!(
        schedule(&p, &cands([Some(2), Some(1), None]), first).unwrap(),
        "b"
    );
    assert_eq!(
        schedule(&p, &cands([Some(3), Some(3), None]), first).unwrap(),
        "a",
        "even: either"
    );
    // A node without the topology label cannot take part.
    let err = schedule(&p, &cands([Some(2), Some(1), None])[2..], first).unwrap_err();
    assert!(
        err.contains("didn't match pod topology spread constraints"),
        "{err}"
    );
}

#[test]
fn lost_nodes_are_unreachable_and_pending_means_unbound_and_ours() {
    let nodes = [node("a", json!({}))];
    let empty = Usage::default();
    let cands = [Candidate {
        node: &nodes[0],
        lost: true,
        usage: &empty,
        spread: Vec::new(),
    }];
    assert_eq!(
        schedule(&pod(json!({})), &cands, first).unwrap_err(),
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }."
    );
    assert!(pending(&pod(json!({}))));
    assert!(!pending(&pod(json!({"spec": {"nodeName": "a"}}))));
    assert!(!pending(&pod(json!({"spec": {"schedulerName": "other"}}))));
    assert!(!pending(&pod(
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    )));
    assert!(!pending(&pod(json!({"status": {"phase": "Succeeded"}}))));
}

#[test]
fn usages_follow_pods_and_binds() {
    let u = Usages::default();
    let bound = |node: &str| Object::from(pod(json!({"spec": {"nodeName": node}})));
    assert!(!u.pod_changed(None, Some(&bound("a"))));
    assert_eq!(u.snapshot()["a"].milli_cpu, 500);
    // An assumed bind, then the watch's report of it: counted once.
    let p = pod(json!({"metadata": {"name": "q"}, "spec": {"nodeName": "a"}}));
    u.set("default", "q", Placed::of(&p));
    u.pod_changed(None, Some(&Object::from(p)));
    assert_eq!(u.snapshot()["a"].pods, 2);
    let finished = Object::from(pod(
        json!({"spec": {"nodeName": "a"}, "status": {"phase": "Failed"}}),
    ));
    assert!(
        u.pod_changed(Some(&bound("a")), Some(&finished)),
        "room freed"
    );
    assert_eq!(u.snapshot()["a"].pods, 1);
}

#[test]
fn prefer_no_schedule_taints_and_soft_spread_are_scores_not_filters() {
    // An untolerated PreferNoSchedule taint loses to an equal clean node,
    // but still takes the pod when it is the only one.
    let tainted = node(
        "a",
        json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]}}),
    );
    let nodes = [tainted, node("b", json!({}))];
    let none = BTreeMap::new();
    assert_eq!(place(&pod(json!({})), &nodes, &none).unwrap(), "b");
    assert_eq!(place(&pod(json!({})), &nodes[..1], &none).unwrap(), "a");
    // Tolerated, it no longer counts: a, less loaded, wins.
    let tolerant = pod(json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}));
    let usage: BTreeMap<&str, Usage> = [("b", used(1000, 2 << 30))].into();
    assert_eq!(place(&tolerant, &nodes, &usage).unwrap(), "a");

    // ScheduleAnyway: the zone with fewer matching pods wins, and a skew
    // beyond maxSkew does not stop the pod.
    let zoned = [
        node("z1", json!({"metadata": {"labels": {"zone": "z1"}}})),
        node("z2", json!({"metadata": {"labels": {"zone": "z2"}}})),
    ];
    let soft = pod(
        json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
    );
    let empty = Usage::default();
    let cands = |counts: [u32; 2]| spread_over(&zoned, &empty, &counts.map(Some));
    assert_eq!(schedule(&soft, &cands([3, 1]), first).unwrap(), "z2");
    assert_eq!(schedule(&soft, &cands([0, 4]), first).unwrap(), "z1");
    assert_eq!(
        schedule(&soft, &cands([5, 1])[..1], first).unwrap(),
        "z1",
        "a soft constraint never filters"
    );
}
