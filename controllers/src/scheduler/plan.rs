//! The scheduler's pure decision: which nodes can run a pod (filters) and
//! which of them suits it best (scores), from plain data. No I/O.
//!
//! Filters, as kube-scheduler's default plugins: the node is ready (its
//! heartbeat Lease is alive and its Ready condition true), schedulable
//! (`spec.unschedulable` unless tolerated), matches `nodeSelector` and
//! required node affinity, its NoSchedule/NoExecute taints are
//! tolerated, the pod's requests fit its allocatable CPU, memory and pod
//! count, its host ports are free, and hard topology spread constraints
//! hold. Scores (weights as kube's defaults): least requested resources
//! (1), spreading one owner's pods over nodes (2, kube's default
//! topology spread by hostname), preferred node affinity (2),
//! PreferNoSchedule taints (3), soft topology spread (2).

use std::collections::{BTreeMap, HashMap};

use controlplane::quantity::Quantity;
use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

/// CPU and memory kube-scheduler assumes for scoring a container that
/// requests none (`DefaultMilliCPURequest`, `DefaultMemoryRequest`).
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;
/// The taint a lost node carries in Kubernetes.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// A host port: protocol, port, host IP (`0.0.0.0` for all).
pub type HostPort = (String, i32, String);

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub milli_cpu: i64,
    pub memory: i64,
    /// The same with kube's defaults for containers that ask nothing
    /// (scoring only).
    pub score_milli_cpu: i64,
    pub score_memory: i64,
    pub host_ports: Vec<HostPort>,
}

fn quantity(c: &Container, name: &str) -> Option<(i64, bool)> {
    let r = c.resources.as_ref()?;
    // A limit without a request is the request (kube's defaulting).
    let q = r
        .requests
        .as_ref()
        .and_then(|m| m.get(name))
        .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))?;
    let q = Quantity::parse(&q.0).ok()?;
    let v = if name == "cpu" {
        q.milli_value()?
    } else {
        q.value()?
    };
    Some((v, true))
}

fn container_requests(c: &Container) -> (i64, i64, i64, i64) {
    let cpu = quantity(c, "cpu").map(|(v, _)| v);
    let mem = quantity(c, "memory").map(|(v, _)| v);
    (
        cpu.unwrap_or(0),
        mem.unwrap_or(0),
        cpu.unwrap_or(DEFAULT_MILLI_CPU),
        mem.unwrap_or(DEFAULT_MEMORY),
    )
}

/// The pod's requests as kube computes them: the sum over its containers
/// and sidecars, or the largest init container's if more, plus overhead.
pub fn requests(pod: &Pod) -> Requests {
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let mut sum = (0, 0, 0, 0);
    let add = |a: &mut (i64, i64, i64, i64), b: (i64, i64, i64, i64)| {
        a.0 += b.0;
        a.1 += b.1;
        a.2 += b.2;
        a.3 += b.3;
    };
    for c in &spec.containers {
        add(&mut sum, container_requests(c));
    }
    let mut init_max = (0, 0, 0, 0);
    let mut sidecars = (0, 0, 0, 0);
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, r);
        } else {
            // An init container runs beside the sidecars started before it.
            init_max.0 = init_max.0.max(r.0 + sidecars.0);
            init_max.1 = init_max.1.max(r.1 + sidecars.1);
            init_max.2 = init_max.2.max(r.2 + sidecars.2);
            init_max.3 = init_max.3.max(r.3 + sidecars.3);
        }
    }
    add(&mut sum, sidecars);
    let mut r = Requests {
        milli_cpu: sum.0.max(init_max.0),
        memory: sum.1.max(init_max.1),
        score_milli_cpu: sum.2.max(init_max.2),
        score_memory: sum.3.max(init_max.3),
        host_ports: Vec::new(),
    };
    if let Some(o) = spec.overhead.as_ref() {
        let get = |k: &str| o.get(k).and_then(|q| Quantity::parse(&q.0).ok());
        if let Some(c) = get("cpu").and_then(|q| q.milli_value()) {
            r.milli_cpu += c;
            r.score_milli_cpu += c;
        }
        if let Some(m) = get("memory").and_then(|q| q.value()) {
            r.memory += m;
            r.score_memory += m;
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for p in containers.flat_map(|c| c.ports.iter().flatten()) {
        if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            r.host_ports.push((proto, hp, ip));
        }
    }
    r
}

/// What is already placed on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub milli_cpu: i64,
    pub memory: i64,
    pub score_milli_cpu: i64,
    pub score_memory: i64,
    pub pods: i64,
    /// Host ports in use, with how many pods use each.
    pub host_ports: BTreeMap<HostPort, u32>,
    /// Pods per controlling owner uid.
    pub owners: HashMap<String, u32>,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub node: &'a Node,
    /// Its heartbeat Lease expired.
    pub lost: bool,
    pub usage: &'a Usage,
    /// Per hard or soft topology spread constraint of the pod (by index):
    /// the matching pods in this node's domain, `None` when the node lacks
    /// the topology label.
    pub spread: Vec<Option<u32>>,
}

/// Why a node cannot run the pod, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    NotReady,
    Unschedulable,
    Selector,
    Taint(String),
    Cpu,
    Memory,
    Pods,
    HostPort,
    Spread,
}

impl Misfit {
    pub fn text(&self) -> String {
        match self {
            Misfit::NotReady => "node(s) were not ready".into(),
            Misfit::Unschedulable => "node(s) were unschedulable".into(),
            Misfit::Selector => "node(s) didn't match Pod's node affinity/selector".into(),
            Misfit::Taint(t) => format!("node(s) had untolerated taint {{{t}}}"),
            Misfit::Cpu => "Insufficient cpu".into(),
            Misfit::Memory => "Insufficient memory".into(),
            Misfit::Pods => "Too many pods".into(),
            Misfit::HostPort => "node(s) didn't have free ports for the requested pod ports".into(),
            Misfit::Spread => "node(s) didn't match pod topology spread constraints".into(),
        }
    }
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn allocatable(n: &Node, name: &str) -> Option<i64> {
    let q = n.status.as_ref()?.allocatable.as_ref()?.get(name)?;
    let q = Quantity::parse(&q.0).ok()?;
    if name == "cpu" {
        q.milli_value()
    } else {
        q.value()
    }
}

/// Whether `t` tolerates `taint` (kube's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            key == taint.key
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches (every expression and field;
/// an empty term matches nothing, as kube's).
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = labels(node);
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// `nodeSelector` and required node affinity.
fn selects(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = labels(node);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// The pod's topology spread constraints: (hard, key, maxSkew).
pub fn spread_constraints(pod: &Pod) -> Vec<(bool, String, i32)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c.when_unsatisfiable == "DoNotSchedule",
                c.topology_key.clone(),
                c.max_skew.max(1),
            )
        })
        .collect()
}

/// Why `c` cannot run `pod`, if it cannot. `min_spread[i]` is the fewest
/// matching pods in any eligible domain of constraint `i`.
pub fn misfit(pod: &Pod, req: &Requests, c: &Candidate, min_spread: &[u32]) -> Option<Misfit> {
    let node = c.node;
    if c.lost {
        return Some(Misfit::Taint(format!("{UNREACHABLE_TAINT}: ")));
    }
    if !ready(node) {
        return Some(Misfit::NotReady);
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        let t = Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerated(pod, &t) {
            return Some(Misfit::Unschedulable);
        }
    }
    if !selects(pod, node) {
        return Some(Misfit::Selector);
    }
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(pod, t) {
            let value = t.value.as_deref().unwrap_or_default();
            return Some(Misfit::Taint(format!("{}: {value}", t.key)));
        }
    }
    let u = c.usage;
    if allocatable(node, "cpu")
        .is_some_and(|a| req.milli_cpu > 0 && u.milli_cpu + req.milli_cpu > a)
    {
        return Some(Misfit::Cpu);
    }
    if allocatable(node, "memory").is_some_and(|a| req.memory > 0 && u.memory + req.memory > a) {
        return Some(Misfit::Memory);
    }
    if allocatable(node, "pods").is_some_and(|a| u.pods + 1 > a) {
        return Some(Misfit::Pods);
    }
    for (proto, port, ip) in &req.host_ports {
        let clash = u.host_ports.keys().any(|(p, n, i)| {
            p == proto && n == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        });
        if clash {
            return Some(Misfit::HostPort);
        }
    }
    for (i, (hard, _, max_skew)) in spread_constraints(pod).iter().enumerate() {
        if !hard {
            continue;
        }
        let Some(count) = c.spread.get(i).copied().flatten() else {
            return Some(Misfit::Spread);
        };
        let min = min_spread.get(i).copied().unwrap_or(0);
        if i64::from(count) + 1 - i64::from(min) > i64::from(*max_skew) {
            return Some(Misfit::Spread);
        }
    }
    None
}

/// How well `c` suits the pod (higher is better); `max_owner` is the
/// most pods of the pod's owner on any feasible node.
fn score(
    pod: &Pod,
    req: &Requests,
    c: &Candidate,
    owner: Option<&str>,
    max_owner: u32,
    max_spread: &[u32],
) -> i64 {
    let node = c.node;
    let u = c.usage;
    // Least requested: free share of CPU and memory after placing, 0-100.
    let free = |cap: Option<i64>, used: i64| match cap {
        Some(cap) if cap > 0 => ((cap - used).max(0) * 100 / cap).min(100),
        _ => 0,
    };
    let least = (free(
        allocatable(node, "cpu"),
        u.score_milli_cpu + req.score_milli_cpu,
    ) + free(
        allocatable(node, "memory"),
        u.score_memory + req.score_memory,
    )) / 2;
    // Spread one owner's pods: fewer already here is better, 0-100.
    let spread = match owner {
        Some(uid) if max_owner > 0 => {
            let here = u.owners.get(uid).copied().unwrap_or(0);
            i64::from(max_owner - here.min(max_owner)) * 100 / i64::from(max_owner)
        }
        _ => 100,
    };
    // Preferred node affinity: matched weight share, 0-100.
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity = match preferred {
        Some(terms) if !terms.is_empty() => {
            let total: i64 = terms.iter().map(|t| i64::from(t.weight.max(0))).sum();
            let hit: i64 = terms
                .iter()
                .filter(|t| term_matches(&t.preference, node))
                .map(|t| i64::from(t.weight.max(0)))
                .sum();
            if total > 0 {
                hit * 100 / total
            } else {
                0
            }
        }
        _ => 0,
    };
    // PreferNoSchedule taints not tolerated: fewer is better.
    let soft_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(pod, t))
        .count() as i64;
    let taints = 100 - (soft_taints * 25).min(100);
    // Soft topology spread: fewer matching pods in the domain is better.
    let mut soft_spread = 0;
    for (i, (hard, _, _)) in spread_constraints(pod).iter().enumerate() {
        if *hard {
            continue;
        }
        let max = max_spread.get(i).copied().unwrap_or(0);
        let here = c.spread.get(i).copied().flatten().unwrap_or(max);
        if max > 0 {
            soft_spread += i64::from(max - here.min(max)) * 100 / i64::from(max);
        } else {
            soft_spread += 100;
        }
    }
    least + 2 * spread + 2 * affinity + 3 * taints + 2 * soft_spread
}

/// The controlling owner's uid of a pod.
pub fn owner_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Picks a node for `pod` among `candidates`, or says why none fits in
/// kube-scheduler's words (`0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) didn't match Pod's node affinity/selector.`). Ties go to the
/// candidate `tie_break` picks (an index among the best; the caller
/// passes a random one so equal nodes share the load).
pub fn schedule(
    pod: &Pod,
    candidates: &[Candidate],
    tie_break: impl FnOnce(usize) -> usize,
) -> Result<String, String> {
    let req = requests(pod);
    let constraints = spread_constraints(pod);
    // The fewest/most matching pods over the domains of nodes that pass
    // everything but spread (kube counts eligible nodes' domains).
    let mut min_spread = vec![u32::MAX; constraints.len()];
    let mut max_spread = vec![0; constraints.len()];
    for c in candidates {
        if misfit(pod, &req, c, &vec![u32::MAX; constraints.len()])
            .is_some_and(|m| m != Misfit::Spread)
        {
            continue;
        }
        for (i, n) in c.spread.iter().enumerate() {
            if let Some(n) = n {
                min_spread[i] = min_spread[i].min(*n);
                max_spread[i] = max_spread[i].max(*n);
            }
        }
    }
    for m in &mut min_spread {
        if *m == u32::MAX {
            *m = 0;
        }
    }
    let mut misfits: BTreeMap<Misfit, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for c in candidates {
        match misfit(pod, &req, c, &min_spread) {
            Some(m) => *misfits.entry(m).or_default() += 1,
            None => feasible.push(c),
        }
    }
    if feasible.is_empty() {
        let mut reasons: Vec<String> = misfits
            .iter()
            .map(|(m, n)| format!("{n} {}", m.text()))
            .collect();
        reasons.sort();
        let detail = if reasons.is_empty() {
            String::new()
        } else {
            format!(" {}", reasons.join(", "))
        };
        return Err(format!(
            "0/{} nodes are available:{detail}.",
            candidates.len()
        ));
    }
    let owner = owner_uid(pod);
    let max_owner = owner
        .map(|uid| {
            feasible
                .iter()
                .map(|c| c.usage.owners.get(uid).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let scored: Vec<(i64, &Candidate)> = feasible
        .iter()
        .map(|c| (score(pod, &req, c, owner, max_owner, &max_spread), *c))
        .collect();
    let best = scored.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let top: Vec<&Candidate> = scored
        .iter()
        .filter(|(s, _)| *s == best)
        .map(|(_, c)| *c)
        .collect();
    let pick = tie_break(top.len()).min(top.len() - 1);
    Ok(top[pick].node.metadata.name.clone().unwrap_or_default())
}

/// The topology domains (label values) of `key` on the nodes, for
/// counting spread: node name -> value.
pub fn domains<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    key: &str,
) -> HashMap<String, String> {
    nodes
        .into_iter()
        .filter_map(|n| {
            let v = n.metadata.labels.as_ref()?.get(key)?.clone();
            Some((n.metadata.name.clone()?, v))
        })
        .collect()
}
