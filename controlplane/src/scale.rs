//! The `scale` subresource, generically: an `autoscaling/v1` Scale read
//! from and written to `spec.replicas` of any kind whose descriptor has
//! [`Subresource::Scale`] (Deployment, ReplicaSet, StatefulSet).

use serde_json::{json, Value};

use crate::api::{ControlPlane, Error, ObjectRef, Result};
use crate::kinds::Subresource;
use crate::labels;
use crate::objects::Object;

/// The Scale of `obj`: desired replicas, observed replicas and the
/// selector as a string, as kube-apiserver serves them.
pub fn scale_of(obj: &Object) -> Value {
    let v = obj.to_value();
    let m = obj.meta();
    let selector = serde_json::from_value(v["spec"]["selector"].clone())
        .map(|s| labels::format(&s))
        .ok()
        .filter(|s| s != "<none>")
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.name, "namespace": m.namespace, "uid": m.uid,
            "resourceVersion": m.resource_version,
            "creationTimestamp": v["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": v["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": v["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}

/// Sets `spec.replicas` of the object `what` names to `replicas` and
/// returns its new Scale. With `revision`, only if the object is still at
/// it (as a Scale PUT with `metadata.resourceVersion`).
pub async fn set_replicas(
    cp: &dyn ControlPlane,
    what: &ObjectRef,
    replicas: i64,
    revision: Option<String>,
) -> Result<Value> {
    set_replicas_with(cp, what, replicas, revision, &|_, _| {}).await
}

/// [`set_replicas`], with `mark` given the object as read and as it will
/// be written, to record who wrote it (the API's managedFields).
pub async fn set_replicas_with(
    cp: &dyn ControlPlane,
    what: &ObjectRef,
    replicas: i64,
    revision: Option<String>,
    mark: &(dyn Fn(&Value, &mut Value) + Sync),
) -> Result<Value> {
    if !what.kind.info().has(Subresource::Scale) {
        return Err(Error::BadRequest(format!(
            "{} has no scale subresource",
            what.kind
        )));
    }
    let revision = revision.filter(|r| !r.is_empty());
    // Without a revision the write is unconditional, as kube-apiserver's:
    // a status write (a controller's) in between only means reading again.
    let mut tries = 0;
    loop {
        let current = cp.get(what).await?;
        let read = current.to_value();
        let mut v = read.clone();
        v["spec"]["replicas"] = json!(replicas);
        if let Some(rv) = &revision {
            v["metadata"]["resourceVersion"] = json!(rv);
        }
        mark(&read, &mut v);
        let obj = Object::from_value(v).map_err(|e| Error::Internal(e.to_string()))?;
        match cp.update(obj, None).await {
            Err(e) if e.is_conflict() && revision.is_none() && tries < 10 => tries += 1,
            r => return Ok(scale_of(&r?)),
        }
    }
}

/// Reads `spec.replicas` and `metadata.resourceVersion` of a Scale body.
pub fn parse_scale(body: &Value) -> Result<(i64, Option<String>)> {
    if body["kind"].as_str().is_some_and(|k| k != "Scale") {
        return Err(Error::BadRequest(format!(
            "the body is a {} but the path is a scale subresource",
            body["kind"]
        )));
    }
    let replicas = body["spec"]["replicas"]
        .as_i64()
        .ok_or_else(|| Error::BadRequest("scale: spec.replicas: required".into()))?;
    let revision = body["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    Ok((replicas, revision))
}
