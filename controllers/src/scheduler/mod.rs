//! The scheduler: binds each pending pod (no `nodeName`, `schedulerName`
//! unset or `default-scheduler`, not being deleted) to the node that suits
//! it best, through the binding subresource's rules
//! (`controlplane::api::bind`), as kube-scheduler does; [`plan`] decides.
//! It runs in the controller manager, so one agent schedules at a time.
//!
//! What each node already holds ([`Usages`]: requests, host ports, pods
//! per owner) is kept up to date from the pod informer and, right after
//! a bind, from the bind itself (kube's "assume"), so the next pod in a
//! burst sees the last one placed before the watch reports it. A pod
//! that fits nowhere gets a `FailedScheduling` event and a `PodScheduled:
//! False` condition saying why, and is tried again when a node or a pod
//! changes what is free (and every 30 s).

pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::events::{Recorder, Type};
use controlplane::{labels, ControlPlane, Object, ObjectRef};
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::endpointslice::NODE_LEASE_NAMESPACE;
use crate::informer::Cache;
use crate::queue::Queue;
use crate::{Error, Result};
use plan::{Candidate, Requests, Usage};

/// The scheduler's name, as pods name it.
pub const NAME: &str = "default-scheduler";
/// An unschedulable pod is tried again at least this often.
const RETRY: Duration = Duration::from_secs(30);

/// Whether `pod` waits for this scheduler.
pub fn pending(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
        .is_empty()
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && !finished(pod)
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether `pod` already says it fits nowhere, for this reason.
fn says_unschedulable(pod: &Pod, why: &str) -> bool {
    let conds = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conds.into_iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(why)
    })
}

/// What one placed pod takes from its node.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    req: Requests,
    owner: Option<String>,
}

impl Placed {
    /// The pod's share of its node, if it is bound and not finished.
    fn of(pod: &Pod) -> Option<Placed> {
        let node = pod
            .spec
            .as_ref()?
            .node_name
            .clone()
            .filter(|n| !n.is_empty())?;
        if finished(pod) {
            return None;
        }
        Some(Placed {
            node,
            req: plan::requests(pod),
            owner: plan::owner_uid(pod).map(str::to_string),
        })
    }
}

#[derive(Default)]
struct UsagesInner {
    by_pod: HashMap<(String, String), Placed>,
    nodes: HashMap<String, Usage>,
}

/// What every node holds, kept from pod events and binds.
#[derive(Default)]
pub struct Usages {
    inner: Mutex<UsagesInner>,
}

fn change(u: &mut Usage, p: &Placed, sign: i64) {
    u.milli_cpu += sign * p.req.milli_cpu;
    u.memory += sign * p.req.memory;
    u.score_milli_cpu += sign * p.req.score_milli_cpu;
    u.score_memory += sign * p.req.score_memory;
    u.pods += sign;
    for hp in &p.req.host_ports {
        u.host_ports.bump(hp.clone(), sign);
    }
    if let Some(o) = &p.owner {
        u.owners.bump(o.clone(), sign);
    }
}

/// A map of counts that drops keys at zero.
trait CountMap<K> {
    fn bump(&mut self, k: K, sign: i64);
}

impl<K: Ord> CountMap<K> for std::collections::BTreeMap<K, u32> {
    fn bump(&mut self, k: K, sign: i64) {
        let n = self.entry(k).or_default();
        *n = if sign > 0 {
            *n + 1
        } else {
            n.saturating_sub(1)
        };
        self.retain(|_, n| *n > 0);
    }
}

impl<K: std::hash::Hash + Eq> CountMap<K> for HashMap<K, u32> {
    fn bump(&mut self, k: K, sign: i64) {
        let n = self.entry(k).or_default();
        *n = if sign > 0 {
            *n + 1
        } else {
            n.saturating_sub(1)
        };
        self.retain(|_, n| *n > 0);
    }
}

impl Usages {
    fn lock(&self) -> std::sync::MutexGuard<'_, UsagesInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records pod `ns/name`'s share (`None`: it holds nothing).
    fn set(&self, ns: &str, name: &str, placed: Option<Placed>) {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        if let Some(old) = inner.by_pod.remove(&key) {
            if let Some(u) = inner.nodes.get_mut(&old.node) {
                change(u, &old, -1);
            }
        }
        if let Some(p) = placed {
            change(inner.nodes.entry(p.node.clone()).or_default(), &p, 1);
            inner.by_pod.insert(key, p);
        }
    }

    /// Records a pod change; whether it freed room on a node (a pod gone,
    /// finished, or moved).
    pub fn pod_changed(&self, old: Option<&Object>, new: Option<&Object>) -> bool {
        let Some(o) = new.or(old) else { return false };
        let placed = match new {
            Some(Object::Pod(p)) => Placed::of(p),
            _ => None,
        };
        let had = match old {
            Some(Object::Pod(p)) => Placed::of(p).is_some(),
            _ => false,
        };
        let freed = had && placed.is_none();
        self.set(o.namespace(), o.name(), placed);
        freed
    }

    fn snapshot(&self) -> HashMap<String, Usage> {
        self.lock().nodes.clone()
    }
}

/// The scheduler.
pub struct Scheduler {
    pub cp: Arc<dyn ControlPlane>,
    pub pods: Cache,
    pub nodes: Cache,
    pub leases: Cache,
    pub usages: Arc<Usages>,
    /// Pods that fit nowhere, tried again when room may have appeared.
    pub unschedulable: Arc<Mutex<BTreeSet<ObjectRef>>>,
    pub events: Recorder,
    /// This scheduler's queue (a failed bind is queued again).
    pub queue: Queue,
    /// Binds being written.
    pub binds: Arc<tokio::sync::Semaphore>,
}

/// Binds written at once.
pub const BINDS_IN_FLIGHT: usize = 32;

fn random_below(n: usize) -> usize {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    if n == 0 {
        0
    } else {
        (r % n as u64) as usize
    }
}

impl Scheduler {
    fn unschedulable(&self) -> std::sync::MutexGuard<'_, BTreeSet<ObjectRef>> {
        self.unschedulable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places pod `key` if it is pending.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let pod = match self.pods.get(key) {
            Some(Object::Pod(p)) if pending(&p) => p,
            _ => {
                self.unschedulable().remove(key);
                return Ok(None);
            }
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
        let alive: BTreeSet<String> = self
            .leases
            .in_namespace(NODE_LEASE_NAMESPACE)
            .iter()
            .map(|l| l.name().to_string())
            .collect();
        let usages = self.usages.snapshot();
        let spread = self.spread_counts(&pod, &nodes);
        let empty = Usage::default();
        let candidates: Vec<Candidate> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let name = n.metadata.name.clone().unwrap_or_default();
                Candidate {
                    node: n,
                    lost: !alive.contains(&name),
                    usage: usages.get(&name).unwrap_or(&empty),
                    spread: spread.iter().map(|per_node| per_node[i]).collect(),
                }
            })
            .collect();
        match plan::schedule(&pod, &candidates, random_below) {
            Ok(node) => self.bind(key, *pod, node).await,
            Err(why) => {
                self.unschedulable().insert(key.clone());
                self.events
                    .pod(&pod, None, Type::Warning, "FailedScheduling", why.clone());
                self.mark_unschedulable(&pod, &why).await?;
                Ok(Some(RETRY))
            }
        }
    }

    /// Assumes `pod` on `node` at once (the next decision sees it) and
    /// writes the binding in the background, at most [`BINDS_IN_FLIGHT`]
    /// at a time, as kube-scheduler's binding cycle runs beside its
    /// scheduling cycle. A bind that fails is un-assumed (what the pod
    /// informer last saw counts again) and the pod queued again.
    async fn bind(&self, key: &ObjectRef, pod: Pod, node: String) -> Result<Option<Duration>> {
        let mut assumed = pod.clone();
        if let Some(spec) = assumed.spec.as_mut() {
            spec.node_name = Some(node.clone());
        }
        self.usages
            .set(&key.namespace, &key.name, Placed::of(&assumed));
        self.unschedulable().remove(key);
        let Ok(permit) = self.binds.clone().acquire_owned().await else {
            return Ok(None);
        };
        let (cp, usages, pods) = (self.cp.clone(), self.usages.clone(), self.pods.clone());
        let (queue, events, key) = (self.queue.clone(), self.events.clone(), key.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let uid = pod.metadata.uid.clone();
            // The cached pod is stripped: bind the stored one (read here,
            // compare-and-set on what was read; the uid guards against a
            // pod made again under the same name).
            let r = controlplane::api::bind(cp.as_ref(), &key, uid.as_deref(), &node).await;
            match r {
                Ok(_) => {
                    let msg = format!(
                        "Successfully assigned {}/{} to {node}",
                        key.namespace, key.name
                    );
                    events.pod(&pod, None, Type::Normal, "Scheduled", msg);
                }
                Err(e) => {
                    if !e.is_not_found() && !e.is_conflict() {
                        tracing::warn!(pod = %key, node, error = %e, "bind");
                    }
                    let seen = match pods.get(&key) {
                        Some(Object::Pod(p)) => Placed::of(&p),
                        _ => None,
                    };
                    usages.set(&key.namespace, &key.name, seen);
                    queue.add_rate_limited(key);
                }
            }
        });
        Ok(None)
    }

    /// Sets `PodScheduled: False` with the reason, as kube-scheduler does
    /// (`kubectl describe` and `get` show it), unless it says so already.
    async fn mark_unschedulable(&self, pod: &Pod, why: &str) -> Result<()> {
        if says_unschedulable(pod, why) {
            return Ok(());
        }
        // The cached pod is stripped: change the stored one's status.
        let cached = Object::from(pod.clone());
        let key = ObjectRef::of(&cached);
        let mut p = match crate::pods::fresh(self.cp.as_ref(), &cached).await {
            Ok(Object::Pod(p)) => *p,
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => return Ok(()),
            Err(e) => return Err(Error::write(format!("read {key}"), e)),
        };
        let status = p.status.get_or_insert_with(Default::default);
        let conds = status.conditions.get_or_insert_with(Vec::new);
        conds.retain(|c| c.type_ != "PodScheduled");
        conds.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(why.to_string()),
            last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            ..PodCondition::default()
        });
        if status.phase.is_none() {
            status.phase = Some("Pending".into());
        }
        match self.cp.update_status(Object::from(p)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(Error::write(format!("update status of {key}"), e)),
        }
    }

    /// Per topology spread constraint of `pod`, per node (in `nodes`
    /// order): the pods of its namespace matching the constraint's
    /// selector in that node's domain (`None`: no such label).
    fn spread_counts(&self, pod: &Pod, nodes: &[Node]) -> Vec<Vec<Option<u32>>> {
        let constraints = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.clone())
            .unwrap_or_default();
        if constraints.is_empty() {
            return Vec::new();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let others = self.pods.pods(ns);
        constraints
            .iter()
            .map(|c| {
                let domains = plan::domains(nodes, &c.topology_key);
                let mut per_domain: HashMap<&str, u32> = HashMap::new();
                for o in &others {
                    let Some(node) = o.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                        continue;
                    };
                    let matches = c.label_selector.as_ref().is_some_and(|sel| {
                        labels::matches(
                            sel,
                            o.metadata.labels.as_ref().unwrap_or(&Default::default()),
                        )
                    });
                    if matches && !finished(o) {
                        if let Some(d) = domains.get(node) {
                            *per_domain.entry(d.as_str()).or_default() += 1;
                        }
                    }
                }
                nodes
                    .iter()
                    .map(|n| {
                        let name = n.metadata.name.as_deref().unwrap_or_default();
                        domains
                            .get(name)
                            .map(|d| per_domain.get(d.as_str()).copied().unwrap_or(0))
                    })
                    .collect()
            })
            .collect()
    }
}
