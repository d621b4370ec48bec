//! What the workload controllers read from pods and owner references, as
//! kube-controller-manager's `controller` and `podutil` helpers do:
//! active, ready and available pods, controller references, generated
//! names and the pod-template hash, as pure functions; and the writes
//! they share (adoption, fresh updates, slow-start creation).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use controlplane::watcher::KeepMeta;
use controlplane::{ControlPlane, Object};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

/// The label that ties a Deployment's ReplicaSets and pods to a template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// kube's alphabet for generated names: no vowels (no words), no
/// look-alikes (0, 1, 3).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The controller reference of `meta`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller reference to an owner (`blockOwnerDeletion`, as kube sets it).
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// kube's finalizer of a delete with Orphan propagation.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Whether the object is being deleted (a deletionTimestamp, or the
/// `orphan` finalizer set by an orphaning delete): its controller adopts
/// and creates nothing more.
pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
        || meta
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == ORPHAN_FINALIZER)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// A pod that counts toward replicas: not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    !matches!(phase(p), "Succeeded" | "Failed") && !is_terminating(&p.metadata)
}

/// When the pod's Ready condition turned True, if it is ready.
pub fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod is Ready.
pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Whether the pod has been ready for `min_ready_seconds` at `now`.
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => now.as_second() - t.as_second() >= i64::from(min_ready_seconds),
    }
}

/// Five random characters of kube's alphabet (`web-7d4f8-x2kqz`).
pub fn random_suffix() -> String {
    // The std hasher's random seed: enough to spread names, none secret.
    let mut n = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (0..5)
        .map(|_| {
            let c = ALPHANUMS[(n % ALPHANUMS.len() as u64) as usize];
            n /= ALPHANUMS.len() as u64;
            c as char
        })
        .collect()
}

/// The pod-template hash of `template` (without its own
/// `pod-template-hash` label): FNV-32a of the template's JSON, written in
/// kube's safe alphabet as `rand.SafeEncodeString` does, so it is a valid
/// name suffix and label value. With a collision count, that is hashed too.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    strip_hash_label(&mut t);
    normalize(&mut t);
    let text = serde_json::to_string(&t).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(text.as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Removes the `pod-template-hash` label from a template.
pub fn strip_hash_label(t: &mut PodTemplateSpec) {
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(POD_TEMPLATE_HASH);
        }
    }
}

/// Whether two templates are equal but for `pod-template-hash`.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    strip_hash_label(&mut a);
    strip_hash_label(&mut b);
    normalize(&mut a);
    normalize(&mut b);
    a == b
}

/// Empty label and annotation maps are the same as none.
fn normalize(t: &mut PodTemplateSpec) {
    if let Some(m) = t.metadata.as_mut() {
        if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            m.labels = None;
        }
        if m.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            m.annotations = None;
        }
    }
    if t.metadata
        .as_ref()
        .is_some_and(|m| *m == ObjectMeta::default())
    {
        t.metadata = None;
    }
}

/// `now` as an API time.
pub fn time(now: Timestamp) -> Time {
    Time(now)
}

/// What the pod informer keeps of a pod's metadata: besides name,
/// namespace and resourceVersion, what ownership, selection, ordering and
/// termination read.
const KEEP_META: KeepMeta = KeepMeta {
    uid: true,
    labels: true,
    owner_references: true,
    creation_timestamp: true,
    deletion_timestamp: true,
    finalizers: true,
};

/// The pod informer's watch transform: keeps exactly what the controllers
/// and the scheduler read, so that the manager's caches of every pod in
/// the cluster stay small. Kept: the metadata of [`KEEP_META`];
/// `nodeName`, `schedulerName`, `nodeSelector`, affinity, tolerations,
/// topology spread constraints, overhead, `hostname` and `subdomain`; per
/// container and init container its name, resources, ports and
/// `restartPolicy`; status phase, conditions, pod IPs, and per container
/// status its name, readiness and restart count. Dropped: images,
/// commands, environment, probes, volumes, annotations and the rest.
///
/// A stripped pod must never be written back (an update replaces spec and
/// metadata): every write of a pod reads it from the store first
/// ([`update_fresh`]).
pub fn strip_pod(o: &mut controlplane::Object) {
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    let controlplane::Object::Pod(pod) = o else {
        return;
    };
    KEEP_META.strip(&mut pod.metadata);
    let keep_container = |c: Container| Container {
        name: c.name,
        resources: c.resources,
        ports: c.ports,
        restart_policy: c.restart_policy,
        ..Container::default()
    };
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        scheduler_name: s.scheduler_name,
        node_selector: s.node_selector,
        affinity: s.affinity,
        tolerations: s.tolerations,
        topology_spread_constraints: s.topology_spread_constraints,
        overhead: s.overhead,
        hostname: s.hostname,
        subdomain: s.subdomain,
        containers: s.containers.into_iter().map(keep_container).collect(),
        init_containers: s
            .init_containers
            .map(|v| v.into_iter().map(keep_container).collect()),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        container_statuses: s.container_statuses.map(|v| {
            v.into_iter()
                .map(|c| ContainerStatus {
                    name: c.name,
                    ready: c.ready,
                    restart_count: c.restart_count,
                    ..ContainerStatus::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
}

/// Reads `cached`'s object from the store, applies `change` and writes it
/// (spec and metadata), for writes decided on an informer's copy, which
/// may be stripped ([`strip_pod`]) and must not be written itself. The
/// store's object must still be at the cached resourceVersion (a conflict
/// otherwise, as a write of the cached copy would have been: the caller
/// decides again on fresher data).
pub async fn update_fresh(
    cp: &dyn controlplane::ControlPlane,
    cached: &controlplane::Object,
    change: impl FnOnce(&mut controlplane::Object),
) -> controlplane::Result<controlplane::Object> {
    let mut obj = fresh(cp, cached).await?;
    change(&mut obj);
    cp.update(obj, None).await
}

/// `cached`'s object as stored now, if it is still at the cached
/// resourceVersion (else a conflict).
pub async fn fresh(
    cp: &dyn controlplane::ControlPlane,
    cached: &controlplane::Object,
) -> controlplane::Result<controlplane::Object> {
    let key = controlplane::ObjectRef::of(cached);
    let obj = cp.get(&key).await?;
    let (want, have) = (
        cached.meta().resource_version.as_deref(),
        obj.meta().resource_version.as_deref(),
    );
    if want.is_some() && want != have {
        return Err(controlplane::Error::Conflict {
            kind: key.kind,
            name: key.name,
            reason: format!(
                "the object has been modified (resourceVersion {} read, {} stored); please apply your changes to the latest version and try again",
                want.unwrap_or_default(),
                have.unwrap_or_default()
            ),
        });
    }
    Ok(obj)
}

/// Adopts the pods named `names` (of `pods`) for the controller `kind`
/// (apps/v1) whose metadata is `owner`: each gets a controller reference,
/// written to the stored pod with the cached resourceVersion as
/// precondition.
pub async fn adopt(
    cp: &dyn controlplane::ControlPlane,
    pods: &[Pod],
    names: &[String],
    kind: &str,
    owner: &ObjectMeta,
) -> crate::Result<()> {
    for name in names {
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.name.as_ref() == Some(name))
            .cloned()
        else {
            continue;
        };
        let owner_ref = controller_ref("apps/v1", kind, owner);
        update_fresh(cp, &controlplane::Object::from(pod), |o| {
            o.meta_mut()
                .owner_references
                .get_or_insert_with(Vec::new)
                .push(owner_ref);
        })
        .await?;
        tracing::info!(owner = ?owner.name, pod = %name, "adopted");
    }
    Ok(())
}

/// Creates `pods` as kube-controller-manager's `slowStartBatch` does: in
/// batches of 1, 2, 4, ..., each batch at once, stopping after a batch
/// in which a create failed (a refusal — quota, admission, a bad
/// template — usually refuses them all, and a burst of failing writes
/// helps nobody). Returns the names created and, on a failure, the
/// first failed pod's name with its error; pods after that batch are
/// not tried.
pub async fn create_slow_start(
    cp: &Arc<dyn ControlPlane>,
    pods: Vec<Pod>,
) -> (Vec<String>, Option<(String, controlplane::Error)>) {
    let mut created = Vec::with_capacity(pods.len());
    let mut pods = pods.into_iter();
    let mut size = 1;
    loop {
        let mut batch = tokio::task::JoinSet::new();
        for pod in pods.by_ref().take(size) {
            let cp = Arc::clone(cp);
            batch.spawn(async move {
                let name = pod.metadata.name.clone().unwrap_or_default();
                (name, cp.create(Object::from(pod), None).await)
            });
        }
        if batch.is_empty() {
            return (created, None);
        }
        let mut failed = None;
        while let Some(done) = batch.join_next().await {
            match done {
                Ok((name, Ok(_))) => created.push(name),
                Ok((name, Err(e))) => {
                    failed.get_or_insert((name, e));
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        if failed.is_some() {
            return (created, failed);
        }
        size *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn ready_pod(since: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(Timestamp::from_second(since).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn available_means_ready_for_min_ready_seconds() {
        let now = Timestamp::from_second(1000).unwrap();
        assert!(is_available(&ready_pod(1000), 0, now));
        assert!(!is_available(&ready_pod(995), 10, now));
        assert!(is_available(&ready_pod(990), 10, now));
        assert!(!is_available(&Pod::default(), 0, now));
        let mut going = ready_pod(0);
        going.metadata.deletion_timestamp = Some(Time(now));
        assert!(!is_active(&going) && is_active(&ready_pod(0)));
    }

    #[test]
    fn the_template_hash_ignores_its_own_label_and_uses_the_safe_alphabet() {
        let mut t = PodTemplateSpec::default();
        let h = template_hash(&t, None);
        assert!(
            !h.is_empty() && h.bytes().all(|b| ALPHANUMS.contains(&b)),
            "{h}"
        );
        t.metadata = Some(ObjectMeta {
            labels: Some([(POD_TEMPLATE_HASH.to_string(), h.clone())].into()),
            ..Default::default()
        });
        assert_eq!(template_hash(&t, None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
        assert!(same_template(&t, &PodTemplateSpec::default()));
        let s = random_suffix();
        assert_eq!(s.len(), 5);
    }
}
