//! The DaemonSet controller's decisions, from plain data.

use super::*;
use crate::fixtures::{owner_meta, selector, status, template};
use k8s_openapi::api::apps::v1::DaemonSetSpec;
use k8s_openapi::api::core::v1::NodeSpec;

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn ds(image: &str) -> DaemonSet {
    DaemonSet {
        metadata: owner_meta("ds-uid"),
        spec: Some(DaemonSetSpec {
            selector: selector(),
            template: template(image),
            ..Default::default()
        }),
        status: None,
    }
}

fn node(name: &str, taint: Option<(&str, &str)>, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: taint.map(|(k, e)| {
                vec![Taint {
                    key: k.into(),
                    effect: e.into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_on(d: &DaemonSet, node: &str, name: &str, phase: &str, ready: bool) -> Pod {
    let mut p = new_pod(d, node);
    p.metadata.name = Some(name.into());
    p.status = Some(status(phase, ready));
    p
}

#[test]
fn one_pod_per_eligible_node_bound_to_it() {
    let d = ds("v1");
    let nodes = [
        node("n1", None, &[]),
        node("n2", Some(("dedicated", "NoSchedule")), &[]),
        node(
            "n3",
            Some(("node.kubernetes.io/unschedulable", "NoSchedule")),
            &[],
        ),
    ];
    let p = plan(&d, &nodes, &[], now());
    assert_eq!(p.create, ["n1", "n3"], "n2's taint is not tolerated");
    assert_eq!(p.status.desired_number_scheduled, 2);
    let pod = new_pod(&d, "n1");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("n1"));
    assert!(spec.tolerations.unwrap().len() >= 6);
}

#[test]
fn node_selectors_and_tolerations_choose_nodes() {
    let mut d = ds("v1");
    let ps = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    ps.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
    ps.tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    let nodes = [
        node("a", None, &[("disk", "ssd")]),
        node("b", Some(("dedicated", "NoSchedule")), &[("disk", "ssd")]),
        node("c", None, &[("disk", "hdd")]),
    ];
    assert_eq!(plan(&d, &nodes, &[], now()).create, ["a", "b"]);
}

#[test]
fn a_node_that_stops_being_eligible_loses_its_pod_and_a_failed_pod_is_replaced() {
    let d = ds("v1");
    let nodes = [
        node("n1", None, &[]),
        node("n2", Some(("x", "NoExecute")), &[]),
    ];
    let pods = [
        pod_on(&d, "n1", "a", "Failed", false),
        pod_on(&d, "n2", "b", "Running", true),
    ];
    let p = plan(&d, &nodes, &pods, now());
    assert_eq!(p.delete, ["a", "b"]);
    assert_eq!(p.create, ["n1"]);
    assert_eq!(p.status.number_misscheduled, 1);
}

#[test]
fn a_new_template_rolls_one_unavailable_pod_at_a_time() {
    let old = ds("v1");
    let new = ds("v2");
    let nodes = [node("n1", None, &[]), node("n2", None, &[])];
    let pods = [
        pod_on(&old, "n1", "a", "Running", true),
        pod_on(&old, "n2", "b", "Running", true),
    ];
    let p = plan(&new, &nodes, &pods, now());
    assert_eq!(p.delete.len(), 1, "{p:?}");
    assert!(p.create.is_empty());
    // One node already without an available pod: no more go.
    let pods = [
        pod_on(&old, "n1", "a", "Running", true),
        pod_on(&new, "n2", "c", "Running", false),
    ];
    assert!(plan(&new, &nodes, &pods, now()).delete.is_empty());
    assert_eq!(
        plan(&new, &nodes, &pods, now())
            .status
            .updated_number_scheduled,
        Some(1)
    );
}
