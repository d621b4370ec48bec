use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::plan::*;

fn service(extra: Value) -> Service {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("service")
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

/// A ready, running `app=web` pod serving `http` on 8080, on node n1.
fn pod(name: &str, ip: &str, extra: Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("pod")
}

fn no_node_info(_: &str) -> NodeInfo {
    NodeInfo::default()
}

/// (ip, ready, serving, terminating) of every endpoint, by group.
fn conditions(groups: &Groups) -> Vec<(String, bool, bool, bool)> {
    groups
        .values()
        .flatten()
        .map(|(ip, ep)| {
            let c = ep.conditions.clone().unwrap_or_default();
            (
                ip.to_string(),
                c.ready.unwrap_or_default(),
                c.serving.unwrap_or_default(),
                c.terminating.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn endpoints_carry_kube_proxys_conditions() {
    let svc = service(json!({}));
    let pods = [
        pod("ready", "10.244.0.2", json!({})),
        pod(
            "unready",
            "10.244.0.3",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        pod(
            "going",
            "10.244.0.4",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        ),
        pod(
            "done",
            "10.244.0.5",
            json!({"status": {"phase": "Succeeded"}}),
        ),
        pod("no-ip", "", json!({"status": {"podIP": null}})),
        pod(
            "other",
            "10.244.0.6",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        pod(
            "elsewhere",
            "10.244.0.7",
            json!({"metadata": {"namespace": "x"}}),
        ),
    ];
    let groups = desired(&svc, &pods, no_node_info).expect("selector");
    assert_eq!(
        conditions(&groups),
        [
            ("10.244.0.2".into(), true, true, false),
            ("10.244.0.3".into(), false, false, false),
            ("10.244.0.4".into(), false, true, true),
        ]
    );
    let key = groups.keys().next().expect("one group");
    assert_eq!(key.address_type, "IPv4");
    assert_eq!(
        (key.ports[0].name.as_deref(), key.ports[0].port),
        (Some("http"), 8080)
    );
    let ep = &groups[key][&"10.244.0.2".parse().unwrap()];
    assert_eq!(ep.node_name.as_deref(), Some("n1"));
    let target = ep.target_ref.as_ref().expect("target");
    assert_eq!(
        (target.name.as_deref(), target.uid.as_deref()),
        (Some("ready"), Some("uid-ready"))
    );

    // publishNotReadyAddresses: every one is ready.
    let svc = service(json!({"spec": {"publishNotReadyAddresses": true}}));
    let groups = desired(&svc, &pods, no_node_info).expect("selector");
    assert!(conditions(&groups).iter().all(|c| c.1));
}

#[test]
fn a_lost_node_serves_nothing_and_zones_and_hostnames_are_carried() {
    let svc = service(json!({"spec": {"clusterIP": "None"}}));
    let pods = [
        pod(
            "web-0",
            "10.244.0.2",
            json!({"spec": {"hostname": "web-0", "subdomain": "web"}}),
        ),
        pod(
            "b",
            "10.244.1.2",
            json!({"spec": {"nodeName": "n2", "hostname": "b", "subdomain": "other"}}),
        ),
    ];
    let info = |n: &str| NodeInfo {
        lost: n == "n2",
        zone: Some(format!("zone-{n}")),
    };
    let groups = desired(&svc, &pods, info).expect("selector");
    assert_eq!(
        conditions(&groups),
        [
            ("10.244.0.2".into(), true, true, false),
            ("10.244.1.2".into(), false, false, false)
        ]
    );
    let eps: Vec<_> = groups.values().flat_map(|g| g.values()).collect();
    assert_eq!(eps[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(eps[1].hostname, None, "subdomain names another Service");
    assert_eq!(eps[0].zone.as_deref(), Some("zone-n1"));
}

#[test]
fn ports_are_resolved_per_pod_and_group_their_slices() {
    let svc = service(json!({}));
    let pods = [
        pod("a", "10.244.0.2", json!({})),
        pod(
            "b",
            "10.244.0.3",
            json!({"spec": {"containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 9090}]}]}}),
        ),
        pod(
            "c",
            "10.244.0.4",
            json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
        ),
    ];
    let groups = desired(&svc, &pods, no_node_info).expect("selector");
    let ports: Vec<i32> = groups.keys().map(|k| k.ports[0].port).collect();
    assert_eq!(ports, [8080, 9090], "c resolves no port and is left out");
    assert!(desired(
        &service(json!({"spec": {"selector": null}})),
        &pods,
        no_node_info
    )
    .is_none());
    let mut empty = service(json!({}));
    empty.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
    assert!(
        desired(&empty, &pods, no_node_info).is_none(),
        "an empty selector selects nothing"
    );
}

#[test]
fn dual_stack_services_get_a_slice_per_family() {
    let svc = service(json!({"spec": {"ipFamilies": ["IPv4", "IPv6"]}}));
    let p = pod(
        "a",
        "10.244.0.2",
        json!({"status": {"podIPs": [{"ip": "10.244.0.2"}, {"ip": "fd00::2"}]}}),
    );
    let groups = desired(&svc, [&p], no_node_info).expect("selector");
    let families: Vec<_> = groups.keys().map(|k| k.address_type).collect();
    assert_eq!(families, ["IPv4", "IPv6"]);
}

fn names() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("web-{n}")
    }
}

/// Applies `actions` to `slices` as the store would.
fn apply(slices: &mut Vec<EndpointSlice>, actions: Vec<Action>) {
    for a in actions {
        match a {
            Action::Create(s) => slices.push(s),
            Action::Update(s) => {
                let i = slices
                    .iter()
                    .position(|x| x.metadata.name == s.metadata.name)
                    .expect("exists");
                slices[i] = s;
            }
            Action::Delete(n) => slices.retain(|x| x.metadata.name.as_deref() != Some(&n)),
        }
    }
}

/// Plans against `slices` and applies the result.
fn step(
    svc: &Service,
    groups: &Groups,
    slices: &mut Vec<EndpointSlice>,
    name: &mut impl FnMut() -> String,
) {
    let actions = plan(svc, groups, slices, name);
    apply(slices, actions);
}

fn ips(s: &EndpointSlice) -> Vec<String> {
    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect()
}

#[test]
fn slices_are_created_then_changed_in_place_and_left_alone_when_equal() {
    let svc = service(json!({}));
    let mut pods = vec![
        pod("a", "10.244.0.3", json!({})),
        pod("b", "10.244.0.2", json!({})),
    ];
    let mut slices = Vec::new();
    let mut name = names();
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    let actions = plan(&svc, &groups, &slices, &mut name);
    assert!(matches!(&actions[..], [Action::Create(_)]));
    apply(&mut slices, actions);
    let s = &slices[0];
    assert_eq!(ips(s), ["10.244.0.2", "10.244.0.3"], "ordered by address");
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(labels["team"], "a", "the Service's labels are copied");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Service", "svc-uid", Some(true))
    );
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );

    assert!(
        plan(&svc, &groups, &slices, &mut name).is_empty(),
        "nothing to do"
    );

    // b becomes unready: the same slice is updated.
    pods[1] = pod(
        "b",
        "10.244.0.2",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    let actions = plan(&svc, &groups, &slices, &mut name);
    assert!(
        matches!(&actions[..], [Action::Update(s)] if s.metadata.name.as_deref() == Some("web-1"))
    );
    apply(&mut slices, actions);
    // a goes: updated again, one endpoint left.
    pods.remove(0);
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    step(&svc, &groups, &mut slices, &mut name);
    assert_eq!(slices.len(), 1);
    assert_eq!(ips(&slices[0]), ["10.244.0.2"]);
}

#[test]
fn a_service_without_endpoints_keeps_one_empty_placeholder() {
    let svc = service(json!({}));
    let mut slices = Vec::new();
    let mut name = names();
    let none = desired(&svc, &[], no_node_info).unwrap();
    step(&svc, &none, &mut slices, &mut name);
    assert_eq!(slices.len(), 1);
    assert!(slices[0].endpoints.is_empty() && slices[0].ports.as_ref().is_some_and(Vec::is_empty));
    assert!(
        plan(&svc, &none, &slices, &mut name).is_empty(),
        "kept as is"
    );

    // Endpoints come: the placeholder goes for a slice with ports.
    let pods = [pod("a", "10.244.0.2", json!({}))];
    let some = desired(&svc, &pods, no_node_info).unwrap();
    step(&svc, &some, &mut slices, &mut name);
    assert_eq!(slices.len(), 1);
    assert_eq!(ips(&slices[0]), ["10.244.0.2"]);
    // And they go: the slice is emptied into the placeholder, not deleted.
    let actions = plan(&svc, &none, &slices, &mut name);
    assert!(matches!(&actions[..], [Action::Update(_)]));
    apply(&mut slices, actions);
    assert_eq!(slices.len(), 1);
    assert!(slices[0].endpoints.is_empty());
}

#[test]
fn large_services_split_at_a_hundred_and_new_endpoints_fill_room_first() {
    let svc = service(json!({}));
    let mut pods: Vec<Pod> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                json!({}),
            )
        })
        .collect();
    let mut slices = Vec::new();
    let mut name = names();
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    step(&svc, &groups, &mut slices, &mut name);
    let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100]);

    // Ten pods go from the first slice and five come: only the slices
    // that change are written, and nothing new is created.
    let gone: Vec<String> = slices[0].endpoints[..10]
        .iter()
        .map(|e| e.target_ref.as_ref().unwrap().name.clone().unwrap())
        .collect();
    pods.retain(|p| !gone.contains(p.metadata.name.as_ref().unwrap()));
    for i in 0..5 {
        pods.push(pod(
            &format!("new{i}"),
            &format!("10.244.9.{}", i + 1),
            json!({}),
        ));
    }
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    let actions = plan(&svc, &groups, &slices, &mut name);
    assert!(
        actions.iter().all(|a| matches!(a, Action::Update(_))),
        "{actions:?}"
    );
    assert!(actions.len() <= 2);
    apply(&mut slices, actions);
    let total: usize = slices.iter().map(|s| s.endpoints.len()).sum();
    assert_eq!(total, 245);
    assert!(slices
        .iter()
        .all(|s| s.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE));
}

#[test]
fn a_slice_of_a_port_list_no_longer_wanted_is_deleted() {
    let svc = service(json!({}));
    let mut slices = Vec::new();
    let mut name = names();
    let pods = [pod("a", "10.244.0.2", json!({}))];
    step(
        &svc,
        &desired(&svc, &pods, no_node_info).unwrap(),
        &mut slices,
        &mut name,
    );
    // The container port moves: a new slice for 9090, the 8080 one goes.
    let moved = [pod(
        "a",
        "10.244.0.2",
        json!({"spec": {"containers": [{"name": "c", "image": "i",
        "ports": [{"name": "http", "containerPort": 9090}]}]}}),
    )];
    let actions = plan(
        &svc,
        &desired(&svc, &moved, no_node_info).unwrap(),
        &slices,
        &mut name,
    );
    assert!(
        actions.contains(&Action::Delete("web-1".into())),
        "{actions:?}"
    );
    apply(&mut slices, actions);
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(9090));
}

#[test]
fn slices_follow_the_service_labels_and_a_recreated_service() {
    let svc = service(json!({}));
    let mut slices = Vec::new();
    let mut name = names();
    let pods = [pod("a", "10.244.0.2", json!({}))];
    let groups = desired(&svc, &pods, no_node_info).unwrap();
    step(&svc, &groups, &mut slices, &mut name);
    let again = service(json!({"metadata": {"uid": "new-uid", "labels": {"team": "b"}}}));
    let actions = plan(&again, &groups, &slices, &mut name);
    let [Action::Update(s)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].uid,
        "new-uid"
    );
    assert_eq!(s.metadata.labels.as_ref().unwrap()["team"], "b");
    let headless = service(json!({"spec": {"clusterIP": "None"}}));
    let labels: BTreeMap<String, String> = slice_labels(&headless);
    assert_eq!(labels.get(HEADLESS_LABEL).map(String::as_str), Some(""));
}
