//! The engine: the pods, namespaces and policies it was told of, which
//! set elements each (pod, policy) pair contributes (counted, since
//! several pairs can add one element), and the element changes not yet
//! applied. A sync sends one transaction: the whole table when it must
//! (first sync, after a failure, or when the table was replaced), else
//! only element changes, plus the chains of policies that came or went.
//! A pod's change costs one pass over the policies that can concern it;
//! a policy's change one pass over the pods that can concern it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostnet::nftables::{Batch, Canary, Elem, NfTables, OwnedTable, Value};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::compile::{compile, Compiled, Direction};
use crate::pods::{own_elements, policy_elements, ElemKey, Labels, PodInfo};
use crate::ruleset::{self, set_named, table, NodeConfig};
use crate::Result;

/// (namespace, name).
pub type Key = (String, String);

/// The contributions of one pod: by policy id ("" for its own).
type Contributions = HashMap<String, Vec<ElemKey>>;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncOutcome {
    /// The whole table was rebuilt.
    pub full: bool,
    /// Elements added or deleted (a full sync counts what it wrote).
    pub elements: usize,
    /// Policies whose chains were created or deleted.
    pub policies_added: usize,
    pub policies_removed: usize,
    /// Whether anything was sent.
    pub applied: bool,
    pub duration: Duration,
    /// Of which sending the transaction (encoding and the kernel).
    pub apply: Duration,
}

/// The policy engine of one node.
pub struct Engine {
    nft: Arc<dyn NfTables>,
    node: NodeConfig,
    pods: HashMap<Key, PodInfo>,
    /// namespace -> names of its pods.
    by_namespace: HashMap<String, BTreeSet<String>>,
    namespaces: HashMap<String, Labels>,
    policies: BTreeMap<Key, Arc<Compiled>>,
    contributions: HashMap<Key, Contributions>,
    /// Per element (set, key): each value contributed, with its count,
    /// the latest last (sets have one, `None`). The kernel holds the
    /// latest: two pods sharing an address for a moment (one deleted, its
    /// address already reused) never make a map key ambiguous.
    counts: HashMap<Slot, Vec<(Option<Value>, u32)>>,
    /// Element changes since the last apply: true adds, false deletes.
    /// Elements changed since the last apply, with what the kernel held
    /// then (`None`: nothing).
    pending: HashMap<Slot, Option<Option<Value>>>,
    added: Vec<Arc<Compiled>>,
    removed: Vec<Arc<Compiled>>,
    /// Addresses the kubelet reported before the pod's status had them:
    /// key -> (uid, address).
    gated: HashMap<Key, (String, Ipv4Addr)>,
    /// Namespace -> its number in the maps (never reused).
    ns_numbers: HashMap<String, u32>,
    /// The namespace chains the kernel holds.
    ns_chains: HashSet<(String, Direction)>,
    table: OwnedTable,
}

fn empty_labels() -> &'static Labels {
    static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Labels::new)
}

impl Engine {
    /// An engine writing through `nft` for `node`; the first sync is full.
    pub fn new(nft: Arc<dyn NfTables>, node: NodeConfig) -> Engine {
        Engine {
            nft,
            node,
            pods: HashMap::new(),
            by_namespace: HashMap::new(),
            namespaces: HashMap::new(),
            policies: BTreeMap::new(),
            contributions: HashMap::new(),
            counts: HashMap::new(),
            pending: HashMap::new(),
            added: Vec::new(),
            removed: Vec::new(),
            gated: HashMap::new(),
            ns_numbers: HashMap::new(),
            ns_chains: HashSet::new(),
            table: OwnedTable::new(table()),
        }
    }

    /// How many policies, pods and elements the engine holds.
    pub fn size(&self) -> (usize, usize, usize) {
        (self.policies.len(), self.pods.len(), self.counts.len())
    }

    /// Records namespace `name`'s labels (`None`: it is gone).
    pub fn set_namespace(&mut self, name: &str, labels: Option<Labels>) {
        let before = match labels {
            Some(l) => self.namespaces.insert(name.to_string(), l),
            None => self.namespaces.remove(name),
        };
        if before.as_ref() == self.namespaces.get(name) {
            return;
        }
        // Only namespace selectors read namespace labels.
        let policies: Vec<Arc<Compiled>> = self
            .policies
            .values()
            .filter(|p| !p.peer_namespaces.is_empty())
            .cloned()
            .collect();
        let names: Vec<String> = self
            .by_namespace
            .get(name)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for pod in names {
            let key = (name.to_string(), pod);
            for p in &policies {
                self.recompute(&key, Some(p));
            }
        }
    }

    /// Records pod `pod` (`None` with its key: it is gone).
    pub fn set_pod(&mut self, key: Key, pod: Option<&Pod>) {
        let info = pod.map(|p| {
            let gated = self
                .gated
                .get(&key)
                .filter(|(uid, _)| Some(uid) == p.metadata.uid.as_ref())
                .map(|(_, ip)| *ip);
            PodInfo::of(p, &self.node.node_name, gated)
        });
        if info.is_none() {
            self.gated.remove(&key);
        }
        if info.as_ref() == self.pods.get(&key) {
            return;
        }
        let Some(info) = info else {
            self.pods.remove(&key);
            if let Some(names) = self.by_namespace.get_mut(&key.0) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.by_namespace.remove(&key.0);
                }
            }
            for elems in self
                .contributions
                .remove(&key)
                .unwrap_or_default()
                .into_values()
            {
                self.release(elems);
            }
            return;
        };
        self.by_namespace
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        self.pods.insert(key.clone(), info);
        self.recompute(&key, None);
        let labels = self.namespaces.get(&key.0).unwrap_or(empty_labels());
        let policies: Vec<Arc<Compiled>> = self
            .policies
            .values()
            .filter(|p| p.concerns(&key.0, labels))
            .cloned()
            .collect();
        for p in &policies {
            self.recompute(&key, Some(p));
        }
    }

    /// The kubelet's report: `pod` has address `ip` (its status may not
    /// say so yet).
    pub fn pod_networked(&mut self, pod: &Pod, ip: Ipv4Addr) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.gated.insert(key.clone(), (uid, ip));
        self.set_pod(key, Some(pod));
    }

    /// Records policy `key` (`None`: it is gone).
    pub fn set_policy(&mut self, key: Key, np: Option<&NetworkPolicy>) {
        let compiled = np.map(|np| Arc::new(compile(np)));
        let old = self.policies.get(&key).cloned();
        if old.as_ref().map(|p| &p.id) == compiled.as_ref().map(|p| &p.id) {
            return;
        }
        if let Some(old) = old {
            self.policies.remove(&key);
            let pods: Vec<Key> = self.contributions.keys().cloned().collect();
            for pod in pods {
                let elems = self
                    .contributions
                    .get_mut(&pod)
                    .and_then(|c| c.remove(&old.id));
                if let Some(elems) = elems {
                    self.release(elems);
                }
            }
            self.removed.push(old);
        }
        let Some(p) = compiled else { return };
        self.ns_number(&p.namespace);
        self.policies.insert(key, Arc::clone(&p));
        self.added.push(Arc::clone(&p));
        let candidates: Vec<Key> = self
            .by_namespace
            .iter()
            .filter(|(ns, _)| {
                let labels = self.namespaces.get(*ns).unwrap_or(empty_labels());
                p.concerns(ns, labels)
            })
            .flat_map(|(ns, names)| names.iter().map(|n| (ns.clone(), n.clone())))
            .collect();
        for pod in candidates {
            self.recompute(&pod, Some(&p));
        }
    }

    /// Recomputes what pod `key` contributes to policy `p` (its own
    /// elements with `None`).
    fn recompute(&mut self, key: &Key, p: Option<&Arc<Compiled>>) {
        let n = self.ns_number(&key.0);
        let Some(pod) = self.pods.get(key) else {
            return;
        };
        let new = match p {
            None => own_elements(pod, n),
            Some(p) => {
                let ns = self
                    .namespaces
                    .get(&pod.namespace)
                    .unwrap_or(empty_labels());
                policy_elements(p, pod, ns)
            }
        };
        let id = p.map_or(String::new(), |p| p.id.clone());
        let entry = self.contributions.entry(key.clone()).or_default();
        let old = if new.is_empty() {
            entry.remove(&id)
        } else {
            entry.insert(id, new.clone())
        };
        if entry.is_empty() {
            self.contributions.remove(key);
        }
        let old = old.unwrap_or_default();
        if old == new {
            return;
        }
        for (set, key, data) in new {
            let slot = (set, key);
            let before = self.effective(&slot);
            let values = self.counts.entry(slot.clone()).or_default();
            match values.iter().position(|(d, _)| *d == data) {
                Some(i) => values[i].1 += 1,
                None => values.push((data, 1)),
            }
            self.note(slot, before);
        }
        self.release(old);
    }

    /// What the element at `slot` should hold: the latest value, or
    /// `None` when nothing contributes it.
    fn effective(&self, slot: &Slot) -> Option<Option<Value>> {
        self.counts
            .get(slot)
            .and_then(|v| v.last())
            .map(|(d, _)| d.clone())
    }

    /// Namespace `ns`'s number, given on first use.
    fn ns_number(&mut self, ns: &str) -> u32 {
        if let Some(n) = self.ns_numbers.get(ns) {
            return *n;
        }
        let n = self.ns_numbers.len() as u32 + 1;
        self.ns_numbers.insert(ns.to_string(), n);
        n
    }

    /// The policies of namespace `ns`, by name.
    fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.policies
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
            .map(|(_, p)| p.as_ref())
    }

    /// Writes namespace `ns`'s chain of direction `d` into `b` (`full`:
    /// none exists yet); returns whether the chain is left in the kernel.
    fn namespace_chain(&self, b: &mut Batch, ns: &str, d: Direction, full: bool) -> bool {
        let n = self.ns_numbers.get(ns).copied().unwrap_or_default();
        let existed = !full && self.ns_chains.contains(&(ns.to_string(), d));
        ruleset::namespace(b, ns, n, d, existed, self.policies_in(ns));
        self.policies_in(ns).any(|p| p.rules(d).is_some())
    }

    /// Drops one count of each of `elems`.
    fn release(&mut self, elems: Vec<ElemKey>) {
        for (set, key, data) in elems {
            let slot = (set, key);
            let before = self.effective(&slot);
            let Some(values) = self.counts.get_mut(&slot) else {
                continue;
            };
            if let Some(i) = values.iter().position(|(d, _)| *d == data) {
                values[i].1 -= 1;
                if values[i].1 == 0 {
                    values.remove(i);
                }
            }
            if values.is_empty() {
                self.counts.remove(&slot);
            }
            self.note(slot, before);
        }
    }

    /// Records that `slot` may have changed; `before` is what it held
    /// before this change (kept from the first change since the last
    /// apply, which is what the kernel holds).
    fn note(&mut self, slot: Slot, before: Option<Option<Value>>) {
        self.pending.entry(slot).or_insert(before);
    }

    /// Makes the next sync rebuild the whole table.
    pub fn force_full(&mut self) {
        self.table.set_need_full();
    }

    /// Whether the next sync rebuilds the table.
    pub fn next_is_full(&self) -> bool {
        self.table.need_full()
    }

    /// Whether there is anything to send.
    pub fn dirty(&self) -> bool {
        self.table.need_full()
            || self
                .pending
                .iter()
                .any(|(slot, before)| *before != self.effective(slot))
            || !self.added.is_empty()
            || !self.removed.is_empty()
    }

    /// Whether the table is the one the last full sync built; if not
    /// (deleted, flushed, recreated) the next sync is full.
    pub fn check_canary(&mut self) -> bool {
        let c = self.table.check(self.nft.as_ref());
        if c == Canary::NewlyLost {
            tracing::warn!("nft table ip knode-policy gone or recreated: next sync is full");
        }
        c == Canary::Intact
    }

    /// Packets dropped so far, by reason (`<direction>-not-allowed`: no
    /// policy allows it; `<direction>-not-programmed`: the guard), read
    /// from the base chains' counters.
    pub fn dropped(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for (d, allowed, programmed) in [
            (
                Direction::Ingress,
                "ingress-not-allowed",
                "ingress-not-programmed",
            ),
            (
                Direction::Egress,
                "egress-not-allowed",
                "egress-not-programmed",
            ),
        ] {
            for c in self.nft.rule_counters(&table(), ruleset::base_chain(d))? {
                let reason = match c.comment.as_deref() {
                    Some(ruleset::NOT_ALLOWED) => allowed,
                    Some(ruleset::NOT_PROGRAMMED) => programmed,
                    _ => continue,
                };
                out.push((reason, c.packets));
            }
        }
        Ok(out)
    }

    /// Sends what changed, as one transaction. On failure the next sync
    /// is full.
    pub fn sync(&mut self) -> Result<SyncOutcome> {
        let start = Instant::now();
        let full = self.table.need_full();
        let (batch, outcome) = if full {
            self.full_batch()
        } else {
            self.partial_batch()
        };
        let (batch, ns_chains) = batch;
        let sent = Instant::now();
        let applied = self.table.apply(self.nft.as_ref(), &batch, full)?;
        let apply = sent.elapsed();
        if full {
            self.ns_chains.clear();
        }
        for (ns, d, kept) in ns_chains {
            if kept {
                self.ns_chains.insert((ns, d));
            } else {
                self.ns_chains.remove(&(ns, d));
            }
        }
        self.pending.clear();
        self.added.clear();
        self.removed.clear();
        Ok(SyncOutcome {
            full,
            applied,
            duration: start.elapsed(),
            apply,
            ..outcome
        })
    }

    fn full_batch(&self) -> ((Batch, NsChanges), SyncOutcome) {
        let mut b = Batch::new();
        ruleset::skeleton(&mut b, &self.node);
        for p in self.policies.values() {
            ruleset::add_policy(&mut b, p);
        }
        let namespaces: BTreeSet<&str> = self.policies.keys().map(|(ns, _)| ns.as_str()).collect();
        let mut ns_chains = Vec::new();
        for ns in namespaces {
            for d in [Direction::Egress, Direction::Ingress] {
                if self.namespace_chain(&mut b, ns, d, true) {
                    ns_chains.push((ns.to_string(), d, true));
                }
            }
        }
        let mut by_set: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        for ((set, key), values) in &self.counts {
            if let Some((data, _)) = values.last() {
                by_set
                    .entry(set.as_str())
                    .or_default()
                    .push(elem(key, data.as_ref()));
            }
        }
        let t = table();
        for (set, elems) in by_set {
            b.add_elements(&t, &set_named(set), elems);
        }
        let outcome = SyncOutcome {
            full: true,
            elements: self.counts.len(),
            policies_added: self.policies.len(),
            ..SyncOutcome::default()
        };
        ((b, ns_chains), outcome)
    }

    fn partial_batch(&self) -> ((Batch, NsChanges), SyncOutcome) {
        let mut b = Batch::new();
        let t = table();
        let added_ids: HashSet<&str> = self.added.iter().map(|p| p.id.as_str()).collect();
        let removed_ids: HashSet<&str> = self.removed.iter().map(|p| p.id.as_str()).collect();
        // A policy removed and added back with the same spec between two
        // syncs is still in the kernel as it was.
        let added: Vec<&Compiled> = self
            .added
            .iter()
            .filter(|p| !removed_ids.contains(p.id.as_str()))
            .map(|p| p.as_ref())
            .collect();
        let removed: Vec<&Compiled> = self
            .removed
            .iter()
            .filter(|p| !added_ids.contains(p.id.as_str()))
            .map(|p| p.as_ref())
            .collect();
        for p in &added {
            ruleset::add_policy(&mut b, p);
        }
        // The namespace chains of the directions whose policies came or went.
        let touched: BTreeSet<(&str, Direction)> = added
            .iter()
            .chain(removed.iter())
            .flat_map(|p| {
                [Direction::Egress, Direction::Ingress]
                    .into_iter()
                    .filter(|d| p.rules(*d).is_some())
                    .map(|d| (p.namespace.as_str(), d))
            })
            .collect();
        let mut ns_chains = Vec::new();
        for (ns, d) in touched {
            let kept = self.namespace_chain(&mut b, ns, d, false);
            ns_chains.push((ns.to_string(), d, kept));
        }
        let gone: HashSet<String> = removed
            .iter()
            .flat_map(|p| ruleset::policy_sets(p))
            .collect();
        let mut deletes: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        let mut adds: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        for (slot, before) in &self.pending {
            let (set, key) = slot;
            let after = self.effective(slot);
            if gone.contains(set) || *before == after {
                continue;
            }
            // A changed value is deleted and added again (deletes go first).
            if before.is_some() {
                deletes
                    .entry(set.as_str())
                    .or_default()
                    .push(Elem::key(key.clone()));
            }
            if let Some(data) = after {
                adds.entry(set.as_str())
                    .or_default()
                    .push(elem(key, data.as_ref()));
            }
        }
        let mut elements = 0;
        for (set, elems) in deletes {
            elements += elems.len();
            b.delete_elements(&t, &set_named(set), elems);
        }
        for (set, elems) in adds {
            elements += elems.len();
            b.add_elements(&t, &set_named(set), elems);
        }
        for p in &removed {
            ruleset::delete_policy(&mut b, p);
        }
        let outcome = SyncOutcome {
            elements,
            policies_added: added.len(),
            policies_removed: removed.len(),
            ..SyncOutcome::default()
        };
        ((b, ns_chains), outcome)
    }
}

/// An element's place: set name and key.
type Slot = (String, Value);

/// Namespace chains a batch leaves (true) or removes (false).
type NsChanges = Vec<(String, Direction, bool)>;

/// A set element, or a map element with its value.
fn elem(key: &Value, data: Option<&Value>) -> Elem {
    match data {
        Some(d) => Elem::map(key.clone(), d.clone()),
        None => Elem::key(key.clone()),
    }
}

/// Deletes table `ip knode-policy` (`--disable network-policy`, or
/// `knode agent --cleanup`). Returns whether it was there.
pub fn cleanup(nft: &dyn NfTables) -> Result<bool> {
    Ok(hostnet::nftables::delete_table_if_present(nft, &table())?)
}
