//! Every kind of `examples/kinds.yaml` through a real store and the unix
//! socket: create, get, list, apply again (unchanged), status, delete.

use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{apply, Applied, ControlPlane, ObjectRef, Scope};
use crate::kinds::{Kind, Subresource};
use crate::manifest;
use crate::registry::{Allocators, Registry};
use crate::rest::{client::Client, server};
use crate::storage::embedded::Embedded;

/// The example manifests every backend must store.
pub(crate) const EXAMPLES: &str = include_str!("../../../examples/kinds.yaml");

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("knode-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bootstrapped registry over an embedded store in `dir`.
async fn embedded(dir: &std::path::Path) -> Registry {
    let registry = Registry::new(
        Arc::new(Embedded::open(dir).expect("open")),
        Allocators::default(),
    );
    registry.bootstrap().await.expect("bootstrap");
    registry
}

/// Creates, reads, lists, re-applies, writes the status of and deletes
/// every example object through `cp`.
async fn exercise(cp: &dyn ControlPlane) {
    let objects = manifest::parse("kinds.yaml", EXAMPLES).expect("examples parse");
    assert!(objects.len() >= 11, "one of each new kind");
    for obj in objects {
        let kind = obj.kind();
        let (what, created) = apply(cp, obj.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(what, Applied::Created, "{kind}");
        let r = ObjectRef::of(&created);
        assert_eq!(r.namespace, "default", "{kind}");
        let got = cp.get(&r).await.expect("get");
        assert_eq!(
            got.to_value(),
            created.to_value(),
            "{kind} reads back as written"
        );
        let list = cp
            .list(&Scope::namespaced(kind, "default"))
            .await
            .expect("list");
        assert_eq!(list.items, vec![got.clone()], "{kind}");
        let (again, _) = apply(cp, obj).await.expect("apply again");
        assert_eq!(
            again,
            Applied::Unchanged,
            "{kind}: applying twice changes nothing"
        );
        if kind.info().has(Subresource::Status) {
            let (field, value) = match kind {
                Kind::Job => ("active", serde_json::json!(1)),
                Kind::CronJob => (
                    "lastScheduleTime",
                    serde_json::json!("2025-01-01T00:00:00Z"),
                ),
                _ => ("observedGeneration", serde_json::json!(1)),
            };
            let mut v = got.to_value();
            v["status"] = serde_json::json!({ field: value.clone() });
            let with_status = crate::objects::Object::from_value(v).expect("status shape");
            let written = cp.update_status(with_status).await.expect("status");
            assert_eq!(written.to_value()["status"][field], value, "{kind}");
            let read = cp.get(&r).await.expect("get after status");
            assert_eq!(read.to_value()["status"][field], value, "{kind}");
        } else {
            let e = cp.update_status(got.clone()).await.expect_err("no status");
            assert!(e.to_string().contains("status"), "{kind}: {e}");
        }
        cp.delete(&r, None).await.expect("delete");
        assert!(cp.get(&r).await.expect_err("gone").is_not_found(), "{kind}");
    }
}

#[tokio::test]
async fn every_kind_round_trips_through_the_embedded_store() {
    let dir = Scratch::new("kinds-embedded");
    let registry = embedded(&dir.0).await;
    exercise(&registry).await;
}

#[tokio::test]
async fn every_kind_round_trips_through_the_unix_socket() {
    let dir = Scratch::new("kinds-socket");
    let registry = embedded(&dir.0.join("data")).await;
    let socket = server::socket_path(&dir.0);
    let listener = server::bind(&socket).await.expect("bind");
    let serving = tokio::spawn(server::serve(listener, Arc::new(registry)));
    let client = Client::new(&socket);
    exercise(&client).await;

    // The scale subresource of a Deployment: read, write, and refused
    // where a kind has none or the value is invalid.
    let objects = manifest::parse("kinds.yaml", EXAMPLES).expect("examples parse");
    let deploy = objects
        .iter()
        .find(|o| o.kind() == Kind::Deployment)
        .expect("a Deployment")
        .clone();
    let (_, created) = apply(&client, deploy).await.expect("create");
    let r = ObjectRef::of(&created);
    let scale = client.scale(&r).await.expect("get scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    let scaled = client.set_scale(&r, 5).await.expect("set scale");
    assert_eq!(scaled["spec"]["replicas"], 5);
    let got = client.get(&r).await.expect("get");
    assert_eq!(got.to_value()["spec"]["replicas"], 5);
    assert_eq!(got.meta().generation, Some(2), "a scale changes the spec");
    let e = client.set_scale(&r, -1).await.expect_err("negative");
    assert!(
        e.to_string()
            .contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        "{e}"
    );
    let job = ObjectRef::new(Kind::Job, "default", "pi");
    let e = client.scale(&job).await.expect_err("jobs have no scale");
    assert!(e.to_string().contains("no such resource path"), "{e}");
    serving.abort();
}

#[tokio::test]
async fn a_job_keeps_its_generated_selector_when_applied_again() {
    let dir = Scratch::new("kinds-job");
    let registry = embedded(&dir.0).await;
    let job = manifest::parse("t", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  template:\n    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n")
        .expect("parse")
        .remove(0);
    let (_, created) = apply(&registry, job.clone()).await.expect("create");
    let v = created.to_value();
    let uid = v["metadata"]["uid"].as_str().expect("uid").to_string();
    assert_eq!(
        v["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        v["spec"]["template"]["metadata"]["labels"]["job-name"],
        "pi"
    );
    assert_eq!(v["spec"]["completions"], 1);
    assert_eq!(v["spec"]["backoffLimit"], 6);
    let (again, _) = apply(&registry, job).await.expect("apply again");
    assert_eq!(again, Applied::Unchanged);
}
