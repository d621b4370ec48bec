//! The controller manager against a real embedded store (no kubelet: pods
//! are created but never run): it takes the Lease, a Deployment gets its
//! ReplicaSet and pods, a scale is carried out, and deleting the
//! Deployment collects the ReplicaSet and the pods.

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

    let web = ObjectRef::new(Kind::Deployment, "default", "web");
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
