//! The controller manager against a real embedded store (no kubelet: pods
//! are created but never run): it takes the Lease, a Deployment gets its
//! ReplicaSet and pods, a scale is carried out, and deleting the
//! Deployment collects the ReplicaSet and the pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::{ControlPlane, Kind, Object, ObjectRef, Scope};
use serde_json::json;

async fn open() -> (Arc<dyn ControlPlane>, std::path::PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("controllers-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alloc = Allocators::parse("10.96.0.0/12", "30000-32767").unwrap();
    let cp = backend::open(&Backend::Embedded, &dir, alloc)
        .await
        .unwrap();
    (cp, dir)
}

async fn count(cp: &dyn ControlPlane, kind: Kind) -> usize {
    cp.list(&Scope::namespaced(kind, "default"))
        .await
        .unwrap()
        .items
        .len()
}

/// Polls until `f` holds (the controllers work asynchronously).
async fn until<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "not after 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_its_replica_set_and_pods_and_takes_them_when_deleted() {
    let (cp, dir) = open().await;
    let manager = tokio::spawn(controllers::run(cp.clone(), "node-a".into()));
    let d = Object::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    cp.create(d, None).await.unwrap();
    let c = cp.as_ref();
    until("3 pods", || async { count(c, Kind::Pod).await == 3 }).await;
    until("1 ReplicaSet", || async {
        count(c, Kind::ReplicaSet).await == 1
    })
    .await;
    let lease = cp
        .get(&ObjectRef::new(
            Kind::Lease,
            "kube-system",
            "knode-controller-manager",
        ))
        .await
        .unwrap();
    assert_eq!(lease.to_value()["spec"]["holderIdentity"], "node-a");

    // The Deployment carries its ReplicaSet's revision, as kube's, and
    // that write is no change of its spec (the generation stays 1, so
    // `kubectl rollout status` sees it observed).
    let web = ObjectRef::new(Kind::Deployment, "default", "web");
    until("the Deployment's revision and status", || async {
        let d = c.get(&web).await.unwrap().to_value();
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
            && d["status"]["observedGeneration"] == 1
    })
    .await;
    let d = c.get(&web).await.unwrap().to_value();
    assert_eq!(d["metadata"]["generation"], 1, "{d:#}");

    controlplane::scale::set_replicas(c, &web, 5, None)
        .await
        .unwrap();
    until("5 pods", || async { count(c, Kind::Pod).await == 5 }).await;
    // Stays at 5: nothing is created twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(c, Kind::Pod).await, 5);

    cp.delete(&web, None).await.unwrap();
    until("ReplicaSet collected", || async {
        count(c, Kind::ReplicaSet).await == 0
    })
    .await;
    until("pods collected", || async {
        count(c, Kind::Pod).await == 0
    })
    .await;
    manager.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// Two candidates on one store: the first holds the Lease while it
/// renews; the second takes it once the first stops, after the lease
/// duration (short values here: 1 s lease, 100 ms retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_candidate_leads_and_another_takes_over_when_it_stops() {
    use controllers::leader::{Config, Elector};
    let (cp, dir) = open().await;
    let short = |id: &str| Config {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(100),
        ..Config::new(id)
    };
    let mut a = Elector::new(cp.clone(), short("a"));
    let mut b = Elector::new(cp.clone(), short("b"));
    a.acquire().await;
    let started = Instant::now();
    // While a renews, b never gets it.
    let mut b_saw_renewal = Instant::now();
    for _ in 0..5 {
        assert!(a.try_acquire_or_renew().await);
        assert!(!b.try_acquire_or_renew().await);
        b_saw_renewal = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a stops renewing: b waits a lease duration from when it last saw
    // the Lease change (a renewal may leave it as it was, so that sight
    // can be a little older than b's last look).
    b.acquire().await;
    let waited = b_saw_renewal.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "took over after {waited:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let lease = cp
        .get(&ObjectRef::new(
            Kind::Lease,
            "kube-system",
            "knode-controller-manager",
        ))
        .await
        .unwrap()
        .to_value();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// The addresses of the slices of Service `web` with their `ready`
/// condition, sorted.
async fn slice_endpoints(cp: &dyn ControlPlane) -> Vec<(String, bool)> {
    let slices = cp
        .list(&Scope::namespaced(Kind::EndpointSlice, "default"))
        .await
        .unwrap()
        .items;
    let mut out: Vec<(String, bool)> = slices
        .iter()
        .map(Object::to_value)
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap_or_default().to_string(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

/// Creates pod `name` on `node` with `ip`, Ready as `ready`.
async fn running_pod(cp: &dyn ControlPlane, name: &str, node: &str, ip: &str, ready: bool) {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    });
    let created = cp
        .create(Object::from_value(p.clone()).unwrap(), None)
        .await;
    if let Ok(o) = created {
        p = o.to_value();
    } else {
        p = cp
            .get(&ObjectRef::new(Kind::Pod, "default", name))
            .await
            .unwrap()
            .to_value();
    }
    p["status"] = json!({"phase": "Running", "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    cp.update_status(Object::from_value(p).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_endpoint_slices_that_follow_its_pods_and_go_with_it() {
    let (cp, dir) = open().await;
    let manager = tokio::spawn(controllers::run(cp.clone(), "node-a".into()));
    let c = cp.as_ref();
    let svc = Object::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    cp.create(svc, None).await.unwrap();
    // No pods yet: one empty placeholder slice.
    until("a placeholder slice", || async {
        count(c, Kind::EndpointSlice).await == 1
    })
    .await;
    running_pod(c, "a", "node-a", "10.244.0.2", true).await;
    running_pod(c, "b", "node-a", "10.244.0.3", false).await;
    until("a ready, b not", || async {
        slice_endpoints(c).await == [("10.244.0.2".into(), true), ("10.244.0.3".into(), false)]
    })
    .await;
    running_pod(c, "b", "node-a", "10.244.0.3", true).await;
    until("b ready", || async {
        slice_endpoints(c).await == [("10.244.0.2".into(), true), ("10.244.0.3".into(), true)]
    })
    .await;
    assert_eq!(count(c, Kind::EndpointSlice).await, 1, "updated in place");

    // A registered node without a heartbeat Lease is lost: its pod is
    // listed, not ready.
    let node = Object::from_value(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-b"}}))
    .unwrap();
    cp.create(node, None).await.unwrap();
    running_pod(c, "x", "node-b", "10.244.1.2", true).await;
    until("x on a lost node is not ready", || async {
        slice_endpoints(c)
            .await
            .contains(&("10.244.1.2".into(), false))
    })
    .await;

    // A deleted pod is terminating (its kubelet has yet to stop it): still
    // listed, not ready; once removed it leaves. A deleted Service takes
    // its slices.
    let a = ObjectRef::new(Kind::Pod, "default", "a");
    cp.delete(&a, None).await.unwrap();
    until("a terminating", || async {
        slice_endpoints(c)
            .await
            .contains(&("10.244.0.2".into(), false))
    })
    .await;
    let now = controlplane::DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    cp.delete_with(&a, &now).await.unwrap();
    until("a gone", || async {
        !slice_endpoints(c)
            .await
            .iter()
            .any(|(ip, _)| ip == "10.244.0.2")
    })
    .await;
    cp.delete(&ObjectRef::new(Kind::Service, "default", "web"), None)
        .await
        .unwrap();
    until("slices gone", || async {
        count(c, Kind::EndpointSlice).await == 0
    })
    .await;
    manager.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// Registers ready node `name` (2 CPUs) with a heartbeat Lease.
async fn ready_node(cp: &dyn ControlPlane, name: &str) {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
        "labels": {"kubernetes.io/hostname": name}}});
    let made = cp
        .create(Object::from_value(node).unwrap(), None)
        .await
        .unwrap();
    let mut v = made.to_value();
    v["status"] = json!({"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]});
    cp.update_status(Object::from_value(v).unwrap())
        .await
        .unwrap();
    let _ = cp
        .create(
            Object::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "kube-node-lease"}}))
            .unwrap(),
            None,
        )
        .await;
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}});
    cp.create(Object::from_value(lease).unwrap(), None)
        .await
        .unwrap();
}

/// Pods of the default namespace per node name ("" for unbound).
async fn placement(cp: &dyn ControlPlane) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in cp
        .list(&Scope::namespaced(Kind::Pod, "default"))
        .await
        .unwrap()
        .items
    {
        let node = p.to_value()["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *out.entry(node).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_spreads_a_deployment_and_says_why_a_pod_fits_nowhere() {
    let (cp, dir) = open().await;
    let c = cp.as_ref();
    for n in ["n1", "n2", "n3"] {
        ready_node(c, n).await;
    }
    let manager = tokio::spawn(controllers::run(cp.clone(), "n1".into()));
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                       "resources": {"requests": {"cpu": "100m"}}}]}}}
    });
    cp.create(Object::from_value(d).unwrap(), None)
        .await
        .unwrap();
    let even: BTreeMap<String, usize> =
        [("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)].into();
    until("6 pods, 2 per node", || async {
        placement(c).await == even
    })
    .await;

    // Too big for any node: Pending, with the reason on the pod and in an
    // Event.
    let big = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox",
                 "resources": {"requests": {"cpu": "3"}}}]}});
    cp.create(Object::from_value(big).unwrap(), None)
        .await
        .unwrap();
    let why = "0/3 nodes are available: 3 Insufficient cpu.";
    let big_ref = ObjectRef::new(Kind::Pod, "default", "big");
    until("PodScheduled False", || async {
        let p = c.get(&big_ref).await.unwrap().to_value();
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "PodScheduled" && c["message"] == why)
        })
    })
    .await;
    until("a FailedScheduling event", || async {
        c.list(&Scope::namespaced(Kind::Event, "default"))
            .await
            .unwrap()
            .items
            .iter()
            .map(Object::to_value)
            .any(|e| {
                e["reason"] == "FailedScheduling"
                    && e["message"] == why
                    && e["involvedObject"]["name"] == "big"
            })
    })
    .await;
    // A bigger node joins: the pod is placed there.
    ready_node(c, "n4").await;
    let mut v = c
        .get(&ObjectRef::new(Kind::Node, "", "n4"))
        .await
        .unwrap()
        .to_value();
    v["status"]["allocatable"]["cpu"] = json!("8");
    c.update_status(Object::from_value(v).unwrap())
        .await
        .unwrap();
    until("big on n4", || async {
        c.get(&big_ref).await.unwrap().to_value()["spec"]["nodeName"] == "n4"
    })
    .await;
    manager.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// The embedded store behind a check of every pod write: an update must
/// carry the stored pod's containers, volumes and annotations, a status
/// update its `hostIP`, `qosClass` and container statuses, which the
/// controllers' pod cache drops. A write built from a cached (stripped)
/// pod is recorded as a violation.
struct Guard {
    inner: Arc<dyn ControlPlane>,
    violations: std::sync::Mutex<Vec<String>>,
    pod_writes: std::sync::atomic::AtomicUsize,
}

impl Guard {
    async fn check(&self, obj: &Object, status: bool) {
        let Object::Pod(new) = obj else { return };
        let key = ObjectRef::of(obj);
        let Ok(Object::Pod(old)) = self.inner.get(&key).await else {
            return;
        };
        self.pod_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // What the store holds and the write would change or drop.
        let lost = if status {
            let (a, b) = (
                old.status.unwrap_or_default(),
                new.status.clone().unwrap_or_default(),
            );
            ((a.host_ip.is_some() && a.host_ip != b.host_ip)
                || (a.qos_class.is_some() && a.qos_class != b.qos_class)
                || (a.container_statuses.is_some() && a.container_statuses != b.container_statuses))
                .then_some("status")
        } else {
            let (a, b) = (
                old.spec.unwrap_or_default(),
                new.spec.clone().unwrap_or_default(),
            );
            (a.containers != b.containers
                || a.volumes != b.volumes
                || old.metadata.annotations != new.metadata.annotations)
                .then_some("spec or annotations")
        };
        if let Some(what) = lost {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{key}: a write would lose its {what}"));
        }
    }
}

#[async_trait::async_trait]
impl ControlPlane for Guard {
    async fn get(&self, what: &ObjectRef) -> controlplane::Result<Object> {
        self.inner.get(what).await
    }
    async fn list(&self, scope: &Scope) -> controlplane::Result<controlplane::ObjectList> {
        self.inner.list(scope).await
    }
    async fn create(&self, obj: Object, ttl: Option<Duration>) -> controlplane::Result<Object> {
        self.inner.create(obj, ttl).await
    }
    async fn update(&self, obj: Object, ttl: Option<Duration>) -> controlplane::Result<Object> {
        self.check(&obj, false).await;
        self.inner.update(obj, ttl).await
    }
    async fn update_status(&self, obj: Object) -> controlplane::Result<Object> {
        self.check(&obj, true).await;
        self.inner.update_status(obj).await
    }
    async fn delete(
        &self,
        what: &ObjectRef,
        revision: Option<u64>,
    ) -> controlplane::Result<Object> {
        self.inner.delete(what, revision).await
    }
    async fn delete_with(
        &self,
        what: &ObjectRef,
        opts: &controlplane::DeleteOptions,
    ) -> controlplane::Result<Object> {
        self.inner.delete_with(what, opts).await
    }
    async fn watch(
        &self,
        scope: &Scope,
        revision: u64,
    ) -> controlplane::Result<controlplane::Watch> {
        self.inner.watch(scope, revision).await
    }
}

/// A pod with what the controllers' cache drops (image, environment,
/// volumes, annotations; hostIP, qosClass, container statuses).
async fn rich_pod(
    cp: &dyn ControlPlane,
    name: &str,
    labels: serde_json::Value,
    extra: serde_json::Value,
) {
    let mut v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels,
                     "annotations": {"keep": "me"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                 "env": [{"name": "A", "value": "b"}],
                                 "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                                 "resources": {"requests": {"cpu": "100m"}}}],
                 "volumes": [{"name": "v", "emptyDir": {}}]}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            if let (Some(a), Some(b)) =
                (m.get_mut(k).and_then(|a| a.as_object_mut()), x.as_object())
            {
                a.extend(b.clone());
            }
        }
    }
    let made = cp
        .create(Object::from_value(v).unwrap(), None)
        .await
        .unwrap();
    let mut s = made.to_value();
    s["status"] = json!({"phase": "Pending", "qosClass": "Burstable", "hostIP": "192.0.2.9",
        "containerStatuses": [{"name": "c", "image": "busybox:1.36", "imageID": "",
                               "ready": false, "restartCount": 0}]});
    cp.update_status(Object::from_value(s).unwrap())
        .await
        .unwrap();
}

/// Every write path of pods in the manager (adoption, release, the
/// collector dropping a gone owner, binding, `PodScheduled: False`) writes
/// the stored pod, never the stripped copy its cache holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pod_write_is_built_from_the_stripped_cache() {
    let (store, dir) = open().await;
    let guard = Arc::new(Guard {
        inner: store,
        violations: Default::default(),
        pod_writes: Default::default(),
    });
    let cp: Arc<dyn ControlPlane> = guard.clone();
    let c = cp.as_ref();
    ready_node(c, "n1").await;
    // An orphan the ReplicaSet adopts; a pod with a gone owner beside a
    // present one; a pod too big for any node.
    rich_pod(c, "stray", json!({"app": "web"}), json!({})).await;
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let rs = cp
        .create(Object::from_value(rs).unwrap(), None)
        .await
        .unwrap();
    let rs_uid = rs.meta().uid.clone().unwrap();
    rich_pod(
        c,
        "two-owners",
        json!({"app": "other"}),
        json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs_uid},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone", "uid": "gone-uid"}]}}),
    )
    .await;
    rich_pod(
        c,
        "big",
        json!({"app": "big"}),
        json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                        "resources": {"requests": {"cpu": "3"}}}]}}),
    )
    .await;
    let manager = tokio::spawn(controllers::run(cp.clone(), "n1".into()));
    let pod = |name: &'static str| async move {
        c.get(&ObjectRef::new(Kind::Pod, "default", name))
            .await
            .unwrap()
            .to_value()
    };
    until("stray adopted and bound", || async {
        let p = pod("stray").await;
        p["metadata"]["ownerReferences"][0]["uid"] == rs_uid.as_str()
            && p["spec"]["nodeName"] == "n1"
    })
    .await;
    until("the gone owner dropped", || async {
        pod("two-owners").await["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    until("big marked unschedulable", || async {
        pod("big").await["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "PodScheduled"))
    })
    .await;
    // The stray stops matching: released.
    let mut v = pod("stray").await;
    v["metadata"]["labels"] = json!({"app": "elsewhere"});
    c.update(Object::from_value(v).unwrap(), None)
        .await
        .unwrap();
    until("stray released", || async {
        pod("stray").await["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty())
    })
    .await;
    manager.abort();
    for name in ["stray", "two-owners", "big"] {
        let p = pod(name).await;
        assert_eq!(p["metadata"]["annotations"]["keep"], "me", "{name}: {p}");
        assert_eq!(
            p["spec"]["containers"][0]["image"], "busybox:1.36",
            "{name}"
        );
        assert_eq!(p["status"]["hostIP"], "192.0.2.9", "{name}");
    }
    let v = guard.violations.lock().unwrap().clone();
    assert!(v.is_empty(), "{v:#?}");
    // Adoption, binding, the collector, PodScheduled and release, at least.
    assert!(guard.pod_writes.load(std::sync::atomic::Ordering::Relaxed) >= 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// Fails the `fail_at`-th create (1-based); counts every create.
struct FailNth {
    inner: Arc<dyn ControlPlane>,
    creates: std::sync::atomic::AtomicUsize,
    fail_at: usize,
}

#[async_trait::async_trait]
impl ControlPlane for FailNth {
    async fn get(&self, what: &ObjectRef) -> controlplane::Result<Object> {
        self.inner.get(what).await
    }
    async fn list(&self, scope: &Scope) -> controlplane::Result<controlplane::ObjectList> {
        self.inner.list(scope).await
    }
    async fn create(&self, obj: Object, ttl: Option<Duration>) -> controlplane::Result<Object> {
        let n = 1 + self
            .creates
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == self.fail_at {
            return Err(controlplane::Error::invalid(
                "pod",
                "spec",
                "refused for the test",
            ));
        }
        self.inner.create(obj, ttl).await
    }
    async fn update(&self, obj: Object, ttl: Option<Duration>) -> controlplane::Result<Object> {
        self.inner.update(obj, ttl).await
    }
    async fn update_status(&self, obj: Object) -> controlplane::Result<Object> {
        self.inner.update_status(obj).await
    }
    async fn delete(
        &self,
        what: &ObjectRef,
        revision: Option<u64>,
    ) -> controlplane::Result<Object> {
        self.inner.delete(what, revision).await
    }
    async fn delete_with(
        &self,
        what: &ObjectRef,
        opts: &controlplane::DeleteOptions,
    ) -> controlplane::Result<Object> {
        self.inner.delete_with(what, opts).await
    }
    async fn watch(
        &self,
        scope: &Scope,
        revision: u64,
    ) -> controlplane::Result<controlplane::Watch> {
        self.inner.watch(scope, revision).await
    }
}

/// Pods are created in batches of 1, 2, 4, ...; a failure ends the
/// creation after its batch (the rest are not tried), as kube's
/// slowStartBatch does.
#[tokio::test]
async fn pods_are_created_in_slow_start_batches_that_stop_at_a_failure() {
    let (inner, dir) = open().await;
    let pod = |i: usize| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{i}"), "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}))
        .unwrap()
    };
    // All ten: batches 1 + 2 + 4 + 3.
    let cp: Arc<dyn ControlPlane> = Arc::clone(&inner);
    let (made, failed) =
        controllers::pods::create_slow_start(&cp, (0..10).map(pod).collect()).await;
    assert!(failed.is_none());
    assert_eq!(made.len(), 10);
    assert_eq!(count(inner.as_ref(), Kind::Pod).await, 10);
    // The 4th create (in the third batch, of four) fails: that batch's
    // other three are created, the last three are not tried.
    let failing = Arc::new(FailNth {
        inner: Arc::clone(&inner),
        creates: Default::default(),
        fail_at: 4,
    });
    let cp: Arc<dyn ControlPlane> = failing.clone();
    let (made, failed) =
        controllers::pods::create_slow_start(&cp, (10..20).map(pod).collect()).await;
    let (_, err) = failed.expect("the 4th create fails");
    assert!(err.to_string().contains("refused for the test"), "{err}");
    assert_eq!(made.len(), 6);
    assert_eq!(failing.creates.load(std::sync::atomic::Ordering::SeqCst), 7);
    assert_eq!(count(inner.as_ref(), Kind::Pod).await, 16);
    let _ = std::fs::remove_dir_all(dir);
}

/// A deleted Namespace is emptied, controllers running: its Deployment,
/// ReplicaSet, pods and ConfigMap all go and stay gone (nothing the
/// controllers recreate outlives it), and other namespaces keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_emptied_while_the_controllers_run() {
    let (cp, dir) = open().await;
    let manager = tokio::spawn(controllers::run(cp.clone(), "node-a".into()));
    let c = cp.as_ref();
    let ns = Object::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team"}}))
    .unwrap();
    cp.create(ns, None).await.unwrap();
    for namespace in ["team", "default"] {
        let d = Object::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        cp.create(d, None).await.unwrap();
        let cm = Object::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": namespace}}))
        .unwrap();
        cp.create(cm, None).await.unwrap();
    }
    let in_ns = |kind: Kind, ns: &'static str| async move {
        c.list(&Scope::namespaced(kind, ns))
            .await
            .unwrap()
            .items
            .len()
    };
    until("3 pods in team", || async {
        in_ns(Kind::Pod, "team").await == 3
    })
    .await;
    cp.delete(&ObjectRef::new(Kind::Namespace, "", "team"), None)
        .await
        .unwrap();

    until("team emptied", || async {
        let mut n = 0;
        for kind in [
            Kind::Pod,
            Kind::ReplicaSet,
            Kind::Deployment,
            Kind::ConfigMap,
        ] {
            n += in_ns(kind, "team").await;
        }
        n == 0
    })
    .await;
    // And it stays empty once the controllers have caught up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for kind in [
        Kind::Pod,
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::ConfigMap,
    ] {
        assert_eq!(in_ns(kind, "team").await, 0, "{kind:?} left in team");
    }
    assert!(c
        .get(&ObjectRef::new(Kind::Namespace, "", "team"))
        .await
        .is_err());
    until("default keeps its 3 pods", || async {
        in_ns(Kind::Pod, "default").await == 3
    })
    .await;
    assert_eq!(in_ns(Kind::ConfigMap, "default").await, 1);
    manager.abort();
    let _ = std::fs::remove_dir_all(dir);
}
