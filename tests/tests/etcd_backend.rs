//! The etcd backend against real etcd (3.4), through the typed
//! ControlPlane a component sees: compare-and-set, concurrent ClusterIP and
//! NodePort allocation, TTL leases, watches across compaction, and writes
//! surviving the loss of a member. Each test starts its own etcd on
//! loopback ports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::api::ControlPlane;
use controlplane::api::Expiry;
use controlplane::registry::{Allocators, Registry};
use controlplane::storage::embedded::Embedded;
use controlplane::storage::etcd::Etcd;
use controlplane::storage::{Precondition, RawEvent, Storage, Stored, Write, WriteError};
use controlplane::{Error, Kind, Object, ObjectRef, Scope, Watch, WatchEvent};
use knode_tests::etcd::{require_etcd, EtcdCluster};
use knode_tests::TempDir;
use serde_json::json;

/// A registry over etcd at `endpoints`, bootstrapped.
async fn registry(endpoints: &[String]) -> Arc<Registry> {
    let etcd = Etcd::connect(endpoints).await.expect("connect to etcd");
    let r = Registry::new(Arc::new(etcd), Allocators::default());
    r.bootstrap().await.expect("bootstrap");
    Arc::new(r)
}

/// A one-member etcd and a registry over it, or `None` to skip.
async fn single(test: &str) -> Option<(EtcdCluster, Arc<Registry>)> {
    if !require_etcd(test) {
        return None;
    }
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let r = registry(&cluster.endpoints()).await;
    Some((cluster, r))
}

fn config_map(name: &str, value: &str) -> Object {
    Object::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"value": value}
    }))
    .expect("a ConfigMap")
}

fn service(name: &str, node_port: bool, cluster_ip: Option<&str>) -> Object {
    let mut spec = json!({
        "type": if node_port { "NodePort" } else { "ClusterIP" },
        "selector": {"app": name},
        "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]
    });
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    Object::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    }))
    .expect("a Service")
}

fn lease(name: &str) -> Object {
    Object::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 2}
    }))
    .expect("a Lease")
}

fn cluster_ip(o: &Object) -> String {
    let Object::Service(s) = o else {
        panic!("not a Service: {o:?}")
    };
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("a ClusterIP")
}

fn node_ports(o: &Object) -> Vec<i32> {
    let Object::Service(s) = o else {
        panic!("not a Service: {o:?}")
    };
    s.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| p.node_port)
        .collect()
}

fn revision(o: &Object) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("a numeric resourceVersion")
}

fn cm_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::ConfigMap, "default", name)
}

/// The next watch event, failing the test after `within`.
async fn next_event(w: &mut Watch, within: Duration) -> Option<Result<WatchEvent, Error>> {
    tokio::time::timeout(within, w.next())
        .await
        .expect("a watch event in time")
}

/// `(type, name)` of an event, for assertions.
fn summary(ev: &WatchEvent) -> (&'static str, String) {
    (ev.type_name(), ev.object().name().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_lets_one_of_two_writers_win() {
    let Some((_etcd, cp)) = single("compare_and_set_lets_one_of_two_writers_win").await else {
        return;
    };
    let created = cp.create(config_map("cas", "0"), None).await.unwrap();
    let read = cp.get(&cm_ref("cas")).await.unwrap();
    assert_eq!(revision(&read), revision(&created));

    // Two writers from the same read: exactly one wins.
    let (a, b) = (config_map_at(&read, "a"), config_map_at(&read, "b"));
    let (ra, rb) = tokio::join!(cp.update(a, None), cp.update(b, None));
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("want one winner and one conflict, got {other:?}"),
    };
    assert!(lost.is_conflict(), "the loser gets Conflict, got {lost:?}");
    assert!(revision(&won) > revision(&read));
    let now = cp.get(&cm_ref("cas")).await.unwrap();
    assert_eq!(revision(&now), revision(&won));

    // A delete from the stale read is refused too; from the fresh one it works.
    let stale = cp.delete(&cm_ref("cas"), Some(revision(&read))).await;
    assert!(
        matches!(&stale, Err(e) if e.is_conflict()),
        "stale delete: {stale:?}"
    );
    let gone = cp
        .delete(&cm_ref("cas"), Some(revision(&now)))
        .await
        .unwrap();
    assert_eq!(gone.name(), "cas");
    let after = cp.get(&cm_ref("cas")).await;
    assert!(matches!(&after, Err(e) if e.is_not_found()), "{after:?}");
    // Deleting what is gone is NotFound, not Conflict.
    let again = cp.delete(&cm_ref("cas"), Some(revision(&now))).await;
    assert!(matches!(&again, Err(e) if e.is_not_found()), "{again:?}");
}

/// `read` with its data set to `value`, keeping its resourceVersion.
fn config_map_at(read: &Object, value: &str) -> Object {
    let mut v = read.to_value();
    v["data"]["value"] = json!(value);
    Object::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_services_get_distinct_ips_and_ports() {
    let Some((_etcd, cp)) = single("concurrent_services_get_distinct_ips_and_ports").await else {
        return;
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cp = cp.clone();
        tasks.push(tokio::spawn(async move {
            cp.create(service(&format!("svc-{i}"), i % 4 == 0, None), None)
                .await
        }));
    }
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut with_ports = 0;
    for t in tasks {
        let svc = t.await.unwrap().expect("every Service is created");
        ips.insert(cluster_ip(&svc));
        let p = node_ports(&svc);
        if !p.is_empty() {
            with_ports += 1;
        }
        ports.extend(p);
    }
    eprintln!("100 concurrent Service creates took {:?}", start.elapsed());
    assert_eq!(ips.len(), 100, "100 distinct ClusterIPs");
    assert_eq!(with_ports, 25);
    assert_eq!(ports.len(), 25, "distinct NodePorts: {ports:?}");

    // What is stored agrees with what the creates answered.
    let listed = cp
        .list(&Scope::namespaced(Kind::Service, "default"))
        .await
        .unwrap();
    let stored: BTreeSet<String> = listed
        .items
        .iter()
        .filter(|o| o.name() != "kubernetes")
        .map(cluster_ip)
        .collect();
    assert_eq!(stored, ips);

    // Asking for a taken ClusterIP is refused with the field named.
    let taken = ips.iter().next().unwrap().clone();
    let err = cp
        .create(service("wants-taken", false, Some(&taken)), None)
        .await
        .expect_err("a taken ClusterIP is refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(msg.contains("spec.clusterIP"), "{msg}");
    assert!(msg.contains("already allocated"), "{msg}");

    // Deleting its owner frees it for the next Service that asks.
    let owner = listed
        .items
        .iter()
        .find(|s| cluster_ip(s) == taken)
        .unwrap();
    cp.delete(&ObjectRef::of(owner), None).await.unwrap();
    let reused = cp
        .create(service("wants-taken", false, Some(&taken)), None)
        .await
        .expect("the freed ClusterIP can be requested");
    assert_eq!(cluster_ip(&reused), taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_unless_renewed() {
    let Some((_etcd, cp)) = single("leases_expire_unless_renewed").await else {
        return;
    };
    let scope = Scope::namespaced(Kind::Lease, "default");
    let from = cp.list(&scope).await.unwrap().revision;
    let mut watch = cp.watch(&scope, from).await.unwrap();
    let ttl = Some(Duration::from_secs(2));

    let created = Instant::now();
    cp.create(lease("lapses"), ttl).await.unwrap();
    let mut renewed = cp.create(lease("renewed"), ttl).await.unwrap();
    // An update without a TTL makes an object permanent ...
    let pinned = cp.create(lease("pinned"), ttl).await.unwrap();
    cp.update(pinned, None).await.unwrap();
    // ... and a status write keeps its expiry as it was.
    let node = Object::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    let node = cp.create(node, ttl).await.unwrap();
    cp.update_status(node).await.unwrap();
    let renewer = {
        let cp = cp.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                renewed = cp.update(renewed, ttl).await.expect("renew the lease");
            }
            renewed
        })
    };

    // "lapses" is added then deleted without anyone touching it; "renewed"
    // is only ever added and modified.
    let mut seen = Vec::new();
    let mut lapsed_after = None;
    while created.elapsed() < Duration::from_secs(6) && lapsed_after.is_none() {
        let left = Duration::from_secs(6).saturating_sub(created.elapsed());
        let Ok(ev) = tokio::time::timeout(left, watch.next()).await else {
            break;
        };
        let ev = ev.expect("the watch stays open").expect("no watch error");
        let s = summary(&ev);
        assert_ne!(
            s,
            ("DELETED", "renewed".to_string()),
            "the renewed lease expired"
        );
        assert_ne!(
            s,
            ("DELETED", "pinned".to_string()),
            "the pinned lease expired"
        );
        if s == ("DELETED", "lapses".to_string()) {
            lapsed_after = Some(created.elapsed());
        }
        seen.push(s);
    }
    let lapsed_after = lapsed_after
        .unwrap_or_else(|| panic!("no DELETED for the lapsing lease within 6 s; saw {seen:?}"));
    eprintln!("the unrenewed 2 s lease was deleted after {lapsed_after:?}");
    assert!(
        lapsed_after >= Duration::from_millis(1500),
        "deleted too early: {lapsed_after:?}"
    );
    assert_eq!(seen.first(), Some(&("ADDED", "lapses".to_string())));
    assert!(seen.contains(&("ADDED", "renewed".to_string())));

    let last = renewer.await.unwrap();
    assert!(created.elapsed() >= Duration::from_secs(5));
    let alive = cp
        .get(&ObjectRef::new(Kind::Lease, "default", "renewed"))
        .await
        .expect("the renewed lease is still there after 5 s");
    assert_eq!(revision(&alive), revision(&last));
    // No late deletion of it either.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        let s = summary(&ev.expect("no watch error"));
        assert_ne!(s, ("DELETED", "renewed".to_string()));
        assert_ne!(s, ("DELETED", "pinned".to_string()));
    }
    cp.get(&ObjectRef::new(Kind::Lease, "default", "pinned"))
        .await
        .expect("the lease updated without a TTL stays");
    let node = cp.get(&ObjectRef::new(Kind::Node, "", "node-1")).await;
    assert!(
        matches!(&node, Err(e) if e.is_not_found()),
        "a status write does not renew: {node:?}"
    );
    let gone = cp
        .get(&ObjectRef::new(Kind::Lease, "default", "lapses"))
        .await;
    assert!(matches!(&gone, Err(e) if e.is_not_found()), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_or_report_compaction() {
    let Some((etcd, cp)) = single("watches_resume_or_report_compaction").await else {
        return;
    };
    let scope = Scope::namespaced(Kind::ConfigMap, "default");
    let old = cp.list(&scope).await.unwrap().revision;
    for i in 0..5 {
        cp.create(config_map(&format!("early-{i}"), "x"), None)
            .await
            .unwrap();
    }
    let now = cp.list(&scope).await.unwrap().revision;
    assert!(now > old + 1);
    etcd.compact(now).unwrap();

    // From before the compaction: told so, at once or as the first event.
    let outcome = match cp.watch(&scope, old).await {
        Err(e) => e,
        Ok(mut w) => match next_event(&mut w, Duration::from_secs(5)).await {
            Some(Err(e)) => e,
            other => panic!("want Compacted from a compacted revision, got {other:?}"),
        },
    };
    match outcome {
        Error::Compacted { requested, oldest } => {
            assert_eq!(requested, old);
            assert!(oldest > old, "oldest {oldest} must be past {old}");
        }
        e => panic!("want Compacted, got {e:?}"),
    }

    // From a recent revision: exactly what happened since, in order.
    let recent = cp.list(&scope).await.unwrap().revision;
    for i in 0..3 {
        cp.create(config_map(&format!("late-{i}"), "x"), None)
            .await
            .unwrap();
    }
    let current = cp.get(&cm_ref("late-1")).await.unwrap();
    cp.update(config_map_at(&current, "y"), None).await.unwrap();
    cp.delete(&cm_ref("early-0"), None).await.unwrap();
    // Not in scope: must not show up.
    cp.create(lease("elsewhere"), None).await.unwrap();

    let mut w = cp.watch(&scope, recent).await.unwrap();
    let mut got = Vec::new();
    let mut last_rev = recent;
    for _ in 0..5 {
        let ev = next_event(&mut w, Duration::from_secs(5))
            .await
            .expect("the watch stays open")
            .expect("no watch error");
        let rev = revision(ev.object());
        assert!(rev > last_rev, "revisions increase: {rev} after {last_rev}");
        last_rev = rev;
        got.push(summary(&ev));
    }
    let want: Vec<(&str, String)> = vec![
        ("ADDED", "late-0".into()),
        ("ADDED", "late-1".into()),
        ("ADDED", "late-2".into()),
        ("MODIFIED", "late-1".into()),
        ("DELETED", "early-0".into()),
    ];
    assert_eq!(got, want);
    let extra = tokio::time::timeout(Duration::from_millis(500), w.next()).await;
    assert!(extra.is_err(), "no more events, got {extra:?}");

    // The watch keeps delivering what happens next.
    cp.create(config_map("later", "z"), None).await.unwrap();
    let ev = next_event(&mut w, Duration::from_secs(5))
        .await
        .expect("the watch stays open")
        .expect("no watch error");
    assert_eq!(summary(&ev), ("ADDED", "later".to_string()));
}

/// Creates `obj` until the cluster acknowledges it (a few seconds of
/// failover allowed); a create whose answer was lost may have happened,
/// which a later AlreadyExists with our data proves.
async fn create_acknowledged(cp: &Registry, obj: Object, deadline: Instant) -> (Object, usize) {
    let what = ObjectRef::of(&obj);
    let mut retries = 0;
    loop {
        match cp.create(obj.clone(), None).await {
            Ok(o) => return (o, retries),
            Err(Error::AlreadyExists { .. }) if retries > 0 => {
                let o = cp.get(&what).await.expect("read back an ambiguous create");
                assert_eq!(o.to_value()["data"], obj.to_value()["data"]);
                return (o, retries);
            }
            Err(Error::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("create {what}: {e}; retrying");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create {what} was never acknowledged: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_losing_a_member() {
    if !require_etcd("writes_survive_losing_a_member") {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("start a 3-member etcd");
    // Lose the leader, the hardest member to lose, and the one the client
    // talks to (it starts with the first endpoint).
    let leader = etcd.leader().expect("find the leader");
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(leader);
    let cp = registry(&endpoints).await;
    for i in 0..5 {
        cp.create(config_map(&format!("before-{i}"), "x"), None)
            .await
            .unwrap();
    }

    // A watch served by the member about to die.
    let scope = Scope::namespaced(Kind::ConfigMap, "default");
    let before = cp.list(&scope).await.unwrap().revision;
    let mut watch = cp.watch(&scope, before).await.unwrap();

    etcd.kill(leader).unwrap();
    let killed = Instant::now();

    let mut retries = 0;
    let mut acked = Vec::new();
    for i in 0..20 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (o, r) = create_acknowledged(
            &cp,
            config_map(&format!("after-{i}"), &i.to_string()),
            deadline,
        )
        .await;
        retries += r;
        acked.push(o);
    }
    eprintln!(
        "20 writes after killing leader m{leader} acknowledged in {:?} with {retries} retries",
        killed.elapsed()
    );
    for o in &acked {
        let got = cp
            .get(&ObjectRef::of(o))
            .await
            .expect("an acknowledged write is readable");
        assert_eq!(got.to_value()["data"], o.to_value()["data"]);
    }
    let listed = cp
        .list(&Scope::namespaced(Kind::ConfigMap, "default"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 25);

    // The watch on the dead member ends with an error (its consumer
    // relists); one from the same revision now delivers every write.
    match next_event(&mut watch, Duration::from_secs(20)).await {
        Some(Err(Error::Unavailable(e))) => eprintln!("the watch on m{leader} ended: {e}"),
        other => panic!("want the watch on the killed member to fail, got {other:?}"),
    }
    let mut watch = cp.watch(&scope, before).await.unwrap();
    for i in 0..20 {
        let ev = next_event(&mut watch, Duration::from_secs(5))
            .await
            .expect("the new watch stays open")
            .expect("no watch error");
        assert_eq!(summary(&ev), ("ADDED", format!("after-{i}")));
    }

    // A client that starts now, with the dead member first in its list,
    // fails over to the live ones.
    let fresh = registry(&endpoints).await;
    for i in 0..10 {
        let deadline = Instant::now() + Duration::from_secs(20);
        create_acknowledged(&fresh, config_map(&format!("fresh-{i}"), "y"), deadline).await;
    }
    let listed = fresh
        .list(&Scope::namespaced(Kind::ConfigMap, "default"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 35);
}

/// One storage outcome with the store's own revisions taken out, so that
/// the embedded store and etcd can be compared step by step.
#[derive(Debug, PartialEq)]
enum Outcome {
    Written,
    Deleted {
        key: String,
        value: Vec<u8>,
    },
    Exists,
    NotFound,
    /// Carrying whether `current` is the key's stored revision.
    RevisionMismatch {
        current_is_stored: bool,
    },
    ClaimTaken {
        claim: String,
        owner: String,
    },
}

fn put(
    key: &str,
    value: &str,
    precondition: Precondition,
    claim: &[&str],
    release: &[&str],
) -> Write {
    Write {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        precondition,
        expiry: Expiry::Never,
        claim: claim.iter().map(|c| c.to_string()).collect(),
        release: release.iter().map(|c| c.to_string()).collect(),
    }
}

/// Runs one script of writes, deletes and reads against `s`; returns what
/// each step did and the events a watch from the start saw.
async fn script(
    s: &dyn Storage,
) -> (
    Vec<Outcome>,
    Vec<(String, String, bool)>,
    Vec<(String, Vec<u8>)>,
) {
    let (_, start) = s.list("obj/").await.unwrap();
    let mut out = Vec::new();
    async fn outcome(s: &dyn Storage, key: &str, r: Result<u64, WriteError>) -> Outcome {
        match r {
            Ok(rev) => {
                let stored = s.get(key).await.unwrap().expect("a written key is there");
                assert_eq!(stored.revision, rev, "write returns the stored revision");
                Outcome::Written
            }
            Err(WriteError::Exists) => Outcome::Exists,
            Err(WriteError::NotFound) => Outcome::NotFound,
            Err(WriteError::RevisionMismatch { current }) => {
                let stored = s.get(key).await.unwrap().map(|s| s.revision);
                Outcome::RevisionMismatch {
                    current_is_stored: stored == Some(current),
                }
            }
            Err(WriteError::ClaimTaken { claim, owner }) => Outcome::ClaimTaken { claim, owner },
            Err(WriteError::Other(e)) => panic!("storage failed: {e}"),
        }
    }
    let steps = vec![
        put("obj/a", "a1", Precondition::Absent, &["claims/x/1"], &[]),
        put("obj/b", "b1", Precondition::Absent, &["claims/x/1"], &[]),
        put("obj/a", "a1", Precondition::Absent, &[], &[]),
        put("obj/c", "c1", Precondition::Exists, &[], &[]),
        put("obj/c", "c1", Precondition::Revision(1), &[], &[]),
        // A claim the writer already holds may be claimed again.
        put(
            "obj/a",
            "a2",
            Precondition::Exists,
            &["claims/x/1", "claims/x/2"],
            &[],
        ),
        put("obj/a", "a3", Precondition::Exists, &[], &["claims/x/1"]),
        put(
            "obj/b",
            "b1",
            Precondition::Absent,
            &["claims/x/1", "claims/x/1"],
            &[],
        ),
        put("obj/c", "c1", Precondition::Absent, &["claims/x/2"], &[]),
    ];
    for w in steps {
        let key = w.key.clone();
        let r = s.write(w).await;
        out.push(outcome(s, &key, r).await);
    }
    // Revision preconditions, stale and fresh.
    let a = s.get("obj/a").await.unwrap().unwrap();
    let r = s
        .write(put(
            "obj/a",
            "a4",
            Precondition::Revision(a.revision - 1),
            &[],
            &[],
        ))
        .await;
    out.push(outcome(s, "obj/a", r).await);
    let r = s
        .write(put(
            "obj/a",
            "a4",
            Precondition::Revision(a.revision),
            &[],
            &[],
        ))
        .await;
    out.push(outcome(s, "obj/a", r).await);
    // Keep on a key being created keeps nothing and works.
    let mut keep = put("obj/d", "d1", Precondition::Absent, &[], &[]);
    keep.expiry = Expiry::Keep;
    let r = s.write(keep).await;
    out.push(outcome(s, "obj/d", r).await);

    // Deletes: stale revision, right revision with a release, then again.
    let a = s.get("obj/a").await.unwrap().unwrap();
    let del = |r: Result<(Stored, u64), WriteError>| match r {
        Ok((last, _)) => Outcome::Deleted {
            key: last.key,
            value: last.value,
        },
        Err(WriteError::NotFound) => Outcome::NotFound,
        Err(WriteError::RevisionMismatch { current }) => Outcome::RevisionMismatch {
            current_is_stored: current == a.revision,
        },
        Err(e) => panic!("delete: {e}"),
    };
    out.push(del(s.delete("obj/a", Some(a.revision - 1), vec![]).await));
    let r = s
        .delete("obj/a", Some(a.revision), vec!["claims/x/2".into()])
        .await;
    if let Ok((last, rev)) = &r {
        assert_eq!(last.revision, a.revision, "the deleted value's revision");
        assert!(*rev > a.revision, "the deletion's revision");
    }
    out.push(del(r));
    out.push(del(s.delete("obj/a", None, vec![]).await));

    let (claims, _) = s.list("claims/").await.unwrap();
    let claims = claims.into_iter().map(|c| (c.key, c.value)).collect();

    let mut w = s.watch("obj/", start).await.unwrap();
    let mut events = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), w.recv()).await {
        events.push(match ev.expect("no watch error") {
            RawEvent::Put { stored, created } => (
                "put".to_string(),
                format!("{}={}", stored.key, String::from_utf8_lossy(&stored.value)),
                created,
            ),
            RawEvent::Delete { last, .. } => (
                "delete".to_string(),
                format!("{}={}", last.key, String::from_utf8_lossy(&last.value)),
                false,
            ),
        });
    }
    (out, events, claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_behaves_like_the_embedded_store() {
    if !require_etcd("storage_behaves_like_the_embedded_store") {
        return;
    }
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let etcd = Etcd::connect(&cluster.endpoints()).await.unwrap();
    let dir = TempDir::new("embedded-parity").unwrap();
    let embedded = Embedded::open(dir.path()).unwrap();

    let (want, want_events, want_claims) = script(&embedded).await;
    let (got, got_events, got_claims) = script(&etcd).await;
    assert_eq!(got, want, "step outcomes");
    assert_eq!(got_events, want_events, "watch events");
    assert_eq!(got_claims, want_claims, "claims left");
    // The script means what it says (not two stores wrong the same way).
    use Outcome::{Exists, NotFound, Written};
    let taken = |claim: &str| Outcome::ClaimTaken {
        claim: claim.into(),
        owner: "obj/a".into(),
    };
    let mismatch = || Outcome::RevisionMismatch {
        current_is_stored: true,
    };
    let deleted = Outcome::Deleted {
        key: "obj/a".into(),
        value: b"a4".to_vec(),
    };
    #[rustfmt::skip]
    let script = vec![
        Written, taken("claims/x/1"), Exists, NotFound, NotFound, Written,
        Written, Written, taken("claims/x/2"), mismatch(), Written, Written,
        mismatch(), deleted, NotFound,
    ];
    assert_eq!(want, script);
    let put = |kv: &str, created| ("put".to_string(), kv.to_string(), created);
    assert_eq!(
        want_events,
        vec![
            put("obj/a=a1", true),
            put("obj/a=a2", false),
            put("obj/a=a3", false),
            put("obj/b=b1", true),
            put("obj/a=a4", false),
            put("obj/d=d1", true),
            ("delete".to_string(), "obj/a=a4".to_string(), false),
        ]
    );
    assert_eq!(
        want_claims,
        vec![("claims/x/1".to_string(), b"obj/b".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_large_prefixes() {
    if !require_etcd("lists_page_through_large_prefixes") {
        return;
    }
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let etcd = Arc::new(Etcd::connect(&cluster.endpoints()).await.unwrap());
    let n = 1234;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let etcd = etcd.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                etcd.write(put(
                    &format!("many/{i:05}"),
                    &"v".repeat(100),
                    Precondition::Absent,
                    &[],
                    &[],
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Beside the prefix, not in it.
    etcd.write(put("many0", "x", Precondition::Absent, &[], &[]))
        .await
        .unwrap();
    let (items, rev) = etcd.list("many/").await.unwrap();
    assert_eq!(items.len(), n);
    let keys: Vec<String> = (0..n).map(|i| format!("many/{i:05}")).collect();
    let got: Vec<String> = items.iter().map(|s| s.key.clone()).collect();
    assert_eq!(got, keys, "every key once, in key order");
    assert!(items.iter().all(|s| s.revision <= rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_costs_one_timeout_not_one_per_request() {
    if !require_etcd("a_hung_member_costs_one_timeout_not_one_per_request") {
        return;
    }
    let etcd = EtcdCluster::start(3).expect("start a 3-member etcd");
    // Hang a follower (the cluster keeps its quorum and leader), and give
    // it to the client first: that is the member it starts talking to.
    let leader = etcd.leader().expect("find the leader");
    let hung = (leader + 1) % 3;
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(hung);
    let cp = registry(&endpoints).await;
    etcd.pause(hung).unwrap();

    let start = Instant::now();
    let mut slow = Vec::new();
    for i in 0..15 {
        let t = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        create_acknowledged(&cp, config_map(&format!("c{i}"), "x"), deadline).await;
        cp.get(&cm_ref(&format!("c{i}"))).await.unwrap();
        if t.elapsed() > Duration::from_secs(1) {
            slow.push((i, t.elapsed()));
        }
    }
    eprintln!(
        "15 writes+reads with m{hung} hung took {:?}; slow ones: {slow:?}",
        start.elapsed()
    );
    // The first request waits out one request timeout on the hung member;
    // after that requests go elsewhere.
    assert_eq!(slow.len(), 1, "exactly one slow request: {slow:?}");
    assert_eq!(slow[0].0, 0, "the first one: {slow:?}");
    etcd.resume(hung).unwrap();
}

/// One object of each workload and network kind (the repository's
/// example), stored through etcd: read back as written, applied again
/// unchanged, its status written through `/status`, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_through_etcd() {
    let Some((_cluster, cp)) = single("every_kind_round_trips_through_etcd").await else {
        return;
    };
    let text = include_str!("../../examples/kinds.yaml");
    let objects = controlplane::manifest::parse("kinds.yaml", text).expect("examples parse");
    assert!(objects.len() >= 11);
    for obj in objects {
        let kind = obj.kind();
        let (what, created) = controlplane::api::apply(cp.as_ref(), obj.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(what, controlplane::api::Applied::Created, "{kind}");
        let r = ObjectRef::of(&created);
        let got = cp.get(&r).await.expect("get");
        assert_eq!(got.to_value(), created.to_value(), "{kind}");
        let listed = cp
            .list(&Scope::namespaced(kind, "default"))
            .await
            .expect("list");
        assert_eq!(listed.items, vec![got.clone()], "{kind}");
        let (again, _) = controlplane::api::apply(cp.as_ref(), obj)
            .await
            .expect("apply again");
        assert_eq!(again, controlplane::api::Applied::Unchanged, "{kind}");
        if kind.info().strategy.status.is_some() {
            cp.update_status(got).await.expect("status write");
        }
        cp.delete(&r, None).await.expect("delete");
        assert!(cp.get(&r).await.expect_err("gone").is_not_found(), "{kind}");
    }
}
