//! The Deployment controller's decisions, from plain data.

use super::*;
use crate::fixtures::{app, owner_meta, template};
use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn deploy(replicas: i32, image: &str) -> Deployment {
    Deployment {
        metadata: owner_meta("d-uid"),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(app()),
                ..Default::default()
            },
            template: template(image),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(10),
            ..Default::default()
        }),
        status: None,
    }
}

/// The ReplicaSet `d` would make for `image`, at `revision`, with
/// `replicas` of which `available` are available, created at `created`.
fn rs_for(image: &str, revision: i64, replicas: i32, available: i32, created: i64) -> ReplicaSet {
    let mut rs = new_replica_set(&deploy(replicas, image), revision, replicas);
    rs.metadata.uid = Some(format!("uid-{image}"));
    rs.metadata.creation_timestamp = Some(Time(t(created)));
    rs.status = Some(ReplicaSetStatus {
        replicas,
        ready_replicas: Some(available),
        available_replicas: Some(available),
        ..Default::default()
    });
    rs
}

fn replicas_of(p: &Plan, name_part: &str) -> Option<i32> {
    p.update
        .iter()
        .chain(p.create.iter())
        .find(|rs| {
            rs.metadata.name.as_deref().unwrap().contains(name_part)
                || rs.metadata.uid.as_deref() == Some(name_part)
        })
        .and_then(|rs| rs.spec.as_ref().unwrap().replicas)
}

#[test]
fn surge_rounds_up_unavailable_down_and_both_zero_means_one() {
    use rolling::scaled_value;
    let pct = |s: &str| IntOrString::String(s.into());
    assert_eq!(scaled_value(&pct("25%"), 10, true), 3);
    assert_eq!(scaled_value(&pct("25%"), 10, false), 2);
    assert_eq!(scaled_value(&IntOrString::Int(2), 10, false), 2);
    let mut d = deploy(3, "v1");
    assert_eq!(rolling::fenceposts(&d), (1, 0));
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(pct("10%")),
        }),
    });
    assert_eq!(rolling::fenceposts(&d), (0, 1));
}

#[test]
fn a_new_deployment_gets_a_replica_set_named_by_its_template_hash() {
    let d = deploy(3, "v1");
    let p = plan(&d, &[], &[], t(100));
    let rs = p.create.expect("a new ReplicaSet");
    let hash = podutil::template_hash(&d.spec.as_ref().unwrap().template, None);
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(revision(&rs), 1);
    let labels = rs
        .spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(labels.get(POD_TEMPLATE_HASH), Some(&hash));
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .get(POD_TEMPLATE_HASH),
        Some(&hash)
    );
    assert!(controlled_by(&rs.metadata, "d-uid"));
    let c = status::get(&p.status, status::PROGRESSING).unwrap();
    assert_eq!(c.reason.as_deref(), Some(status::NEW_RS_CREATED));
}

#[test]
fn a_rolling_update_surges_then_scales_old_down_as_new_pods_become_available() {
    // 3 replicas, 25%: surge 1, unavailable 0.
    let mut d = deploy(3, "v2");
    d.metadata.generation = Some(2);
    let mut old = rs_for("v1", 1, 3, 3, 1);
    old.metadata.owner_references = Some(vec![podutil::controller_ref(
        "apps/v1",
        "Deployment",
        &d.metadata,
    )]);
    // Step 1: one new pod, nothing old goes (no availability to spare).
    let p = plan(&d, std::slice::from_ref(&old), &[], t(100));
    let new = p.create.clone().expect("new ReplicaSet");
    assert_eq!(new.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(revision(&new), 2);
    assert!(p.update.is_empty(), "{:?}", p.update);
    // Step 2: the new pod is available: one old pod goes; the new one stays at 1 (4 in all).
    let mut new = rs_for("v2", 2, 1, 1, 2);
    new.metadata.owner_references = old.metadata.owner_references.clone();
    let p = plan(&d, &[old.clone(), new.clone()], &[], t(101));
    assert_eq!(
        replicas_of(&p, "uid-v1").or_else(|| p.update.first().and_then(|r| r
            .spec
            .as_ref()
            .unwrap()
            .replicas)),
        Some(2)
    );
    // Step 3: with old at 2, the new one grows to 2.
    old.spec.as_mut().unwrap().replicas = Some(2);
    old.status.as_mut().unwrap().available_replicas = Some(2);
    let p = plan(&d, &[old.clone(), new.clone()], &[], t(102));
    let grown = p
        .update
        .iter()
        .find(|r| revision(r) == 2)
        .expect("new scaled");
    assert_eq!(grown.spec.as_ref().unwrap().replicas, Some(2));
}

#[test]
fn a_finished_rollout_reports_new_replica_set_available_and_trims_history() {
    let mut d = deploy(2, "v3");
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let own = |mut rs: ReplicaSet| {
        rs.metadata.owner_references = Some(vec![podutil::controller_ref(
            "apps/v1",
            "Deployment",
            &d.metadata,
        )]);
        rs
    };
    let rss = [
        own(rs_for("v1", 1, 0, 0, 1)),
        own(rs_for("v2", 2, 0, 0, 2)),
        own(rs_for("v3", 3, 2, 2, 3)),
    ];
    let p = plan(&d, &rss, &[], t(100));
    assert!(status::complete(&d, &p.status), "{:?}", p.status);
    let c = status::get(&p.status, status::PROGRESSING).unwrap();
    assert_eq!(c.reason.as_deref(), Some(status::NEW_RS_AVAILABLE));
    assert_eq!(
        status::get(&p.status, status::AVAILABLE).unwrap().status,
        "True"
    );
    assert_eq!(p.delete, [rss[0].metadata.name.clone().unwrap()]);
    assert!(p.update.is_empty() && p.create.is_none());
}

#[test]
fn undo_makes_the_old_replica_set_the_newest_revision() {
    // The template is back to v1, whose ReplicaSet is revision 1.
    let d = deploy(2, "v1");
    let own = |mut rs: ReplicaSet| {
        rs.metadata.owner_references = Some(vec![podutil::controller_ref(
            "apps/v1",
            "Deployment",
            &d.metadata,
        )]);
        rs
    };
    let rss = [own(rs_for("v1", 1, 0, 0, 1)), own(rs_for("v2", 2, 2, 2, 2))];
    let p = plan(&d, &rss, &[], t(100));
    assert!(p.create.is_none());
    let back = p
        .update
        .iter()
        .find(|r| r.metadata.uid.as_deref() == Some("uid-v1"))
        .expect("v1 updated");
    assert_eq!(revision(back), 3);
    assert_eq!(back.spec.as_ref().unwrap().replicas, Some(1));
    // The Deployment carries its new ReplicaSet's revision, as kube's.
    assert_eq!(p.revision.as_deref(), Some("3"));
}

#[test]
fn the_deployment_carries_its_new_replica_sets_revision() {
    let mut d = deploy(2, "v1");
    let p = plan(&d, &[], &[], t(100));
    assert_eq!(p.revision.as_deref(), Some("1"), "a new ReplicaSet");
    let mut rs = rs_for("v1", 1, 2, 2, 1);
    rs.metadata.owner_references = Some(vec![podutil::controller_ref(
        "apps/v1",
        "Deployment",
        &d.metadata,
    )]);
    d.metadata.annotations = Some([(REVISION.to_string(), "1".to_string())].into());
    let p = plan(&d, std::slice::from_ref(&rs), &[], t(100));
    assert_eq!(p.revision, None, "already carried");
    let mut d2 = deploy(2, "v2");
    d2.metadata.annotations = d.metadata.annotations.clone();
    let p = plan(&d2, &[rs], &[], t(100));
    assert_eq!(p.revision.as_deref(), Some("2"), "a rollout");
}

#[test]
fn recreate_waits_for_old_pods_to_go_before_the_new_replica_set() {
    let mut d = deploy(2, "v2");
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    let mut old = rs_for("v1", 1, 2, 2, 1);
    old.metadata.owner_references = Some(vec![podutil::controller_ref(
        "apps/v1",
        "Deployment",
        &d.metadata,
    )]);
    let mut running = Pod::default();
    running.metadata.owner_references = Some(vec![podutil::controller_ref(
        "apps/v1",
        "ReplicaSet",
        &old.metadata,
    )]);
    let p = plan(&d, &[old.clone()], &[running], t(100));
    assert!(p.create.is_none());
    assert_eq!(p.update[0].spec.as_ref().unwrap().replicas, Some(0));
    old.spec.as_mut().unwrap().replicas = Some(0);
    let p = plan(&d, &[old], &[], t(101));
    assert_eq!(p.create.unwrap().spec.unwrap().replicas, Some(2));
}

#[test]
fn no_progress_past_the_deadline_is_progress_deadline_exceeded() {
    let mut d = deploy(2, "v1");
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
    let mut rs = rs_for("v1", 1, 2, 0, 1);
    rs.metadata.owner_references = Some(vec![podutil::controller_ref(
        "apps/v1",
        "Deployment",
        &d.metadata,
    )]);
    let first = plan(&d, &[rs.clone()], &[], t(100));
    d.status = Some(first.status);
    let later = plan(&d, &[rs.clone()], &[], t(105));
    assert!(later.requeue_after.is_some());
    let p = plan(&d, &[rs], &[], t(200));
    let c = status::get(&p.status, status::PROGRESSING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some(status::TIMED_OUT))
    );
}

#[test]
fn a_paused_deployment_rolls_nothing_out_but_carries_out_a_scale() {
    let owned = |mut rs: ReplicaSet, d: &Deployment| {
        rs.metadata.owner_references = Some(vec![podutil::controller_ref(
            "apps/v1",
            "Deployment",
            &d.metadata,
        )]);
        rs
    };
    // A new template while paused: no new ReplicaSet, the old one kept.
    let mut d = deploy(3, "v2");
    d.spec.as_mut().unwrap().paused = Some(true);
    let old = owned(rs_for("v1", 1, 3, 3, 1), &d);
    let p = plan(&d, std::slice::from_ref(&old), &[], t(100));
    assert!(p.create.is_none(), "{:?}", p.create);
    assert!(p.update.is_empty(), "{:?}", p.update);
    let c = status::get(&p.status, status::PROGRESSING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("Unknown", Some(status::PAUSED))
    );
    // A pure scale while paused is carried out.
    let mut d = deploy(5, "v1");
    d.spec.as_mut().unwrap().paused = Some(true);
    let p = plan(&d, std::slice::from_ref(&old), &[], t(100));
    assert_eq!(replicas_of(&p, "uid-v1"), Some(5));
    assert!(p.create.is_none());
    // Resumed, the new template rolls out.
    let d = deploy(3, "v2");
    let p = plan(&d, &[old], &[], t(100));
    assert_eq!(revision(p.create.as_ref().expect("new ReplicaSet")), 2);
}
