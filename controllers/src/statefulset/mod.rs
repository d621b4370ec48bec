//! The StatefulSet controller: pods with stable names (`web-0`, `web-1`,
//! ...) and hostnames (`hostname` = pod name, `subdomain` = the governing
//! Service, so `web-0.web.ns.svc` resolves), created in ordinal order and
//! each only once the one before is Running and Ready (OrderedReady), or
//! all at once (Parallel); scaled down from the highest ordinal; rolled to
//! a new template from the highest ordinal down to `partition`, one pod at
//! a time, each replaced only while every other pod is ready.
//!
//! Revisions are ControllerRevisions named `<set>-<hash>` holding the
//! template, as kube-controller-manager keeps them: a pod below the
//! partition that has to be recreated comes back at the current revision,
//! not the update. [`plan`] decides from plain data; the controller reads
//! the caches and writes what the plan says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{labels, ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;

use crate::informer::Cache;
use crate::pods::{self as podutil, controlled_by, controller_of};
use crate::{Error, Result};

/// The label with a pod's revision (`<set>-<hash>`).
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label with a pod's own name, for per-pod Services.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What one sync of a StatefulSet should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphans to take (matching name and selector).
    pub adopt: Vec<String>,
    /// Pods to create: ordinal and the revision to create it at.
    pub create: Vec<(i32, String)>,
    /// Pods to delete (failed, condemned, or to be updated).
    pub delete: Vec<String>,
    /// The revision the template is at now; created if missing.
    pub update_revision: String,
    pub status: StatefulSetStatus,
    pub requeue_after: Option<Duration>,
}

/// The revision name of `template` for `set`.
pub fn revision_name(set: &StatefulSet, template: &PodTemplateSpec) -> String {
    let collisions = set.status.as_ref().and_then(|s| s.collision_count);
    format!(
        "{}-{}",
        set.metadata.name.as_deref().unwrap_or_default(),
        podutil::template_hash(template, collisions)
    )
}

/// The ordinal of `pod` when its name is `<set>-<n>`.
fn ordinal(set_name: &str, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    let n = name.strip_prefix(set_name)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n| *n >= 0)
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && podutil::is_ready(p)
}

fn failed(p: &Pod) -> bool {
    matches!(phase(p), "Failed" | "Succeeded")
}

/// Decides one sync of `set` from the pods of its namespace.
pub fn plan(set: &StatefulSet, pods: &[Pod], now: Timestamp) -> Plan {
    let mut p = Plan::default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let uid = set.metadata.uid.as_deref().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let template = spec.template.clone();
    p.update_revision = revision_name(set, &template);
    let current_revision = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| p.update_revision.clone());
    let matches = |pod: &Pod| {
        !labels::is_empty(&spec.selector)
            && labels::matches(
                &spec.selector,
                pod.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
    };
    let deleting = podutil::is_terminating(&set.metadata);

    // The pods this set has, by ordinal.
    let mut by_ord: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in pods {
        let Some(ord) = ordinal(&name, pod) else {
            continue;
        };
        if controlled_by(&pod.metadata, uid) && matches(pod) {
            by_ord.insert(ord, pod);
        } else if controller_of(&pod.metadata).is_none()
            && matches(pod)
            && !deleting
            && !podutil::is_terminating(&pod.metadata)
        {
            p.adopt.push(pod.metadata.name.clone().unwrap_or_default());
            by_ord.insert(ord, pod);
        }
    }
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let slots = start..start + replicas;
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    // Status first: it describes what exists now.
    let count = |f: &dyn Fn(&Pod) -> bool| by_ord.values().filter(|p| f(p)).count() as i32;
    let at = |rev: &str| count(&|pod| revision_of(pod) == Some(rev));
    let updated_replicas = at(&p.update_revision);
    let ready = count(&podutil::is_ready);
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: by_ord.len() as i32,
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|pod| podutil::is_available(pod, min_ready, now))),
        current_replicas: Some(at(&current_revision)),
        updated_replicas: Some(updated_replicas),
        current_revision: Some(current_revision.clone()),
        update_revision: Some(p.update_revision.clone()),
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    // Every wanted pod at the update revision and ready: it is current.
    let complete = slots.clone().all(|o| {
        by_ord
            .get(&o)
            .is_some_and(|pod| revision_of(pod) == Some(p.update_revision.as_str()))
    }) && by_ord.len() as i32 == replicas;
    if complete {
        status.current_revision = Some(p.update_revision.clone());
        status.current_replicas = Some(updated_replicas);
    }
    p.status = status;
    if deleting {
        return p;
    }

    // The revision a new pod of ordinal `o` is made at.
    let revision_for = |o: i32| {
        if on_delete || o < partition {
            current_revision.clone()
        } else {
            p.update_revision.clone()
        }
    };
    // 1. Wanted ordinals: create the missing, replace the failed; in
    //    OrderedReady each waits for the one before it.
    for o in slots.clone() {
        match by_ord.get(&o) {
            None => {
                p.create.push((o, revision_for(o)));
                if !parallel {
                    return p;
                }
            }
            Some(pod) if failed(pod) && !podutil::is_terminating(&pod.metadata) => {
                p.delete.push(pod.metadata.name.clone().unwrap_or_default());
                if !parallel {
                    return p;
                }
            }
            Some(pod) if !parallel && !running_and_ready(pod) => return p,
            Some(_) => {}
        }
    }
    // 2. Condemned ordinals, highest first.
    let condemned: Vec<&Pod> = by_ord
        .iter()
        .rev()
        .filter(|(o, _)| !slots.contains(o))
        .map(|(_, pod)| *pod)
        .collect();
    let all_ready = slots
        .clone()
        .all(|o| by_ord.get(&o).is_some_and(|pod| running_and_ready(pod)));
    for pod in &condemned {
        if podutil::is_terminating(&pod.metadata) {
            if !parallel {
                return p;
            }
            continue;
        }
        if !parallel && !all_ready {
            return p;
        }
        p.delete.push(pod.metadata.name.clone().unwrap_or_default());
        if !parallel {
            return p;
        }
    }
    if !condemned.is_empty() && !parallel {
        return p;
    }
    // 3. Rolling update: highest ordinal first, down to the partition,
    //    one at a time, only while every other pod is ready.
    if on_delete || !all_ready {
        return p;
    }
    for o in slots.rev().filter(|o| *o >= partition) {
        let Some(pod) = by_ord.get(&o) else { continue };
        if revision_of(pod) != Some(p.update_revision.as_str()) {
            if !podutil::is_terminating(&pod.metadata) {
                p.delete.push(pod.metadata.name.clone().unwrap_or_default());
            }
            return p;
        }
    }
    if min_ready > 0 && p.status.available_replicas < p.status.ready_replicas {
        p.requeue_after = Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1)));
    }
    p
}

/// Pod `ordinal` of `set` from `template` at `revision`: the stable name,
/// hostname and subdomain, the set's labels, the controller reference.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(service) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(service);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![podutil::controller_ref(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The ControllerRevision `name` recording `template` as revision
/// `number` of `set`.
pub fn new_revision(
    set: &StatefulSet,
    name: &str,
    template: &PodTemplateSpec,
    number: i64,
) -> ControllerRevision {
    let mut labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), name.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![podutil::controller_ref(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..Default::default()
        },
        data: Some(RawExtension(
            serde_json::json!({"spec": {"template": template}}),
        )),
        revision: number,
    }
}

/// The template a ControllerRevision holds.
pub fn revision_template(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = r.data.as_ref()?;
    serde_json::from_value(data.0.get("spec")?.get("template")?.clone()).ok()
}

/// Syncs StatefulSets against the caches.
pub struct StatefulSetController {
    pub cp: Arc<dyn ControlPlane>,
    pub sets: Cache,
    pub pods: Cache,
    pub revisions: Cache,
}

impl StatefulSetController {
    /// The ControllerRevisions of `set`, by name.
    fn revisions_of(&self, set: &StatefulSet) -> Vec<ControllerRevision> {
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        self.revisions
            .all()
            .into_iter()
            .filter_map(|o| match o {
                Object::ControllerRevision(r)
                    if r.metadata.namespace == set.metadata.namespace
                        && controlled_by(&r.metadata, uid) =>
                {
                    Some(*r)
                }
                _ => None,
            })
            .collect()
    }

    /// One sync of the StatefulSet `key`.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::StatefulSet(set)) = self.sets.get(key) else {
            return Ok(None);
        };
        let pods = self.pods.pods(&key.namespace);
        let plan = plan(&set, &pods, Timestamp::now());
        let template = set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let revisions = self.revisions_of(&set);
        if !podutil::is_terminating(&set.metadata)
            && !revisions
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(plan.update_revision.as_str()))
        {
            let next = revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
            let r = new_revision(&set, &plan.update_revision, &template, next);
            match self.cp.create(Object::from(r), None).await {
                Ok(_) => {
                    tracing::info!(statefulset = %key, revision = %plan.update_revision, "new revision")
                }
                Err(controlplane::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::write(format!("create revision of {key}"), e)),
            }
        }
        podutil::adopt(
            self.cp.as_ref(),
            &pods,
            &plan.adopt,
            "StatefulSet",
            &set.metadata,
        )
        .await?;
        for (ordinal, revision) in &plan.create {
            let t = if *revision == plan.update_revision {
                template.clone()
            } else {
                revisions
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(revision.as_str()))
                    .and_then(revision_template)
                    .unwrap_or_else(|| template.clone())
            };
            let pod = new_pod(&set, &t, *ordinal, revision);
            let name = pod.metadata.name.clone().unwrap_or_default();
            match self.cp.create(Object::from(pod), None).await {
                Ok(_) => tracing::info!(statefulset = %key, pod = %name, %revision, "created pod"),
                Err(e) => return Err(Error::write(format!("create pod {name} for {key}"), e)),
            }
        }
        for name in &plan.delete {
            match self
                .cp
                .delete(&ObjectRef::new(Kind::Pod, &key.namespace, name), None)
                .await
            {
                Ok(_) => tracing::info!(statefulset = %key, pod = %name, "deleted pod"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::write(format!("delete pod {name} of {key}"), e)),
            }
        }
        self.prune_revisions(&set, &revisions, &pods, &plan).await?;
        if set.status.as_ref() != Some(&plan.status) {
            let mut set = set;
            set.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::StatefulSet(set), key).await?;
        }
        Ok(plan.requeue_after)
    }

    /// Keeps `revisionHistoryLimit` unused revisions (default 10), besides
    /// the current and update ones and any a pod still runs.
    async fn prune_revisions(
        &self,
        set: &StatefulSet,
        revisions: &[ControllerRevision],
        pods: &[Pod],
        plan: &Plan,
    ) -> Result<()> {
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let live: Vec<&str> = pods
            .iter()
            .filter_map(revision_of)
            .chain(plan.status.current_revision.as_deref())
            .chain([plan.update_revision.as_str()])
            .collect();
        let mut unused: Vec<&ControllerRevision> = revisions
            .iter()
            .filter(|r| !live.contains(&r.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        unused.sort_by_key(|r| r.revision);
        let excess = unused.len().saturating_sub(limit);
        for r in &unused[..excess] {
            let name = r.metadata.name.clone().unwrap_or_default();
            let what = ObjectRef::new(
                Kind::ControllerRevision,
                r.metadata.namespace.as_deref().unwrap_or_default(),
                &name,
            );
            match self.cp.delete(&what, None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::write(format!("delete revision {name}"), e)),
            }
        }
        Ok(())
    }

    /// The StatefulSets a pod change concerns.
    pub fn keys_for_pod(sets: &Cache, pod: &Object) -> Vec<ObjectRef> {
        sets.owners_of(pod, Kind::StatefulSet, |o| match o {
            Object::StatefulSet(s) => s.spec.as_ref().map(|s| &s.selector),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
