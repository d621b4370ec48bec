//! The node lifecycle controller, as kube-controller-manager's: a node
//! whose heartbeat Lease expired (the agent stopped renewing it) is
//! unreachable — its `Ready` condition turns `Unknown` and it is tainted
//! `node.kubernetes.io/unreachable` with NoSchedule and NoExecute; when
//! its Lease is back the taints go and it is Ready again (our kubelet
//! posts its status at registration only, so the Lease is its heartbeat).
//! The taint manager's half: pods on a node with NoExecute taints they do
//! not tolerate are deleted at once, those tolerating them for
//! `tolerationSeconds` (300 s by default, the DefaultTolerationSeconds
//! admission) that long after the taint was added, so their controllers
//! recreate them on other nodes. [`plan`] decides.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use controlplane::events::{Recorder, Type};
use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::endpointslice::NODE_LEASE_NAMESPACE;
use crate::informer::Cache;
use crate::scheduler::plan::{tolerates, UNREACHABLE_TAINT};
use crate::{Error, Result};

/// Why a node is NotReady in our hands.
const UNKNOWN_REASON: &str = "NodeStatusUnknown";
/// A node younger than this without a Lease is still registering (the
/// agent writes its Node, then its Lease), not lost.
const REGISTRATION_GRACE: Duration = Duration::from_secs(10);

/// What to do about one node and its pods.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The node's taints and Ready condition to write, if they change.
    pub node: Option<Node>,
    /// Pods to delete now.
    pub evict: Vec<ObjectRef>,
    /// Look again then (the next toleration to run out).
    pub requeue_after: Option<Duration>,
}

#[cfg(test)]
fn ready_condition(n: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn unreachable(effect: &str, now: Timestamp) -> Taint {
    Taint {
        key: UNREACHABLE_TAINT.into(),
        effect: effect.into(),
        time_added: (effect == "NoExecute").then_some(Time(now)),
        value: None,
    }
}

/// The node as it should be (`lost` or not), or `None` when it already is.
fn node_state(node: &Node, lost: bool, now: Timestamp) -> Option<Node> {
    let mut n = node.clone();
    let spec = n.spec.get_or_insert_with(Default::default);
    let taints = spec.taints.get_or_insert_with(Vec::new);
    let ours = |t: &Taint| t.key == UNREACHABLE_TAINT;
    let mut changed = false;
    if lost {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints.iter().any(|t| ours(t) && t.effect == effect) {
                taints.push(unreachable(effect, now));
                changed = true;
            }
        }
    } else if taints.iter().any(ours) {
        taints.retain(|t| !ours(t));
        changed = true;
    }
    if taints.is_empty() {
        spec.taints = None;
    }
    let status = n.status.get_or_insert_with(Default::default);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let cond = conds.iter_mut().find(|c| c.type_ == "Ready");
    match (lost, cond) {
        (true, Some(c)) if c.status != "Unknown" => {
            c.status = "Unknown".into();
            c.reason = Some(UNKNOWN_REASON.into());
            c.message = Some("Kubelet stopped posting node status.".into());
            c.last_transition_time = Some(Time(now));
            changed = true;
        }
        (false, Some(c)) if c.reason.as_deref() == Some(UNKNOWN_REASON) => {
            c.status = "True".into();
            c.reason = Some("KubeletReady".into());
            c.message = Some("kubelet is posting ready status".into());
            c.last_transition_time = Some(Time(now));
            changed = true;
        }
        _ => {}
    }
    changed.then_some(n)
}

/// When `pod` must leave a node with `taints` (NoExecute only): `Some(0)`
/// at once, `Some(d)` after `d` more, `None` never.
fn eviction_in(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut soonest: Option<Duration> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations.iter().filter(|x| tolerates(x, t)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The shortest finite toleration bounds the stay; one without
        // seconds tolerates forever (kube's getMinTolerationTime).
        let Some(secs) = matching.iter().filter_map(|x| x.toleration_seconds).min() else {
            continue;
        };
        let added = t.time_added.as_ref().map_or(now, |a| a.0);
        let until = added + SignedDuration::from_secs(secs.max(0));
        let left = until.duration_since(now);
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    soonest
}

/// The plan for `node` (`lost`: registered, no live heartbeat Lease)
/// and the pods bound to it.
pub fn plan(node: &Node, lost: bool, pods: &[Pod], now: Timestamp) -> Plan {
    let updated = node_state(node, lost, now);
    let current = updated.as_ref().unwrap_or(node);
    let taints = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut plan = Plan {
        node: updated,
        ..Plan::default()
    };
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match eviction_in(p, &taints, now) {
            Some(d) if d.is_zero() => plan.evict.push(ObjectRef::new(
                Kind::Pod,
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name.as_deref().unwrap_or_default(),
            )),
            Some(d) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(d, |r| r.min(d)));
            }
            None => {}
        }
    }
    plan
}

/// The controller.
pub struct NodeLifecycleController {
    pub cp: Arc<dyn ControlPlane>,
    pub nodes: Cache,
    pub leases: Cache,
    pub pods: Cache,
    pub events: Recorder,
}

impl NodeLifecycleController {
    /// Brings node `key` and its pods in line.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::Node(node)) = self.nodes.get(key) else {
            return Ok(None);
        };
        let alive: BTreeSet<String> = self
            .leases
            .in_namespace(NODE_LEASE_NAMESPACE)
            .iter()
            .map(|l| l.name().to_string())
            .collect();
        let now = Timestamp::now();
        let age = node
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Duration::MAX, |t| {
                Duration::try_from(now.duration_since(t.0)).unwrap_or(Duration::ZERO)
            });
        if !alive.contains(&key.name) && age < REGISTRATION_GRACE {
            return Ok(Some(REGISTRATION_GRACE - age));
        }
        let lost = !alive.contains(&key.name);
        let pods: Vec<Pod> = self
            .pods
            .all()
            .into_iter()
            .filter_map(|o| match o {
                Object::Pod(p)
                    if p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                        == Some(key.name.as_str()) =>
                {
                    Some(*p)
                }
                _ => None,
            })
            .collect();
        let plan = plan(&node, lost, &pods, now);
        if let Some(n) = plan.node {
            let status = n.status.clone();
            let written = match self.cp.update(Object::from(n), None).await {
                Ok(o) => o,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(Error::write(format!("update {key}"), e)),
            };
            if let Object::Node(mut w) = written {
                w.status = status;
                crate::write_status(self.cp.as_ref(), Object::Node(w), key).await?;
            }
            let what = if lost {
                "unreachable"
            } else {
                "reachable again"
            };
            tracing::info!(node = %key.name, "node {what}");
        }
        for pod_key in plan.evict {
            let this = |p: &&Pod| {
                p.metadata.name.as_deref() == Some(pod_key.name.as_str())
                    && p.metadata.namespace.as_deref() == Some(pod_key.namespace.as_str())
            };
            if let Some(p) = pods.iter().find(this) {
                let msg = format!("Marking for deletion Pod {pod_key}");
                self.events
                    .pod(p, None, Type::Normal, "TaintManagerEviction", msg);
            }
            match self.cp.delete(&pod_key, None).await {
                Ok(_) => {
                    tracing::info!(pod = %pod_key, node = %key.name, "evicted from a tainted node")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::write(format!("evict {pod_key}"), e)),
            }
        }
        Ok(plan.requeue_after.map(|d| d + Duration::from_millis(100)))
    }
}
