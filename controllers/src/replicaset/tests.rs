//! The ReplicaSet controller's decisions, from plain data.

use super::*;
use k8s_openapi::api::apps::v1::ReplicaSetSpec;
use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn app(v: &str) -> std::collections::BTreeMap<String, String> {
    [("app".to_string(), v.to_string())].into()
}

fn rs(replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("rs-uid".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(app("web")),
                ..Default::default()
            },
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app("web")),
                    ..Default::default()
                }),
                spec: Some(PodSpec::default()),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// A pod of ours: `node` assigned or not, `phase`, ready since `ready`, created at `created`.
fn pod(name: &str, node: bool, phase: &str, ready: Option<i64>, created: i64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(app("web")),
            creation_timestamp: Some(Time(t(created))),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.then(|| "n1".to_string()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            conditions: ready.map(|r| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(t(r))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

#[test]
fn missing_replicas_are_created_and_status_counts_active_pods() {
    let pods = [pod("a", true, "Running", Some(10), 1)];
    let p = plan(&rs(3), &pods, t(100), true);
    assert_eq!(p.create, 2);
    assert!(p.delete.is_empty());
    assert_eq!(p.status.replicas, 1);
    assert_eq!(p.status.ready_replicas, Some(1));
    assert_eq!(p.status.available_replicas, Some(1));
    assert_eq!(p.status.fully_labeled_replicas, Some(1));
    assert_eq!(p.status.observed_generation, Some(2));
    // Held back by expectations: status only.
    assert_eq!(plan(&rs(3), &pods, t(100), false).create, 0);
}

#[test]
fn surplus_pods_go_in_kubes_order() {
    let pods = [
        pod("old-ready", true, "Running", Some(10), 1),
        pod("new-ready", true, "Running", Some(50), 2),
        pod("not-ready", true, "Running", None, 3),
        pod("pending", true, "Pending", None, 4),
        pod("unscheduled", false, "Pending", None, 5),
    ];
    let p = plan(&rs(1), &pods, t(100), true);
    assert_eq!(
        p.delete,
        ["unscheduled", "pending", "not-ready", "new-ready"]
    );
    assert_eq!(p.create, 0);
}

#[test]
fn terminating_and_finished_pods_do_not_count() {
    let mut going = pod("going", true, "Running", Some(1), 1);
    going.metadata.deletion_timestamp = Some(Time(t(90)));
    let done = pod("done", true, "Succeeded", None, 1);
    let p = plan(
        &rs(2),
        &[going, done, pod("a", true, "Running", None, 2)],
        t(100),
        true,
    );
    assert_eq!(p.create, 1);
    assert_eq!(p.status.replicas, 1);
    assert!(p.delete.is_empty());
}

#[test]
fn orphans_matching_the_selector_are_adopted_and_strays_released() {
    let mut orphan = pod("orphan", true, "Running", None, 1);
    orphan.metadata.owner_references = None;
    let mut stray = pod("stray", true, "Running", None, 1);
    stray.metadata.labels = Some(app("other"));
    let mut foreign = pod("foreign", true, "Running", None, 1);
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "someone-else".into();
    let p = plan(&rs(2), &[orphan, stray, foreign], t(100), true);
    assert_eq!(p.adopt, ["orphan"]);
    assert_eq!(p.release, ["stray"]);
    assert_eq!(p.create, 1);
}

#[test]
fn available_waits_for_min_ready_seconds() {
    let mut r = rs(2);
    r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let pods = [
        pod("a", true, "Running", Some(90), 1),
        pod("b", true, "Running", Some(10), 1),
    ];
    let p = plan(&r, &pods, t(100), true);
    assert_eq!(p.status.ready_replicas, Some(2));
    assert_eq!(p.status.available_replicas, Some(1));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
}

#[test]
fn new_pods_carry_the_template_and_a_controller_reference() {
    let p = new_pod(&rs(1));
    let name = p.metadata.name.unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(p.metadata.labels, Some(app("web")));
    let r = &p.metadata.owner_references.unwrap()[0];
    assert_eq!((r.kind.as_str(), r.uid.as_str()), ("ReplicaSet", "rs-uid"));
    assert_eq!(
        (r.controller, r.block_owner_deletion),
        (Some(true), Some(true))
    );
}
