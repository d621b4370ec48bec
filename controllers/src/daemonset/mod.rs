//! The DaemonSet controller: one pod per eligible node. A node is eligible
//! when it matches the template's `nodeSelector` and the template tolerates
//! its NoSchedule and NoExecute taints (with the tolerations kube adds to
//! every DaemonSet pod: not-ready, unreachable, unschedulable, the
//! pressure taints). Pods are bound to their node directly (there is no
//! scheduler to place them), a node that joins gets its pod, a node that
//! stops being eligible loses it, a Failed pod is replaced. A new template
//! rolls out by deleting out-of-date pods, at most `maxUnavailable`
//! (default 1) unavailable at a time. [`plan`] decides from plain data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{labels, ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::informer::Cache;
use crate::pods::{self as podutil, controlled_by};
use crate::statefulset::REVISION_LABEL;
use crate::Result;

/// What one sync of a DaemonSet should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to make a pod on.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
    pub requeue_after: Option<Duration>,
}

/// The tolerations kube's DaemonSet controller adds to every pod.
fn implied_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether `tol` tolerates `taint` (kube's ToleratesTaint).
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            key == taint.key
                && tol.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

/// Whether `ds`'s pods may run on `node`.
pub fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let node_labels = node.metadata.labels.clone().unwrap_or_default();
    let selected = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| node_labels.get(k) == Some(v)));
    let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    tolerations.extend(implied_tolerations());
    let tolerated = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    selected && tolerated
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn failed(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// The template's hash, the revision pods carry.
pub fn revision(ds: &DaemonSet) -> String {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    podutil::template_hash(&template, collisions)
}

/// Decides one sync of `ds` from the cluster's nodes and the pods of its
/// namespace.
pub fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod], now: Timestamp) -> Plan {
    let mut p = Plan::default();
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let rev = revision(ds);
    let mine: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            controlled_by(&pod.metadata, uid)
                && labels::matches(
                    &spec.selector,
                    pod.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
        })
        .collect();
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in &mine {
        by_node.entry(node_of(pod)).or_default().push(pod);
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let deleting = podutil::is_terminating(&ds.metadata);
    let want: Vec<&Node> = nodes.iter().filter(|n| eligible(ds, n)).collect();
    let wanted = |name: &str| {
        want.iter()
            .any(|n| n.metadata.name.as_deref() == Some(name))
    };
    let name_of = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();

    // Status describes what is there.
    let on_wanted: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|pod| wanted(node_of(pod)) && !podutil::is_terminating(&pod.metadata))
        .collect();
    let scheduled_nodes = |f: &dyn Fn(&Pod) -> bool| {
        let mut n: Vec<&str> = on_wanted
            .iter()
            .filter(|p| f(p))
            .map(|p| node_of(p))
            .collect();
        n.dedup();
        n.len() as i32
    };
    let current = scheduled_nodes(&|_| true);
    let ready = scheduled_nodes(&podutil::is_ready);
    let available = scheduled_nodes(&|pod| podutil::is_available(pod, min_ready, now));
    let updated = scheduled_nodes(&|pod| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            == Some(&rev)
    });
    let misscheduled = by_node.keys().filter(|n| !wanted(n)).count() as i32;
    p.status = DaemonSetStatus {
        desired_number_scheduled: want.len() as i32,
        current_number_scheduled: current,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((want.len() as i32 - available).max(0)),
        number_misscheduled: misscheduled,
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if deleting {
        return p;
    }
    // Pods on nodes that do not want them; failed pods; extras.
    for (node, pods) in &by_node {
        let live: Vec<&&Pod> = pods
            .iter()
            .filter(|p| !podutil::is_terminating(&p.metadata))
            .collect();
        if !wanted(node) {
            p.delete.extend(live.iter().map(|pod| name_of(pod)));
            continue;
        }
        let (bad, good): (Vec<&&Pod>, Vec<&&Pod>) = live.iter().partition(|pod| failed(pod));
        p.delete.extend(bad.iter().map(|pod| name_of(pod)));
        // More than one: keep the oldest.
        let mut good = good;
        good.sort_by_key(|pod| pod.metadata.creation_timestamp.as_ref().map(|t| t.0));
        p.delete.extend(good.iter().skip(1).map(|pod| name_of(pod)));
    }
    for n in &want {
        let name = n.metadata.name.clone().unwrap_or_default();
        let has = by_node
            .get(name.as_str())
            .is_some_and(|pods| pods.iter().any(|pod| !failed(pod)));
        if !has {
            p.create.push(name);
        }
    }
    // Rolling update: out-of-date pods go, while at most maxUnavailable
    // of the wanted nodes are without an available pod.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling {
        let max_unavailable = match spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
        {
            Some(IntOrString::Int(n)) => n.max(0) as usize,
            Some(IntOrString::String(pct)) => {
                let pct: usize = pct.trim_end_matches('%').parse().unwrap_or(0);
                (want.len() * pct / 100).max(1)
            }
            None => 1,
        }
        .max(1);
        let mut unavailable = want.len().saturating_sub(available as usize);
        let mut old: Vec<&Pod> = on_wanted
            .iter()
            .copied()
            .filter(|pod| {
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(REVISION_LABEL))
                    != Some(&rev)
                    && !p.delete.contains(&name_of(pod))
            })
            .collect();
        // Unavailable old pods first: replacing them costs nothing.
        old.sort_by_key(|pod| podutil::is_available(pod, min_ready, now));
        for pod in old {
            let is_available = podutil::is_available(pod, min_ready, now);
            if is_available {
                if unavailable >= max_unavailable {
                    break;
                }
                unavailable += 1;
            }
            p.delete.push(name_of(pod));
        }
    }
    if min_ready > 0 && available < ready {
        p.requeue_after = Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1)));
    }
    p
}

/// The pod of `ds` for `node`: the template, bound to the node, with the
/// revision label and the controller reference.
pub fn new_pod(ds: &DaemonSet, node: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision(ds));
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in implied_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", podutil::random_suffix())),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![podutil::controller_ref(
                "apps/v1",
                "DaemonSet",
                &ds.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Syncs DaemonSets against the caches.
pub struct DaemonSetController {
    pub cp: Arc<dyn ControlPlane>,
    pub sets: Cache,
    pub pods: Cache,
    pub nodes: Cache,
}

impl DaemonSetController {
    /// One sync of the DaemonSet `key`.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::DaemonSet(ds)) = self.sets.get(key) else {
            return Ok(None);
        };
        let nodes: Vec<Node> = self
            .nodes
            .all()
            .into_iter()
            .filter_map(|o| match o {
                Object::Node(n) => Some(*n),
                _ => None,
            })
            .collect();
        let pods = self.pods.pods(&key.namespace);
        let plan = plan(&ds, &nodes, &pods, Timestamp::now());
        for node in &plan.create {
            let pod = new_pod(&ds, node);
            let name = pod.metadata.name.clone().unwrap_or_default();
            self.cp
                .create(Object::from(pod), None)
                .await
                .map_err(|e| crate::Error::write(format!("create pod {name} for {key}"), e))?;
            tracing::info!(daemonset = %key, pod = %name, %node, "created pod");
        }
        for name in &plan.delete {
            match self
                .cp
                .delete(&ObjectRef::new(Kind::Pod, &key.namespace, name), None)
                .await
            {
                Ok(_) => tracing::info!(daemonset = %key, pod = %name, "deleted pod"),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(crate::Error::write(
                        format!("delete pod {name} of {key}"),
                        e,
                    ))
                }
            }
        }
        if ds.status.as_ref() != Some(&plan.status) {
            let mut ds = ds;
            ds.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::DaemonSet(ds), key).await?;
        }
        Ok(plan.requeue_after)
    }

    /// The DaemonSets a pod change concerns.
    pub fn keys_for_pod(sets: &Cache, pod: &Object) -> Vec<ObjectRef> {
        sets.owners_of(pod, Kind::DaemonSet, |o| match o {
            Object::DaemonSet(s) => s.spec.as_ref().map(|s| &s.selector),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
