//! The engine against the recording fake: what a full sync writes, and
//! that pod, label and namespace changes are element changes only while
//! a policy change touches only its own chains and the groups of the
//! pods it selects.

use std::sync::Arc;

use hostnet::nftables::{Batch, NfTables, Op, RecordingNfTables};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::pods::PodInfo;
use crate::ruleset::{addr, names, table, IpFamily, NodeConfig};

const NODE: &str = "n1";

fn node() -> NodeConfig {
    NodeConfig {
        node_name: NODE.into(),
        family: IpFamily::V4,
        guard_cidr: Some("10.244.1.0/24".parse().unwrap()),
    }
}

fn engine() -> (Arc<RecordingNfTables>, Engine) {
    let fake = Arc::new(RecordingNfTables::new());
    let e = Engine::new(fake.clone() as Arc<dyn NfTables>, node());
    (fake, e)
}

fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "web", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": ip, "phase": "Running"},
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .unwrap()
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.into(), name.into())
}

fn elems(fake: &RecordingNfTables, set: &str) -> Vec<hostnet::nftables::Value> {
    let mut v: Vec<_> = fake
        .elements(&table(IpFamily::V4), set)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    v.sort();
    v
}

fn ip(s: &str) -> hostnet::nftables::Value {
    addr(s.parse().unwrap())
}

fn chain_names(fake: &RecordingNfTables) -> Vec<String> {
    let chains = fake.chains(&table(IpFamily::V4)).unwrap();
    chains.into_iter().map(|c| c.name).collect()
}

fn last(fake: &RecordingNfTables) -> Batch {
    fake.batches().pop().unwrap()
}

/// Pods app=a of x take TCP from app=b in x and from namespaces team=y,
/// on port 80 and on the named port web.
fn allow_b() -> NetworkPolicy {
    policy(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": "b"}}},
                     {"namespaceSelector": {"matchLabels": {"team": "y"}}}],
            "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": "web"}]}]}),
    )
}

/// Two local pods in x (a: app=a, b: app=b), one remote in y, and a
/// policy in x: pods app=a take TCP from app=b in x and from namespaces
/// team=y, on port 80 and on the named port web.
fn cluster() -> (Arc<RecordingNfTables>, Engine, String) {
    let (fake, mut e) = engine();
    e.set_namespace("x", Some([("team".into(), "x".into())].into()));
    e.set_namespace("y", Some([("team".into(), "y".into())].into()));
    let a = pod("x", "a", "10.244.1.2", NODE, json!({"app": "a"}));
    let b = pod("x", "b", "10.244.1.3", NODE, json!({"app": "b"}));
    let c = pod("y", "c", "10.244.2.2", "n2", json!({"app": "c"}));
    e.set_pod(key("x", "a"), Some(&a));
    e.set_pod(key("x", "b"), Some(&b));
    e.set_pod(key("y", "c"), Some(&c));
    let np = allow_b();
    e.set_policy(key("x", "allow-b"), Some(&np));
    let id = crate::compile::compile(&np).id;
    (fake, e, id)
}

#[test]
fn a_full_sync_writes_the_table_with_every_policy_and_pod() {
    let (fake, mut e, id) = cluster();
    let o = e.sync().unwrap();
    assert!(o.full && o.applied);
    assert_eq!(
        elems(&fake, names::READY),
        vec![ip("10.244.1.2"), ip("10.244.1.3")]
    );
    assert_eq!(
        elems(&fake, names::INGRESS_ISOLATED),
        vec![ip("10.244.1.2")]
    );
    assert!(elems(&fake, names::EGRESS_ISOLATED).is_empty());
    // Peers: b by pod label, c by namespace label, one selector each.
    let peers = elems(&fake, names::PEERS);
    assert_eq!(peers.len(), 2, "{peers:?}");
    let named = elems(&fake, names::NAMED_PORTS);
    assert_eq!(named.len(), 1, "a's port web: {named:?}");
    assert!(named[0]
        .0
        .ends_with(&[10, 244, 1, 2, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]));
    let chains = chain_names(&fake);
    assert!(chains.contains(&format!("{id}/in")), "{chains:?}");
    // a's group has one policy: the map goes straight to its chain.
    assert!(
        !chains.iter().any(|c| c.starts_with("group/")),
        "{chains:?}"
    );
    assert_eq!(elems(&fake, names::POD_GROUP).len(), 2, "a and b");
    assert_eq!(elems(&fake, names::INGRESS_GROUPS).len(), 1, "a's group");
    assert!(elems(&fake, names::EGRESS_GROUPS).is_empty());
    let sets = last(&fake)
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::AddSet { .. }))
        .count();
    assert_eq!(sets, 8, "the shared sets only");
    assert!(
        !chains.contains(&format!("{id}/eg")),
        "no egress chain: {chains:?}"
    );
    // Nothing changed: nothing sent.
    let n = fake.batches().len();
    assert!(!e.sync().unwrap().applied);
    assert_eq!(fake.batches().len(), n);
}

#[test]
fn pods_and_labels_change_elements_only() {
    let (fake, mut e, id) = cluster();
    e.sync().unwrap();
    // A second pod selected by the same policy joins a's group.
    let a2 = pod("x", "a2", "10.244.1.4", NODE, json!({"app": "a"}));
    e.set_pod(key("x", "a2"), Some(&a2));
    assert!(e.sync().unwrap().applied);
    assert!(last(&fake).only_elements());
    e.set_pod(key("x", "a2"), None);
    e.sync().unwrap();
    assert!(last(&fake).only_elements());
    // A new pod b2 (app=b) on another node: one peer element.
    let b2 = pod("x", "b2", "10.244.3.9", "n3", json!({"app": "b"}));
    e.set_pod(key("x", "b2"), Some(&b2));
    let o = e.sync().unwrap();
    assert!(!o.full);
    assert_eq!(o.elements, 1);
    assert!(last(&fake).only_elements());
    // a relabelled: no longer selected, no longer isolated.
    let a = pod("x", "a", "10.244.1.2", NODE, json!({"app": "z"}));
    e.set_pod(key("x", "a"), Some(&a));
    e.sync().unwrap();
    assert!(last(&fake).only_elements());
    assert!(elems(&fake, names::INGRESS_ISOLATED).is_empty());
    // a's group had only a: it goes (its map element only: the policy's
    // chain stays).
    assert!(elems(&fake, names::INGRESS_GROUPS).is_empty());
    assert!(chain_names(&fake).contains(&format!("{id}/in")));
    // Namespace y loses its label: c leaves the peers.
    let before = elems(&fake, names::PEERS);
    e.set_namespace("y", Some([("team".into(), "other".into())].into()));
    e.sync().unwrap();
    assert!(last(&fake).only_elements());
    let after = elems(&fake, names::PEERS);
    assert_eq!((before.len(), after.len()), (3, 2), "{after:?}");
    // A pod deleted leaves ready.
    e.set_pod(key("x", "b"), None);
    e.sync().unwrap();
    assert_eq!(elems(&fake, names::READY), vec![ip("10.244.1.2")]);
}

#[test]
fn a_policy_change_touches_its_own_chains_and_its_pods_groups_only() {
    let (fake, mut e, old) = cluster();
    let other = policy(
        "x",
        "deny-eg",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    e.set_policy(key("x", "deny-eg"), Some(&other));
    e.sync().unwrap();
    let other_id = crate::compile::compile(&other).id;
    // allow-b changes port: its chain is replaced, deny-eg's is not touched.
    let np = policy(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"ports": [{"port": 81}]}]}),
    );
    e.set_policy(key("x", "allow-b"), Some(&np));
    let new = crate::compile::compile(&np).id;
    let o = e.sync().unwrap();
    assert_eq!(
        (o.full, o.policies_added, o.policies_removed),
        (false, 1, 1)
    );
    let b = last(&fake);
    for op in b.ops() {
        let touched = match op {
            Op::AddChain { chain, .. } => chain.name.clone(),
            Op::AddRule { chain, .. }
            | Op::FlushChain { chain, .. }
            | Op::DeleteChain { chain, .. } => chain.clone(),
            Op::AddSet { set, .. } => set.name.clone(),
            Op::DeleteSet { set, .. } => set.clone(),
            Op::AddElements { set, .. } | Op::DeleteElements { set, .. } => set.name.clone(),
            Op::AddTable(_) | Op::DeleteTable(_) => panic!("table recreated: {op:?}"),
        };
        assert!(
            touched.starts_with(&new)
                || touched.starts_with(&old)
                || touched.starts_with("group/")
                || [
                    names::INGRESS_ISOLATED,
                    names::PEERS,
                    names::NAMED_PORTS,
                    names::POD_GROUP,
                    names::INGRESS_GROUPS,
                    names::EGRESS_GROUPS
                ]
                .contains(&touched.as_str()),
            "{op:?} touches {touched}"
        );
        assert!(!touched.starts_with(&other_id), "{op:?}");
    }
    let chains = chain_names(&fake);
    assert!(chains.contains(&format!("{new}/in")) && !chains.contains(&format!("{old}/in")));
    // a is in both policies' group, b in deny-eg's alone: one map element
    // per group and direction, straight to a policy's chain (each
    // direction has one): no group chain.
    assert_eq!(elems(&fake, names::INGRESS_GROUPS).len(), 1);
    assert_eq!(elems(&fake, names::EGRESS_GROUPS).len(), 2);
    // A second ingress policy for a: its group gets a chain.
    let more = policy(
        "x",
        "more",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"ports": [{"port": 82}]}]}),
    );
    e.set_policy(key("x", "more"), Some(&more));
    let o = e.sync().unwrap();
    assert_eq!((o.groups_added, o.groups_removed), (1, 1));
    let chains = chain_names(&fake);
    let group: Vec<&String> = chains.iter().filter(|c| c.starts_with("group/")).collect();
    assert_eq!(group.len(), 1, "{chains:?}");
    assert!(group[0].ends_with("/in"));
    e.set_policy(key("x", "more"), None);
    e.sync().unwrap();
    assert!(!chain_names(&fake).iter().any(|c| c.starts_with("group/")));
    // Removing a policy deletes its chains; a joins b's group.
    e.set_policy(key("x", "allow-b"), None);
    e.sync().unwrap();
    let chains = chain_names(&fake);
    assert!(!chains.iter().any(|c| c.starts_with(&new)), "{chains:?}");
    assert!(
        chains.contains(&format!("{other_id}/eg")),
        "deny-eg stays: {chains:?}"
    );
    assert!(elems(&fake, names::INGRESS_GROUPS).is_empty());
    assert_eq!(elems(&fake, names::EGRESS_GROUPS).len(), 1);
    assert!(elems(&fake, names::PEERS).is_empty());
}

#[test]
fn policies_naming_the_same_peers_share_their_elements_and_sets() {
    let (fake, mut e) = engine();
    e.set_namespace("x", Some([("team".into(), "x".into())].into()));
    for (name, ip) in [("a", "10.244.1.2"), ("b", "10.244.1.3")] {
        let p = pod("x", name, ip, NODE, json!({"app": name}));
        e.set_pod(key("x", name), Some(&p));
    }
    let spec = |port: u16| {
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": "b"}}},
                     {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
            "ports": [{"port": port}]}]})
    };
    for (name, port) in [("p1", 80), ("p2", 81)] {
        e.set_policy(key("x", name), Some(&policy("x", name, spec(port))));
    }
    e.sync().unwrap();
    assert_eq!(elems(&fake, names::PEERS).len(), 1, "b, once");
    let cidr_sets = last(&fake)
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::AddSet { set, .. } if set.name.starts_with("cidrs/")))
        .count();
    assert_eq!(cidr_sets, 1);
    // One goes: the shared element and set stay for the other.
    e.set_policy(key("x", "p1"), None);
    e.sync().unwrap();
    assert_eq!(elems(&fake, names::PEERS).len(), 1);
    assert!(!last(&fake)
        .ops()
        .iter()
        .any(|op| matches!(op, Op::DeleteSet { .. })));
    e.set_policy(key("x", "p2"), None);
    e.sync().unwrap();
    assert!(elems(&fake, names::PEERS).is_empty());
    assert!(last(&fake)
        .ops()
        .iter()
        .any(|op| matches!(op, Op::DeleteSet { set, .. } if set.starts_with("cidrs/"))));
}

#[test]
fn a_policy_removed_and_added_back_before_a_sync_sends_nothing() {
    let (fake, mut e, _) = cluster();
    e.sync().unwrap();
    let np = allow_b();
    e.set_policy(key("x", "allow-b"), None);
    e.set_policy(key("x", "allow-b"), Some(&np));
    let n = fake.batches().len();
    assert!(!e.dirty());
    assert!(!e.sync().unwrap().applied);
    assert_eq!(fake.batches().len(), n);
}

#[test]
fn the_gate_programs_a_pod_before_its_status_has_an_address() {
    let (fake, mut e, _) = cluster();
    e.sync().unwrap();
    let mut fresh = pod("x", "new", "", NODE, json!({"app": "a"}));
    fresh.status = None;
    e.pod_networked(&fresh, "10.244.1.7".parse().unwrap());
    e.sync().unwrap();
    assert!(elems(&fake, names::READY).contains(&ip("10.244.1.7")));
    assert!(elems(&fake, names::INGRESS_ISOLATED).contains(&ip("10.244.1.7")));
    // The watch then delivers the pod without a status: the address stays.
    e.set_pod(key("x", "new"), Some(&fresh));
    assert!(!e.dirty());
}

#[test]
fn a_failed_apply_makes_the_next_sync_full_and_the_canary_notices_a_flush() {
    let (fake, mut e, _) = cluster();
    e.sync().unwrap();
    fake.state.lock().unwrap().fail_next = Some(libc_enobufs());
    e.set_pod(key("x", "b"), None);
    assert!(e.sync().is_err());
    assert!(e.next_is_full());
    assert!(e.sync().unwrap().full);
    assert!(e.check_canary());
    fake.remove_table(&table(IpFamily::V4));
    assert!(!e.check_canary());
    assert!(e.sync().unwrap().full);
    assert_eq!(elems(&fake, names::READY), vec![ip("10.244.1.2")]);
}

fn libc_enobufs() -> i32 {
    105
}

#[test]
fn finished_host_network_and_remote_pods_are_not_isolated_here() {
    let mut p = pod("x", "h", "10.0.0.1", NODE, json!({}));
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert!(!PodInfo::of(&p, NODE, None, IpFamily::V4).local);
    let remote = pod("x", "r", "10.244.2.2", "n2", json!({}));
    assert!(!PodInfo::of(&remote, NODE, None, IpFamily::V4).local);
    let mut done = pod("x", "d", "10.244.1.9", NODE, json!({}));
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert_eq!(PodInfo::of(&done, NODE, None, IpFamily::V4).ip, None);
}

#[test]
fn two_pods_sharing_an_address_for_a_moment_keep_one_value_per_map_key() {
    let (fake, mut e, _) = cluster();
    e.sync().unwrap();
    let value = |fake: &RecordingNfTables| {
        let found = fake
            .elements(&table(IpFamily::V4), names::POD_GROUP)
            .unwrap();
        found
            .into_iter()
            .find(|el| el.key == ip("10.244.1.2"))
            .and_then(|el| el.data)
    };
    let x = value(&fake);
    // x/a is deleted but its object not yet gone; its address is reused
    // by y/new: the map holds y/new's group (0: no policy selects it),
    // x/a's comes back if y/new goes.
    let reuse = pod("y", "new", "10.244.1.2", NODE, json!({}));
    e.set_pod(key("y", "new"), Some(&reuse));
    e.sync().unwrap();
    let b = last(&fake);
    let ops: Vec<&str> = b
        .ops()
        .iter()
        .filter_map(|op| match op {
            Op::DeleteElements { set, .. } if set.name == names::POD_GROUP => Some("delete"),
            Op::AddElements { set, .. } if set.name == names::POD_GROUP => Some("add"),
            _ => None,
        })
        .collect();
    assert_eq!(ops, ["delete", "add"], "a changed value is replaced");
    let y = value(&fake);
    assert_ne!(x, y);
    e.set_pod(key("y", "new"), None);
    e.sync().unwrap();
    assert_eq!(value(&fake), x);
    e.set_pod(key("x", "a"), None);
    e.sync().unwrap();
    assert_eq!(value(&fake), None);
    assert!(!elems(&fake, names::READY).contains(&ip("10.244.1.2")));
}

#[test]
fn a_stripped_pod_is_seen_the_same() {
    let mut rich = pod("x", "a", "10.244.0.5", "n1", json!({"app": "a"}));
    rich.metadata.annotations = Some([("k".to_string(), "v".to_string())].into());
    if let Some(spec) = rich.spec.as_mut() {
        spec.containers[0].image = Some("nginx".into());
        spec.init_containers = Some(vec![serde_json::from_value(json!({"name": "i",
            "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"containerPort": 1}]}))
        .unwrap()]);
    }
    let mut o = controlplane::Object::from(rich.clone());
    crate::pods::strip_pod(&mut o);
    let controlplane::Object::Pod(stripped) = o else {
        panic!("a pod")
    };
    let info = |p: &Pod| crate::pods::PodInfo::of(p, "n1", None, IpFamily::V4);
    assert_eq!(info(&stripped), info(&rich));
    assert_eq!(info(&rich).ports.len(), 2);
    assert!(stripped.metadata.annotations.is_none());
}
