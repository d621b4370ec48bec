use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;

fn node() -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
    }))
    .unwrap()
}

fn pod(name: &str, tolerations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}],
                 "tolerations": tolerations}
    }))
    .unwrap()
}

fn taints(n: &Node) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

#[test]
fn a_lost_node_is_tainted_and_unknown_and_gets_both_back() {
    let now = Timestamp::now();
    let p = plan(&node(), true, &[], now);
    let lost = p.node.expect("changed");
    assert_eq!(
        taints(&lost),
        [
            ("dedicated".into(), "NoSchedule".into()),
            (UNREACHABLE_TAINT.into(), "NoSchedule".into()),
            (UNREACHABLE_TAINT.into(), "NoExecute".into())
        ]
    );
    let ready = ready_condition(&lost).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("Unknown", Some(UNKNOWN_REASON))
    );
    assert_eq!(plan(&lost, true, &[], now), Plan::default(), "already so");

    let back = plan(&lost, false, &[], now).node.expect("changed");
    assert_eq!(taints(&back), [("dedicated".into(), "NoSchedule".into())]);
    assert_eq!(ready_condition(&back).unwrap().status, "True");
    assert_eq!(
        plan(&node(), false, &[], now),
        Plan::default(),
        "a healthy node is left alone"
    );
}

#[test]
fn pods_leave_a_lost_node_by_their_tolerations() {
    let t0 = Timestamp::now();
    let lost = plan(&node(), true, &[], t0).node.unwrap();
    let pods = [
        pod("none", json!([])),
        pod(
            "short",
            json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        ),
        pod(
            "forever",
            json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}]),
        ),
        pod("all", json!([{"operator": "Exists"}])),
    ];
    let p = plan(&lost, true, &pods, t0 + SignedDuration::from_secs(2));
    let names: Vec<&str> = p.evict.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["none"]);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(3)));
    let p = plan(&lost, true, &pods, t0 + SignedDuration::from_secs(6));
    let names: Vec<&str> = p.evict.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["none", "short"]);
    // A pod already being deleted is not deleted again.
    let mut going = pod("none", json!([]));
    going.metadata.deletion_timestamp = Some(Time(t0));
    assert!(plan(&lost, true, &[going], t0).evict.is_empty());
}
