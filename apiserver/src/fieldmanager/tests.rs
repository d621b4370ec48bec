//! Tables of merge, ownership and conflict cases.

use serde_json::{json, Value};

use super::*;

const T: &str = "2026-01-01T00:00:00Z";

fn deploy(replicas: i64, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": image,
                                          "ports": [{"containerPort": 80}]}]}}}})
}

fn managers(v: &Value) -> Vec<(String, String)> {
    entries_of(v)
        .into_iter()
        .map(|e| (e.manager, e.operation))
        .collect()
}

#[test]
fn fields_of_uses_upstream_elements() {
    let set = managed_only(merge::fields_of(&deploy(2, "nginx")));
    let v1 = set.to_fields_v1();
    assert_eq!(
        v1,
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {},
                "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}}}}}}}
        })
    );
}

#[test]
fn merge_table() {
    // (live, applied, merged)
    let cases: Vec<(Value, Value, Value)> = vec![
        // Maps merge field by field.
        (
            json!({"a": {"x": 1, "y": 2}}),
            json!({"a": {"y": 3}}),
            json!({"a": {"x": 1, "y": 3}}),
        ),
        // List-maps by key; new items appended.
        (
            json!({"spec": {"containers": [{"name": "a", "image": "1", "tty": true}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "2", "tty": true}, {"name": "b"}]}}),
        ),
        // Atomic lists and selectors are replaced whole.
        (
            json!({"spec": {"selector": {"a": "1", "b": "2"}, "args": ["x", "y"]}}),
            json!({"spec": {"selector": {"a": "1"}, "args": ["z"]}}),
            json!({"spec": {"selector": {"a": "1"}, "args": ["z"]}}),
        ),
        // Sets by union.
        (
            json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"finalizers": ["b", "a"]}}),
            json!({"metadata": {"finalizers": ["a", "b"]}}),
        ),
        // Container ports keyed by containerPort and protocol (TCP by default).
        (
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "h"}, {"containerPort": 80, "protocol": "UDP"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "web"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "web"}, {"containerPort": 80, "protocol": "UDP"}]}]}}),
        ),
    ];
    for (live, applied, want) in cases {
        let mut got = live.clone();
        merge::merge(&mut got, &applied);
        assert_eq!(got, want, "merging {applied} into {live}");
    }
}

#[test]
fn create_then_update_record_update_entries() {
    let mut created = deploy(2, "nginx");
    update(
        None,
        &mut created,
        Writer {
            manager: "kubectl-create",
            subresource: "",
        },
        T,
    );
    assert_eq!(
        managers(&created),
        [("kubectl-create".into(), "Update".into())]
    );
    // Maps that appeared are owned whole ("."); the by-value structs not.
    let v1 = entries_of(&created)[0].fields.to_fields_v1();
    assert_eq!(v1["f:metadata"]["f:labels"]["."], json!({}));
    assert!(v1["f:metadata"].get(".").is_none(), "{v1}");
    assert!(v1["f:spec"].get(".").is_none(), "{v1}");
    assert_eq!(
        v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."],
        json!({})
    );
    let mut edited = created.clone();
    edited["spec"]["replicas"] = json!(5);
    edited["metadata"]["labels"]["tier"] = json!("front");
    update(
        Some(&created),
        &mut edited,
        Writer {
            manager: "kubectl-edit",
            subresource: "",
        },
        T,
    );
    let e = entries_of(&edited);
    assert_eq!(e.len(), 2);
    let replicas = Path(vec![
        Element::Field("spec".into()),
        Element::Field("replicas".into()),
    ]);
    assert!(!e[0].fields.has(&replicas.0), "taken from the creator");
    assert!(e[1].fields.has(&replicas.0));
    assert_eq!(
        e[1].fields.to_fields_v1(),
        json!({"f:metadata": {"f:labels": {"f:tier": {}}}, "f:spec": {"f:replicas": {}}})
    );
    assert_eq!(e[1].api_version, "apps/v1");
}

#[test]
fn apply_conflicts_then_force_takes_ownership() {
    let mut live = apply(None, &deploy(2, "nginx"), "mine", false, T).unwrap();
    assert_eq!(managers(&live), [("mine".into(), "Apply".into())]);
    // Someone scales it.
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(4);
    update(
        Some(&live),
        &mut scaled,
        Writer {
            manager: "kubectl",
            subresource: "scale",
        },
        T,
    );
    live = scaled;
    // Re-applying the same replicas value the applier no longer owns: conflict.
    let err = apply(Some(&live), &deploy(2, "nginx"), "mine", false, T).unwrap_err();
    assert_eq!(
        conflict_message(&err),
        r#"Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
    );
    // The value the other manager set is no conflict (shared ownership).
    let shared = apply(Some(&live), &deploy(4, "nginx"), "mine", false, T).unwrap();
    assert_eq!(shared["spec"]["replicas"], 4);
    // Forced: the applier takes it and the other loses it.
    let forced = apply(Some(&live), &deploy(2, "nginx"), "mine", true, T).unwrap();
    assert_eq!(forced["spec"]["replicas"], 2);
    assert_eq!(managers(&forced), [("mine".into(), "Apply".into())]);
}

#[test]
fn apply_removes_what_it_no_longer_applies_unless_shared() {
    let live = apply(None, &deploy(2, "nginx"), "mine", false, T).unwrap();
    let mut without = deploy(2, "nginx");
    without["metadata"]["labels"] = json!({});
    without["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    without["spec"].as_object_mut().unwrap().remove("replicas");
    let out = apply(Some(&live), &without, "mine", false, T).unwrap();
    assert!(out["spec"].get("replicas").is_none(), "{out}");
    assert!(out["metadata"]["labels"].get("app").is_none(), "{out}");
    // Another applier also owns replicas: it stays.
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    let both = apply(Some(&live), &other, "other", false, T).unwrap();
    let out = apply(Some(&both), &without, "mine", false, T).unwrap();
    assert_eq!(out["spec"]["replicas"], 2);
    // A container dropped from the configuration goes.
    let mut two = deploy(2, "nginx");
    two["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox"}));
    let live = apply(None, &two, "mine", false, T).unwrap();
    let out = apply(Some(&live), &deploy(2, "nginx"), "mine", false, T).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn apply_twice_is_a_no_op() {
    let first = apply(None, &deploy(2, "nginx"), "mine", false, T).unwrap();
    let again = apply(
        Some(&first),
        &deploy(2, "nginx"),
        "mine",
        false,
        "2030-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(first, again);
}

#[test]
fn conflict_messages_for_several_fields() {
    let c = |p: &str| Conflict {
        manager: r#""m" using v1"#.into(),
        path: Path(vec![Element::Field(p.into())]),
    };
    assert_eq!(
        conflict_message(&[c("a"), c("b")]),
        "Apply failed with 2 conflicts: conflicts with \"m\" using v1:\n- .a\n- .b"
    );
}

#[test]
fn keyless_items_are_named() {
    let v = json!({"spec": {"containers": [{"name": "a"}, {"image": "x"}]}});
    assert_eq!(
        merge::missing_key(&v).as_deref(),
        Some("spec.containers[1].name")
    );
    assert_eq!(merge::missing_key(&deploy(1, "x")), None);
}

#[test]
fn kubectl_takes_over_what_its_client_side_apply_set() {
    // Created by client-side apply: kubectl-client-side-apply owns all,
    // the annotation holds the configuration.
    let mut created = deploy(2, "nginx");
    created["metadata"]["annotations"] = json!({LAST_APPLIED: deploy(2, "nginx").to_string()});
    let mut live = created.clone();
    update(
        None,
        &mut live,
        Writer {
            manager: "kubectl-client-side-apply",
            subresource: "",
        },
        T,
    );
    // Another manager conflicts; kubectl itself does not.
    let err = apply(Some(&live), &deploy(3, "nginx"), "other", false, T).unwrap_err();
    assert_eq!(
        conflict_message(&err),
        r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas"#
    );
    let out = apply(Some(&live), &deploy(3, "nginx"), "kubectl", false, T).unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    // A field outside the last-applied configuration still conflicts.
    let mut edited = live.clone();
    edited["spec"]["paused"] = json!(true);
    update(
        Some(&live),
        &mut edited,
        Writer {
            manager: "kubectl-edit",
            subresource: "",
        },
        T,
    );
    let mut config = deploy(2, "nginx");
    config["spec"]["paused"] = json!(false);
    let err = apply(Some(&edited), &config, "kubectl", false, T).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].path.to_string(), ".spec.paused");
}
