//! The Deployment controller: one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>`, rolled by RollingUpdate (maxSurge,
//! maxUnavailable, readiness through the ReplicaSets' available counts)
//! or Recreate, with revisions, history cleanup, pause and kube's status
//! conditions. [`plan`] decides from plain data; the controller writes.

pub mod rolling;
pub mod rollout;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{labels, ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::informer::Cache;
use crate::pods::{self as podutil, controlled_by, controller_of, POD_TEMPLATE_HASH};
use crate::{Error, Result};
use rolling::{desired, is_rolling, spec_replicas};

/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Why a revision was made (`rollout history`'s CHANGE-CAUSE).
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// What one sync of a Deployment should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A new ReplicaSet to create.
    pub create: Option<ReplicaSet>,
    /// ReplicaSets to write (replicas, revision, adoption), as changed.
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets beyond `revisionHistoryLimit`, to delete.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: DeploymentStatus,
    /// Sync again after this long (the progress deadline).
    pub requeue_after: Option<Duration>,
    /// The Deployment's own `deployment.kubernetes.io/revision` (its new
    /// ReplicaSet's, as kube keeps it; `kubectl rollout status
    /// --revision` and `describe` read it), when it must change.
    pub revision: Option<String>,
}

/// A ReplicaSet's revision (0 when unset).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_annotation(meta: &mut ObjectMeta, k: &str, v: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(k.into(), v);
}

fn set_replicas(rs: &mut ReplicaSet, n: i32) {
    rs.spec.get_or_insert_with(Default::default).replicas = Some(n);
}

/// The ReplicaSet `d` wants for its current template (not yet scaled).
pub fn new_replica_set(d: &Deployment, revision: i64, replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = podutil::template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut meta = ObjectMeta {
        name: Some(format!(
            "{}-{hash}",
            d.metadata.name.as_deref().unwrap_or_default()
        )),
        namespace: d.metadata.namespace.clone(),
        labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
        owner_references: Some(vec![podutil::controller_ref(
            "apps/v1",
            "Deployment",
            &d.metadata,
        )]),
        ..Default::default()
    };
    set_annotation(&mut meta, REVISION, revision.to_string());
    set_annotation(
        &mut meta,
        "deployment.kubernetes.io/desired-replicas",
        desired(d).to_string(),
    );
    let surge = rolling::fenceposts(d).0;
    set_annotation(
        &mut meta,
        "deployment.kubernetes.io/max-replicas",
        (desired(d) + surge).to_string(),
    );
    if let Some(cause) = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CHANGE_CAUSE))
    {
        set_annotation(&mut meta, CHANGE_CAUSE, cause.clone());
    }
    ReplicaSet {
        metadata: meta,
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn created_at(rs: &ReplicaSet) -> (Option<Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

/// Decides a sync of `d` given the ReplicaSets and pods of its namespace.
pub fn plan(d: &Deployment, all_rs: &[ReplicaSet], pods: &[Pod], now: Timestamp) -> Plan {
    let mut p = Plan::default();
    if podutil::is_terminating(&d.metadata) {
        p.status = d.status.clone().unwrap_or_default();
        return p;
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    // Owned ReplicaSets, and orphans the selector matches (adopted).
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in all_rs {
        if controlled_by(&rs.metadata, &uid) {
            owned.push(rs.clone());
        } else if controller_of(&rs.metadata).is_none()
            && !labels::is_empty(&spec.selector)
            && labels::matches(
                &spec.selector,
                rs.metadata.labels.as_ref().unwrap_or(&empty),
            )
        {
            let mut rs = rs.clone();
            rs.metadata
                .owner_references
                .get_or_insert_with(Vec::new)
                .push(podutil::controller_ref(
                    "apps/v1",
                    "Deployment",
                    &d.metadata,
                ));
            p.update.push(rs.clone());
            owned.push(rs);
        }
    }
    owned.sort_by_key(created_at);
    let new_idx = owned.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| podutil::same_template(t, &spec.template))
    });
    let max_old_rev = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision(rs))
        .max()
        .unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);
    let mut new: Option<ReplicaSet> = new_idx.map(|i| owned[i].clone());
    let mut olds: Vec<ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| rs.clone())
        .collect();
    let mut status_extra: Option<String> = None;
    // An old template brought back (rollout undo) becomes the newest revision.
    if let Some(n) = new.as_mut() {
        if revision(n) <= max_old_rev && !paused {
            set_annotation(&mut n.metadata, REVISION, (max_old_rev + 1).to_string());
        }
    }
    let old_uids: Vec<String> = olds
        .iter()
        .filter_map(|rs| rs.metadata.uid.clone())
        .collect();
    let old_pods_running = pods.iter().any(|pod| {
        old_uids.iter().any(|u| controlled_by(&pod.metadata, u))
            && !matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    });
    let want = desired(d);
    if paused {
        // Only a pure scale is carried out while paused.
        if let Some(n) = new.as_mut() {
            if olds.iter().all(|rs| spec_replicas(rs) == 0) {
                set_replicas(n, want);
            }
        }
    } else if !is_rolling(d) {
        for rs in olds.iter_mut() {
            set_replicas(rs, 0);
        }
        if !old_pods_running {
            match new.as_mut() {
                Some(n) => set_replicas(n, want),
                None => {
                    let rs = new_replica_set(d, max_old_rev + 1, want);
                    status_extra = rs.metadata.name.clone();
                    p.create = Some(rs.clone());
                    new = Some(rs);
                }
            }
        }
    } else {
        let all_refs: Vec<&ReplicaSet> = olds.iter().chain(new.iter()).collect();
        let cur_new = new.as_ref().map(spec_replicas).unwrap_or(0);
        let n_new = if cur_new > want {
            want
        } else {
            rolling::new_rs_replicas(d, &all_refs, cur_new)
        };
        match new.as_mut() {
            Some(n) => set_replicas(n, n_new),
            None => {
                let rs = new_replica_set(d, max_old_rev + 1, n_new);
                status_extra = rs.metadata.name.clone();
                p.create = Some(rs.clone());
                new = Some(rs);
            }
        }
        let old_refs: Vec<&ReplicaSet> = olds.iter().collect();
        let targets = rolling::scale_down_olds(d, new.as_ref(), n_new, &old_refs);
        for (rs, t) in olds.iter_mut().zip(targets) {
            set_replicas(rs, t);
        }
    }
    // Writes: whatever differs from the cache.
    let changed: Vec<ReplicaSet> = olds
        .iter()
        .chain(new.iter().filter(|_| p.create.is_none()))
        .filter(|rs| {
            let before = owned.iter().find(|o| o.metadata.name == rs.metadata.name);
            before.is_none_or(|b| {
                b.spec != rs.spec || b.metadata.annotations != rs.metadata.annotations
            }) || p.update.iter().any(|u| u.metadata.name == rs.metadata.name)
        })
        .cloned()
        .collect();
    p.update = changed;
    if let Some(rev) = new.as_ref().map(revision).filter(|r| *r > 0) {
        let want = rev.to_string();
        let have = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if have != Some(&want) {
            p.revision = Some(want);
        }
    }
    let all: Vec<&ReplicaSet> = olds.iter().chain(new.iter()).collect();
    let mut st = status::calculate(d, &all, new.as_ref(), now);
    if let Some(name) = &status_extra {
        status::created(&mut st, name, now);
    }
    p.requeue_after = status::progress(d, &mut st, new.as_ref(), now);
    // History: fully scaled-down old ReplicaSets beyond the limit, oldest first.
    if status::complete(d, &st) {
        let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
        let mut cleanable: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
                    && !podutil::is_terminating(&rs.metadata)
            })
            .collect();
        cleanable.sort_by_key(|rs| (revision(rs), created_at(rs)));
        if cleanable.len() > limit {
            let n = cleanable.len() - limit;
            p.delete = cleanable[..n]
                .iter()
                .filter_map(|rs| rs.metadata.name.clone())
                .collect();
        }
    }
    p.status = st;
    p
}

/// Syncs Deployments against the caches.
pub struct DeploymentController {
    pub cp: Arc<dyn ControlPlane>,
    pub deployments: Cache,
    pub replica_sets: Cache,
    pub pods: Cache,
}

impl DeploymentController {
    /// One sync of the Deployment `key`; `Ok(Some(d))` asks to sync again after `d`.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::Deployment(d)) = self.deployments.get(key) else {
            return Ok(None);
        };
        let rss = self.replica_sets.replica_sets(&key.namespace);
        let pods = self.pods.pods(&key.namespace);
        let plan = plan(&d, &rss, &pods, Timestamp::now());
        if let Some(rs) = plan.create {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let template = rs.spec.as_ref().and_then(|s| s.template.clone());
            match self.cp.create(Object::from(rs), None).await {
                Ok(_) => tracing::info!(deployment = %key, rs = %name, "created ReplicaSet"),
                Err(e @ controlplane::Error::AlreadyExists { .. }) => {
                    self.on_name_taken(&d, &name, template).await?;
                    return Err(Error::write(format!("create ReplicaSet {name}"), e));
                }
                Err(e) => return Err(Error::write(format!("create ReplicaSet {name}"), e)),
            }
        }
        for rs in plan.update {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let n = spec_replicas(&rs);
            self.cp
                .update(Object::from(rs), None)
                .await
                .map_err(|e| Error::write(format!("scale ReplicaSet {name} to {n}"), e))?;
            tracing::info!(deployment = %key, rs = %name, replicas = n, "scaled ReplicaSet");
        }
        for name in plan.delete {
            let r = ObjectRef::new(Kind::ReplicaSet, &key.namespace, &name);
            match self.cp.delete(&r, None).await {
                Ok(_) => {
                    tracing::info!(deployment = %key, rs = %name, "deleted old ReplicaSet (revision history limit)")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::write(format!("delete ReplicaSet {name}"), e)),
            }
        }
        if d.status.as_ref() != Some(&plan.status) || plan.revision.is_some() {
            let mut d = d;
            // Through `/status`, as kube's controller: no new generation.
            if let Some(rev) = plan.revision {
                set_annotation(&mut d.metadata, REVISION, rev);
            }
            d.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::Deployment(d), key).await?;
        }
        Ok(plan.requeue_after)
    }

    /// The new ReplicaSet's name is taken. Ours with this template: the
    /// cache lags, the next sync sees it. Anything else is a hash
    /// collision: `status.collisionCount` goes up, and with it the hash.
    async fn on_name_taken(
        &self,
        d: &Deployment,
        name: &str,
        template: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
    ) -> Result<()> {
        let r = ObjectRef::new(
            Kind::ReplicaSet,
            d.metadata.namespace.as_deref().unwrap_or_default(),
            name,
        );
        let Ok(Object::ReplicaSet(existing)) = self.cp.get(&r).await else {
            return Ok(());
        };
        let uid = d.metadata.uid.as_deref().unwrap_or_default();
        let same = match (
            existing.spec.as_ref().and_then(|s| s.template.as_ref()),
            template.as_ref(),
        ) {
            (Some(a), Some(b)) => podutil::same_template(a, b),
            _ => false,
        };
        if controlled_by(&existing.metadata, uid) && same {
            return Ok(());
        }
        let mut d = d.clone();
        let st = d.status.get_or_insert_with(Default::default);
        st.collision_count = Some(st.collision_count.unwrap_or(0) + 1);
        tracing::info!(rs = %name, "pod-template-hash collision; counting it");
        self.cp.update_status(Object::from(d)).await?;
        Ok(())
    }

    /// The Deployment a ReplicaSet belongs to, or for an orphan every
    /// Deployment whose selector matches.
    pub fn keys_for_rs(deployments: &Cache, rs: &Object) -> Vec<ObjectRef> {
        deployments.owners_of(rs, Kind::Deployment, |o| match o {
            Object::Deployment(d) => d.spec.as_ref().map(|s| &s.selector),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
