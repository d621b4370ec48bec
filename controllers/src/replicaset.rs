//! The ReplicaSet controller: keeps `spec.replicas` active pods from the
//! template, adopts orphans its selector matches and releases pods that
//! stop matching, deletes surplus pods in kube's order, and reports
//! status. [`plan`] decides from plain data; [`ReplicaSetController`]
//! reads the caches and writes what the plan says.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{labels, ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::expectations::Expectations;
use crate::informer::Cache;
use crate::pods::{self as podutil, controlled_by, controller_of};
use crate::{Error, Result};

/// What one sync of a ReplicaSet should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods to take (their names).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector.
    pub release: Vec<String>,
    /// How many pods to create.
    pub create: usize,
    /// Pods to delete, in order.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: ReplicaSetStatus,
    /// Sync again after this long (a pod becomes available).
    pub requeue_after: Option<Duration>,
}

/// Decides a sync of `rs` given the pods of its namespace. `manage`:
/// whether earlier creates and deletes have been observed (else only
/// status is computed, as kube's expectations hold the controller back).
pub fn plan(rs: &ReplicaSet, pods: &[Pod], now: Timestamp, manage: bool) -> Plan {
    let mut p = Plan::default();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let matches = |pod: &Pod| {
        selector.is_some_and(|s| {
            !labels::is_empty(s)
                && labels::matches(
                    s,
                    pod.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
        })
    };
    let deleting = podutil::is_terminating(&rs.metadata);
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if controlled_by(&pod.metadata, uid) {
            if matches(pod) {
                owned.push(pod);
            } else if !podutil::is_terminating(&pod.metadata) {
                p.release.push(name);
            }
        } else if controller_of(&pod.metadata).is_none()
            && matches(pod)
            && !deleting
            && podutil::is_active(pod)
        {
            p.adopt.push(name);
            owned.push(pod);
        }
    }
    let active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| podutil::is_active(p))
        .collect();
    let spec = rs.spec.as_ref();
    let want = usize::try_from(spec.and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
    if manage && !deleting {
        if active.len() < want {
            p.create = want - active.len();
        } else if active.len() > want {
            let mut order = active.clone();
            order.sort_by(|a, b| delete_first(a, b, now));
            p.delete = order[..active.len() - want]
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        }
    }
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&podutil::is_ready);
    let available = count(&|p| podutil::is_available(p, min_ready, now));
    p.status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    if min_ready > 0 && available < ready {
        p.requeue_after = Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1)));
    }
    p
}

fn phase_rank(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// kube's order of pods to delete first: unassigned before assigned,
/// pending before unknown before running, not ready before ready, the
/// more recently ready first, more restarts first, the newer first.
fn delete_first(a: &Pod, b: &Pod, _now: Timestamp) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(podutil::is_ready(a).cmp(&podutil::is_ready(b)))
        .then_with(|| {
            // Both ready: the one ready for less time goes first.
            let (ra, rb) = (
                podutil::ready_since(a).flatten(),
                podutil::ready_since(b).flatten(),
            );
            rb.cmp(&ra)
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
        .then(a.metadata.name.cmp(&b.metadata.name))
}

/// A new pod of `rs`: the template, a generated name, the controller
/// reference.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", podutil::random_suffix())),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![podutil::controller_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Syncs ReplicaSets against the caches.
pub struct ReplicaSetController {
    pub cp: Arc<dyn ControlPlane>,
    pub replica_sets: Cache,
    pub pods: Cache,
    pub expectations: Expectations,
}

impl ReplicaSetController {
    /// One sync of the ReplicaSet `key`; `Ok(Some(d))` asks to sync again after `d`.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::ReplicaSet(rs)) = self.replica_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let pods = self.pods.pods(&key.namespace);
        let manage = self.expectations.satisfied(key, &pods);
        let plan = plan(&rs, &pods, Timestamp::now(), manage);
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let by_name = |n: &str| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(n))
                .cloned()
        };
        podutil::adopt(
            self.cp.as_ref(),
            &pods,
            &plan.adopt,
            "ReplicaSet",
            &rs.metadata,
        )
        .await?;
        for name in &plan.release {
            if let Some(pod) = by_name(name) {
                podutil::update_fresh(self.cp.as_ref(), &Object::from(pod), |o| {
                    if let Some(refs) = o.meta_mut().owner_references.as_mut() {
                        refs.retain(|r| r.uid != uid);
                    }
                })
                .await?;
                tracing::info!(rs = %key, pod = %name, "released");
            }
        }
        if plan.create > 0 {
            let new: Vec<Pod> = (0..plan.create).map(|_| new_pod(&rs)).collect();
            let names: HashSet<String> =
                new.iter().filter_map(|p| p.metadata.name.clone()).collect();
            self.expectations.expect(key, names.clone(), HashSet::new());
            let (created, failed) = podutil::create_slow_start(&self.cp, new).await;
            // Pods not created will not be observed: expect them no more.
            let created: HashSet<String> = created.into_iter().collect();
            for name in names.difference(&created) {
                self.expectations.observed(key, name);
            }
            if let Some((name, e)) = failed {
                return Err(Error::write(format!("create pod {name} for {key}"), e));
            }
            tracing::info!(rs = %key, created = plan.create, "created pods");
        }
        if !plan.delete.is_empty() {
            let names: HashSet<String> = plan.delete.iter().cloned().collect();
            self.expectations.expect(key, HashSet::new(), names);
            for name in &plan.delete {
                let r = ObjectRef::new(Kind::Pod, &key.namespace, name);
                match self.cp.delete(&r, None).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => self.expectations.observed(key, name),
                    Err(e) => {
                        self.expectations.observed(key, name);
                        return Err(Error::write(format!("delete pod {name} of {key}"), e));
                    }
                }
            }
            tracing::info!(rs = %key, deleted = plan.delete.len(), "deleted pods");
        }
        if rs.status.as_ref() != Some(&plan.status) {
            let mut rs = rs;
            rs.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::ReplicaSet(rs), key).await?;
        }
        Ok(plan.requeue_after)
    }

    /// The ReplicaSets a pod change concerns: its controller, or for an
    /// orphan every ReplicaSet whose selector matches.
    pub fn keys_for_pod(replica_sets: &Cache, pod: &Object) -> Vec<ObjectRef> {
        replica_sets.owners_of(pod, Kind::ReplicaSet, |o| match o {
            Object::ReplicaSet(rs) => rs.spec.as_ref().map(|s| &s.selector),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
