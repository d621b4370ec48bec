//! The StatefulSet controller's decisions, from plain data.

use super::*;
use crate::fixtures::{owner_meta, selector, status, template};
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
};

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn set(replicas: i32, image: &str) -> StatefulSet {
    StatefulSet {
        metadata: owner_meta("set-uid"),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some("web".into()),
            selector: selector(),
            template: template(image),
            ..Default::default()
        }),
        status: None,
    }
}

/// Pod `ordinal` of `s` at its current template, in `phase`, ready or not.
fn pod(s: &StatefulSet, ordinal: i32, image: &str, phase: &str, ready: bool) -> Pod {
    let t = template(image);
    let mut p = new_pod(s, &t, ordinal, &revision_name(s, &t));
    p.metadata.uid = Some(format!("uid-{ordinal}"));
    p.status = Some(status(phase, ready));
    p
}

fn ready(s: &StatefulSet, ordinals: std::ops::Range<i32>, image: &str) -> Vec<Pod> {
    ordinals
        .map(|o| pod(s, o, image, "Running", true))
        .collect()
}

fn created(p: &Plan) -> Vec<i32> {
    p.create.iter().map(|(o, _)| *o).collect()
}

#[test]
fn ordered_ready_creates_one_pod_at_a_time_in_order() {
    let s = set(3, "v1");
    let p = plan(&s, &[], now());
    assert_eq!(created(&p), [0]);
    // web-0 exists but is not ready: wait.
    let p = plan(&s, &[pod(&s, 0, "v1", "Pending", false)], now());
    assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    let p = plan(&s, &ready(&s, 0..1, "v1"), now());
    assert_eq!(created(&p), [1]);
    let p = plan(&s, &ready(&s, 0..3, "v1"), now());
    assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    assert_eq!(p.status.replicas, 3);
    assert_eq!(p.status.ready_replicas, Some(3));
    assert_eq!(p.status.current_revision, p.status.update_revision);
}

#[test]
fn pods_get_stable_names_hostnames_and_labels() {
    let s = set(1, "v1");
    let p = new_pod(&s, &template("v1"), 4, "web-abc");
    assert_eq!(p.metadata.name.as_deref(), Some("web-4"));
    let spec = p.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-4"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let l = p.metadata.labels.unwrap();
    assert_eq!(l[POD_NAME_LABEL], "web-4");
    assert_eq!(l[POD_INDEX_LABEL], "4");
    assert_eq!(l[REVISION_LABEL], "web-abc");
    assert_eq!(l["app"], "web");
}

#[test]
fn parallel_creates_all_and_a_failed_pod_is_replaced() {
    let mut s = set(3, "v1");
    s.spec.as_mut().unwrap().pod_management_policy = Some("Parallel".into());
    assert_eq!(created(&plan(&s, &[], now())), [0, 1, 2]);
    let mut pods = ready(&s, 0..3, "v1");
    pods[1] = pod(&s, 1, "v1", "Failed", false);
    let p = plan(&s, &pods, now());
    assert_eq!(p.delete, ["web-1"]);
}

#[test]
fn scale_down_removes_the_highest_ordinal_first_and_waits_for_it() {
    let s = set(1, "v1");
    let p = plan(&s, &ready(&s, 0..3, "v1"), now());
    assert_eq!(p.delete, ["web-2"]);
    // web-2 terminating: nothing more until it is gone.
    let mut pods = ready(&s, 0..3, "v1");
    pods[2].metadata.deletion_timestamp = Some(podutil::time(now()));
    assert!(plan(&s, &pods, now()).delete.is_empty());
    // Not while a wanted pod is unready (OrderedReady).
    let mut pods = ready(&s, 0..2, "v1");
    pods[0] = pod(&s, 0, "v1", "Running", false);
    assert!(plan(&s, &pods, now()).delete.is_empty());
}

#[test]
fn a_rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
    let old = set(3, "v1");
    let mut s = set(3, "v2");
    s.status = Some(StatefulSetStatus {
        current_revision: Some(revision_name(&old, &template("v1"))),
        ..Default::default()
    });
    let p = plan(&s, &ready(&old, 0..3, "v1"), now());
    assert_eq!(p.delete, ["web-2"]);
    assert_eq!(p.status.updated_replicas, Some(0));
    assert_eq!(p.status.current_replicas, Some(3));
    // web-2 updated and ready: web-1 next.
    let mut pods = ready(&old, 0..2, "v1");
    pods.push(pod(&s, 2, "v2", "Running", true));
    assert_eq!(plan(&s, &pods, now()).delete, ["web-1"]);
    // web-2 updated but not ready yet: wait.
    pods[2] = pod(&s, 2, "v2", "Running", false);
    assert!(plan(&s, &pods, now()).delete.is_empty());
    // With partition 2, ordinals below it keep the old revision, and a
    // recreated web-0 comes back at the current revision.
    s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateStatefulSetStrategy {
            partition: Some(2),
            ..Default::default()
        }),
    });
    pods[2] = pod(&s, 2, "v2", "Running", true);
    let p = plan(&s, &pods, now());
    assert!(p.delete.is_empty(), "{p:?}");
    let p = plan(&s, &pods[1..], now());
    assert_eq!(p.create, [(0, revision_name(&old, &template("v1")))]);
}

#[test]
fn on_delete_never_replaces_a_running_pod() {
    let old = set(2, "v1");
    let mut s = set(2, "v2");
    s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    assert!(plan(&s, &ready(&old, 0..2, "v1"), now()).delete.is_empty());
}

#[test]
fn orphans_with_the_sets_names_are_adopted_others_left_alone() {
    let s = set(2, "v1");
    let mut orphan = pod(&s, 0, "v1", "Running", true);
    orphan.metadata.owner_references = None;
    let mut stranger = pod(&s, 0, "v1", "Running", true);
    stranger.metadata.name = Some("other-0".into());
    stranger.metadata.owner_references = None;
    let p = plan(&s, &[orphan, stranger], now());
    assert_eq!(p.adopt, ["web-0"]);
    assert_eq!(created(&p), [1]);
}
