//! The engine: the pods, namespaces and policies it was told of, which
//! set elements each (pod, policy) pair contributes (counted, since
//! several pairs can add one element), the numbers it gave peer
//! selectors, address-range sets, named-port rules and groups of pods,
//! and the changes not yet applied. A sync sends one transaction: the
//! whole table when it must (first sync, after a failure, or when the
//! table was replaced), else element changes, plus the chains of the
//! policies and groups that came or went. A pod's change costs one pass
//! over the policies that can concern it; a policy's change one pass over
//! the pods that can concern it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostnet::nftables::{Batch, Canary, Elem, NfTables, OwnedTable, Value};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::compile::{compile, Compiled, Direction, Namespaces, PodPeer};
use crate::pods::{own_elements, policy_elements, selects, ElemKey, Labels, PodInfo};
use crate::ruleset::{self, set_named, table, GroupForm, IpFamily, NodeConfig, Policy, RuleRefs};
use crate::Result;

/// (namespace, name).
pub type Key = (String, String);

/// A policy's id.
type Id = Arc<str>;

/// The contributions of one pod: by policy id (`None` for its own).
type Contributions = Vec<(Option<Id>, Vec<ElemKey>)>;

/// A pod the engine holds, with what it contributes.
struct PodEntry {
    info: PodInfo,
    contributions: Contributions,
    /// The ids of the policies that select it (a local pod).
    selected_by: BTreeSet<Id>,
    /// Its group's number (0: no policy selects it).
    group: u32,
}

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
    /// Groups of pods whose map elements (and chains) were created or
    /// deleted.
    pub groups_added: usize,
    pub groups_removed: usize,
    /// Whether anything was sent.
    pub applied: bool,
    pub duration: Duration,
    /// Of which sending the transaction (encoding and the kernel).
    pub apply: Duration,
}

/// Numbers given by content and counted: a number stays while something
/// uses it and until the next sync (so a policy removed and added back
/// before it gets the numbers its chains in the kernel already hold).
struct Numbered<K> {
    by_key: HashMap<K, (u32, usize)>,
}

impl<K: Hash + Eq + Clone> Numbered<K> {
    fn new() -> Self {
        Numbered {
            by_key: HashMap::new(),
        }
    }

    fn acquire(&mut self, key: &K, next: &mut u32) -> u32 {
        let e = self.by_key.entry(key.clone()).or_insert_with(|| {
            *next += 1;
            (*next, 0)
        });
        e.1 += 1;
        e.0
    }

    fn release(&mut self, key: &K) {
        if let Some(e) = self.by_key.get_mut(key) {
            e.1 = e.1.saturating_sub(1);
        }
    }

    /// Forgets the unused numbers; returns them.
    fn purge(&mut self) -> Vec<(K, u32)> {
        let gone: Vec<(K, u32)> = self
            .by_key
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(k, (n, _))| (k.clone(), *n))
            .collect();
        for (k, _) in &gone {
            self.by_key.remove(k);
        }
        gone
    }
}

/// The address ranges of a rule, of the engine's family.
type Ranges = Vec<(IpAddr, IpAddr)>;

/// The ranges of `peers` of family `f`.
fn ranges_of(peers: &crate::compile::Peers, f: IpFamily) -> Ranges {
    peers
        .cidrs
        .iter()
        .filter(|(a, _)| f.holds(*a))
        .copied()
        .collect()
}

/// A group: the local pods selected by the same policies.
struct Group {
    members: Vec<Id>,
    pods: usize,
}

/// The policy engine of one node.
pub struct Engine {
    nft: Arc<dyn NfTables>,
    node: NodeConfig,
    /// The pods, by slot (a pod keeps its slot while it exists, so a
    /// pass over pods and policies looks nothing up by name).
    pods: Vec<Option<PodEntry>>,
    free: Vec<usize>,
    slots: HashMap<Key, usize>,
    /// namespace -> slots of its pods.
    by_namespace: HashMap<String, BTreeSet<usize>>,
    namespaces: HashMap<String, Labels>,
    policies: BTreeMap<Key, Arc<Policy>>,
    by_id: HashMap<Id, Arc<Policy>>,
    /// Per element (set, key): each value contributed, with its count,
    /// the latest last (sets have one, `None`). The kernel holds the
    /// latest: two pods sharing an address for a moment (one deleted, its
    /// address already reused) never make a map key ambiguous.
    counts: HashMap<Slot, Vec<(Option<Value>, u32)>>,
    /// Elements changed since the last apply, with what the kernel held
    /// then (`None`: nothing).
    pending: HashMap<Slot, Option<Option<Value>>>,
    added: Vec<Arc<Policy>>,
    removed: Vec<Arc<Policy>>,
    /// Addresses the kubelet reported before the pod's status had them:
    /// key -> (uid, address).
    gated: HashMap<Key, (String, IpAddr)>,
    /// The last number given (selectors, address ranges, named-port
    /// rules and groups share it; none is reused).
    last_number: u32,
    selectors: Numbered<String>,
    named: Numbered<String>,
    cidrs: Numbered<Ranges>,
    /// The numbers of the address-range sets the kernel holds.
    kernel_cidrs: HashSet<u32>,
    groups: HashMap<u32, Group>,
    group_numbers: HashMap<Vec<Id>, u32>,
    /// The groups the kernel holds: (egress, ingress) forms.
    kernel_groups: HashMap<u32, [GroupForm; 2]>,
    table: OwnedTable,
}

fn empty_labels() -> &'static Labels {
    static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Labels::new)
}

/// What makes two pod peers the same selector: where, and which pods.
fn selector_key(peer: &PodPeer, policy_ns: &str) -> String {
    let json = |s| serde_json::to_string(s).unwrap_or_default();
    let pods = peer.pods.as_ref().map_or("*".to_string(), json);
    match &peer.namespaces {
        Namespaces::Own => format!("own {policy_ns} {pods}"),
        Namespaces::Matching(sel) => format!("ns {} {pods}", json(sel)),
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

impl Engine {
    /// An engine writing through `nft` for `node`; the first sync is full.
    pub fn new(nft: Arc<dyn NfTables>, node: NodeConfig) -> Engine {
        let t = table(node.family);
        Engine {
            nft,
            node,
            pods: Vec::new(),
            free: Vec::new(),
            slots: HashMap::new(),
            by_namespace: HashMap::new(),
            namespaces: HashMap::new(),
            policies: BTreeMap::new(),
            by_id: HashMap::new(),
            counts: HashMap::new(),
            pending: HashMap::new(),
            added: Vec::new(),
            removed: Vec::new(),
            gated: HashMap::new(),
            last_number: 0,
            selectors: Numbered::new(),
            named: Numbered::new(),
            cidrs: Numbered::new(),
            kernel_cidrs: HashSet::new(),
            groups: HashMap::new(),
            group_numbers: HashMap::new(),
            kernel_groups: HashMap::new(),
            table: OwnedTable::new(t),
        }
    }

    /// The family this engine enforces.
    pub fn family(&self) -> IpFamily {
        self.node.family
    }

    /// How many policies, pods and elements the engine holds.
    pub fn size(&self) -> (usize, usize, usize) {
        (self.policies.len(), self.slots.len(), self.counts.len())
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
        // Only namespace selectors read namespace labels; they decide
        // peers, never which pods a policy selects.
        let policies: Vec<Arc<Policy>> = self
            .policies
            .values()
            .filter(|p| !p.compiled.peer_namespaces.is_empty())
            .cloned()
            .collect();
        let slots: Vec<usize> = self
            .by_namespace
            .get(name)
            .map(|n| n.iter().copied().collect())
            .unwrap_or_default();
        for slot in slots {
            for p in &policies {
                self.recompute(slot, p);
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
            PodInfo::of(p, &self.node.node_name, gated, self.node.family)
        });
        if info.is_none() {
            self.gated.remove(&key);
        }
        let slot = self.slots.get(&key).copied();
        let held = slot.and_then(|i| self.pods[i].as_ref()).map(|e| &e.info);
        if info.as_ref() == held {
            return;
        }
        let Some(info) = info else {
            let Some(slot) = slot else { return };
            self.slots.remove(&key);
            if let Some(slots) = self.by_namespace.get_mut(&key.0) {
                slots.remove(&slot);
                if slots.is_empty() {
                    self.by_namespace.remove(&key.0);
                }
            }
            if let Some(entry) = self.pods[slot].take() {
                for (_, elems) in entry.contributions {
                    self.release(elems);
                }
                if entry.group != 0 {
                    self.leave_group(entry.group);
                }
            }
            self.free.push(slot);
            return;
        };
        let slot = match slot {
            Some(slot) => {
                if let Some(e) = self.pods[slot].as_mut() {
                    e.info = info;
                }
                slot
            }
            None => {
                let entry = PodEntry {
                    info,
                    contributions: Vec::new(),
                    selected_by: BTreeSet::new(),
                    group: 0,
                };
                let slot = match self.free.pop() {
                    Some(i) => {
                        self.pods[i] = Some(entry);
                        i
                    }
                    None => {
                        self.pods.push(Some(entry));
                        self.pods.len() - 1
                    }
                };
                self.slots.insert(key.clone(), slot);
                self.by_namespace
                    .entry(key.0.clone())
                    .or_default()
                    .insert(slot);
                slot
            }
        };
        let labels = self.namespaces.get(&key.0).unwrap_or(empty_labels());
        let policies: Vec<Arc<Policy>> = self
            .policies
            .values()
            .filter(|p| p.compiled.concerns(&key.0, labels))
            .cloned()
            .collect();
        for p in &policies {
            self.recompute(slot, p);
        }
        self.regroup(slot, true);
    }

    /// The kubelet's report: `pod` has address `ip` (its status may not
    /// say so yet).
    pub fn pod_networked(&mut self, pod: &Pod, ip: IpAddr) {
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
        let compiled = np.map(compile);
        let old = self.policies.get(&key).cloned();
        if old.as_ref().map(|p| p.id()) == compiled.as_ref().map(|p| p.id.as_str()) {
            return;
        }
        if let Some(old) = old {
            self.policies.remove(&key);
            let id: Id = Arc::from(old.id());
            self.by_id.remove(&id);
            let key = Some(Arc::clone(&id));
            for slot in 0..self.pods.len() {
                let Some(e) = self.pods[slot].as_mut() else {
                    continue;
                };
                let elems = e
                    .contributions
                    .iter()
                    .position(|(i, _)| *i == key)
                    .map(|i| e.contributions.swap_remove(i).1);
                let selected = e.selected_by.remove(&id);
                if let Some(elems) = elems {
                    self.release(elems);
                }
                if selected {
                    self.regroup(slot, false);
                }
            }
            self.release_numbers(&old);
            self.removed.push(old);
        }
        let Some(c) = compiled else { return };
        let p = Arc::new(self.number_policy(c));
        self.policies.insert(key, Arc::clone(&p));
        self.by_id.insert(Arc::from(p.id()), Arc::clone(&p));
        self.added.push(Arc::clone(&p));
        let candidates: Vec<usize> = self
            .by_namespace
            .iter()
            .filter(|(ns, _)| {
                let labels = self.namespaces.get(*ns).unwrap_or(empty_labels());
                p.compiled.concerns(ns, labels)
            })
            .flat_map(|(_, slots)| slots.iter().copied())
            .collect();
        for slot in candidates {
            if self.recompute(slot, &p) {
                self.regroup(slot, false);
            }
        }
    }

    /// Gives compiled policy `c`'s rules their numbers.
    fn number_policy(&mut self, c: Compiled) -> Policy {
        let refs = |d: Direction, this: &mut Engine| -> Vec<RuleRefs> {
            let Some(rules) = c.rules(d) else {
                return Vec::new();
            };
            rules
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    let mut r = RuleRefs::default();
                    if let Some(peers) = &rule.peers {
                        for pp in &peers.pods {
                            let k = selector_key(pp, &c.namespace);
                            r.selectors
                                .push(this.selectors.acquire(&k, &mut this.last_number));
                        }
                        let ranges = ranges_of(peers, this.node.family);
                        if !ranges.is_empty() {
                            r.cidrs = Some(this.cidrs.acquire(&ranges, &mut this.last_number));
                        }
                    }
                    if rule.ports.as_ref().is_some_and(|p| !p.named.is_empty()) {
                        let k = format!("{}/{}{i}", c.id, d.short());
                        r.named = Some(this.named.acquire(&k, &mut this.last_number));
                    }
                    r
                })
                .collect()
        };
        let ingress = refs(Direction::Ingress, self);
        let egress = refs(Direction::Egress, self);
        Policy {
            id: Arc::from(c.id.as_str()),
            compiled: c,
            ingress,
            egress,
        }
    }

    /// Drops policy `p`'s hold on its numbers.
    fn release_numbers(&mut self, p: &Policy) {
        let c = &p.compiled;
        for d in DIRECTIONS {
            let Some(rules) = c.rules(d) else { continue };
            for (i, rule) in rules.iter().enumerate() {
                if let Some(peers) = &rule.peers {
                    for pp in &peers.pods {
                        self.selectors.release(&selector_key(pp, &c.namespace));
                    }
                    let ranges = ranges_of(peers, self.node.family);
                    if !ranges.is_empty() {
                        self.cidrs.release(&ranges);
                    }
                }
                if rule.ports.as_ref().is_some_and(|p| !p.named.is_empty()) {
                    self.named.release(&format!("{}/{}{i}", c.id, d.short()));
                }
            }
        }
    }

    /// Recomputes what the pod in `slot` contributes to policy `p`;
    /// returns whether `p` started or stopped selecting it.
    fn recompute(&mut self, slot: usize, p: &Arc<Policy>) -> bool {
        let Some(e) = self.pods[slot].as_ref() else {
            return false;
        };
        let selected = selects(&p.compiled, &e.info);
        let ns = self
            .namespaces
            .get(&e.info.namespace)
            .unwrap_or(empty_labels());
        let new = policy_elements(p, &e.info, ns, selected);
        let was = e.selected_by.contains(&p.id);
        if selected != was {
            if let Some(e) = self.pods[slot].as_mut() {
                if selected {
                    e.selected_by.insert(Arc::clone(&p.id));
                } else {
                    e.selected_by.remove(&p.id);
                }
            }
        }
        self.contribute(slot, Some(Arc::clone(&p.id)), new);
        selected != was
    }

    /// Puts the pod in `slot` in the group of the policies that select it
    /// (after they changed, or `always` when the pod did) and rewrites its
    /// own elements.
    fn regroup(&mut self, slot: usize, always: bool) {
        let Some(e) = self.pods[slot].as_ref() else {
            return;
        };
        let members: Vec<Id> = e.selected_by.iter().cloned().collect();
        let old = e.group;
        let new = if members.is_empty() {
            0
        } else {
            self.join_group(members)
        };
        if old != 0 {
            self.leave_group(old);
        }
        let Some(e) = self.pods[slot].as_mut() else {
            return;
        };
        e.group = new;
        if old == new && !always {
            return;
        }
        let own = own_elements(&e.info, new);
        self.contribute(slot, None, own);
    }

    /// The number of the group of `members` (sorted), counting one more
    /// pod in it.
    fn join_group(&mut self, members: Vec<Id>) -> u32 {
        let n = match self.group_numbers.get(&members) {
            Some(n) => *n,
            None => {
                self.last_number += 1;
                let n = self.last_number;
                self.group_numbers.insert(members.clone(), n);
                self.groups.insert(n, Group { members, pods: 0 });
                n
            }
        };
        if let Some(g) = self.groups.get_mut(&n) {
            g.pods += 1;
        }
        n
    }

    /// One pod fewer in group `n` (forgotten at the next sync when empty).
    fn leave_group(&mut self, n: u32) {
        if let Some(g) = self.groups.get_mut(&n) {
            g.pods = g.pods.saturating_sub(1);
        }
    }

    /// Replaces what the pod in `slot` contributes for `id` with `new`.
    fn contribute(&mut self, slot: usize, id: Option<Id>, new: Vec<ElemKey>) {
        let Some(e) = self.pods[slot].as_mut() else {
            return;
        };
        // Most (pod, policy) pairs contribute nothing, before and after.
        let pos = e.contributions.iter().position(|(i, _)| *i == id);
        let old = match pos {
            None if new.is_empty() => return,
            Some(i) if e.contributions[i].1 == new => return,
            Some(i) => Some(e.contributions.swap_remove(i).1),
            None => None,
        };
        for (set, key, data) in &new {
            let slot = (*set, key.clone());
            let before = self.effective(&slot);
            let values = self.counts.entry(slot.clone()).or_default();
            match values.iter().position(|(d, _)| d == data) {
                Some(i) => values[i].1 += 1,
                None => values.push((data.clone(), 1)),
            }
            self.note(slot, before);
        }
        if !new.is_empty() {
            if let Some(e) = self.pods[slot].as_mut() {
                e.contributions.push((id, new));
            }
        }
        self.release(old.unwrap_or_default());
    }

    /// What the element at `slot` should hold: the latest value, or
    /// `None` when nothing contributes it.
    fn effective(&self, slot: &Slot) -> Option<Option<Value>> {
        self.counts
            .get(slot)
            .and_then(|v| v.last())
            .map(|(d, _)| d.clone())
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
            || {
                let (added, removed) = self.changed_policies();
                !added.is_empty() || !removed.is_empty()
            }
            || self
                .groups
                .iter()
                .any(|(n, g)| (g.pods > 0) != self.kernel_groups.contains_key(n))
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
            let t = table(self.node.family);
            for c in self.nft.rule_counters(&t, ruleset::base_chain(d))? {
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
        let (batch, outcome, kernel) = if full {
            self.full_batch()
        } else {
            self.partial_batch()
        };
        let sent = Instant::now();
        let applied = self.table.apply(self.nft.as_ref(), &batch, full)?;
        let apply = sent.elapsed();
        self.kernel_groups = kernel.groups;
        self.kernel_cidrs = kernel.cidrs;
        self.groups.retain(|_, g| g.pods > 0);
        let groups = &self.groups;
        self.group_numbers.retain(|_, n| groups.contains_key(n));
        self.selectors.purge();
        self.named.purge();
        self.cidrs.purge();
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

    /// The policies added and removed since the last sync. A policy
    /// removed and added back with the same spec is still in the kernel
    /// as it was (it got the same numbers): neither.
    fn changed_policies(&self) -> (Vec<&Policy>, Vec<&Policy>) {
        let added = self
            .added
            .iter()
            .filter(|p| !self.removed.iter().any(|r| r == *p))
            .map(|p| p.as_ref())
            .collect();
        let removed = self
            .removed
            .iter()
            .filter(|p| !self.added.iter().any(|a| a == *p))
            .map(|p| p.as_ref())
            .collect();
        (added, removed)
    }

    /// The address-range sets in use, by number.
    fn live_cidrs(&self) -> HashMap<u32, Ranges> {
        self.cidrs
            .by_key
            .iter()
            .filter(|(_, (_, refs))| *refs > 0)
            .map(|(r, (n, _))| (*n, r.clone()))
            .collect()
    }

    /// Writes group `n` (both directions) into `b`.
    fn add_group(&self, b: &mut Batch, n: u32, g: &Group) -> [GroupForm; 2] {
        DIRECTIONS.map(|d| {
            let ids: Vec<&str> = g
                .members
                .iter()
                .filter(|id| {
                    self.by_id
                        .get(*id)
                        .is_some_and(|p| p.compiled.rules(d).is_some())
                })
                .map(|id| id.as_ref())
                .collect();
            ruleset::add_group(b, self.node.family, n, d, &ids)
        })
    }

    fn full_batch(&self) -> (Batch, SyncOutcome, Kernel) {
        let f = self.node.family;
        let mut b = Batch::new();
        ruleset::skeleton(&mut b, &self.node);
        let cidrs = self.live_cidrs();
        for (n, ranges) in &cidrs {
            ruleset::add_cidr_set(&mut b, f, *n, ranges);
        }
        for p in self.policies.values() {
            ruleset::add_policy(&mut b, f, p);
        }
        let mut groups = HashMap::new();
        for (n, g) in self.groups.iter().filter(|(_, g)| g.pods > 0) {
            groups.insert(*n, self.add_group(&mut b, *n, g));
        }
        let mut by_set: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        for ((set, key), values) in &self.counts {
            if let Some((data, _)) = values.last() {
                by_set
                    .entry(set)
                    .or_default()
                    .push(elem(key, data.as_ref()));
            }
        }
        let t = table(f);
        for (set, elems) in by_set {
            b.add_elements(&t, &set_named(f, set), elems);
        }
        let outcome = SyncOutcome {
            full: true,
            elements: self.counts.len(),
            policies_added: self.policies.len(),
            groups_added: groups.len(),
            ..SyncOutcome::default()
        };
        (
            b,
            outcome,
            Kernel {
                groups,
                cidrs: cidrs.into_keys().collect(),
            },
        )
    }

    fn partial_batch(&self) -> (Batch, SyncOutcome, Kernel) {
        let f = self.node.family;
        let mut b = Batch::new();
        let t = table(f);
        let (added, removed) = self.changed_policies();
        // New address-range sets, then new policy chains, then new groups
        // (their map elements jump to the chains).
        let live = self.live_cidrs();
        for (n, ranges) in &live {
            if !self.kernel_cidrs.contains(n) {
                ruleset::add_cidr_set(&mut b, f, *n, ranges);
            }
        }
        for p in &added {
            ruleset::add_policy(&mut b, f, p);
        }
        let mut groups = self.kernel_groups.clone();
        let mut groups_added = 0;
        for (n, g) in &self.groups {
            if g.pods > 0 && !groups.contains_key(n) {
                groups.insert(*n, self.add_group(&mut b, *n, g));
                groups_added += 1;
            }
        }
        let mut deletes: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        let mut adds: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
        for (slot, before) in &self.pending {
            let (set, key) = slot;
            let after = self.effective(slot);
            if *before == after {
                continue;
            }
            // A changed value is deleted and added again (deletes go first).
            if before.is_some() {
                deletes.entry(set).or_default().push(Elem::key(key.clone()));
            }
            if let Some(data) = after {
                adds.entry(set).or_default().push(elem(key, data.as_ref()));
            }
        }
        let mut elements = 0;
        for (set, elems) in deletes {
            elements += elems.len();
            b.delete_elements(&t, &set_named(f, set), elems);
        }
        for (set, elems) in adds {
            elements += elems.len();
            b.add_elements(&t, &set_named(f, set), elems);
        }
        // Groups no pod is in any more, then the chains they jumped to,
        // then the sets those used.
        let gone: Vec<u32> = groups
            .keys()
            .filter(|n| self.groups.get(n).is_none_or(|g| g.pods == 0))
            .copied()
            .collect();
        for n in &gone {
            if let Some(forms) = groups.remove(n) {
                for (d, form) in DIRECTIONS.into_iter().zip(forms) {
                    ruleset::delete_group(&mut b, f, *n, d, form);
                }
            }
        }
        for p in &removed {
            ruleset::delete_policy(&mut b, f, &p.compiled);
        }
        for n in &self.kernel_cidrs {
            if !live.contains_key(n) {
                ruleset::delete_cidr_set(&mut b, f, *n);
            }
        }
        let outcome = SyncOutcome {
            elements,
            policies_added: added.len(),
            policies_removed: removed.len(),
            groups_added,
            groups_removed: gone.len(),
            ..SyncOutcome::default()
        };
        (
            b,
            outcome,
            Kernel {
                groups,
                cidrs: live.into_keys().collect(),
            },
        )
    }
}

/// What a batch leaves in the kernel besides elements and policies.
struct Kernel {
    groups: HashMap<u32, [GroupForm; 2]>,
    cidrs: HashSet<u32>,
}

/// An element's place: set name and key.
type Slot = (&'static str, Value);

/// A set element, or a map element with its value.
fn elem(key: &Value, data: Option<&Value>) -> Elem {
    match data {
        Some(d) => Elem::map(key.clone(), d.clone()),
        None => Elem::key(key.clone()),
    }
}

/// Deletes tables `ip knode-policy` and `ip6 knode-policy`
/// (`--disable network-policy`, or `knode agent --cleanup`). Returns
/// whether one was there.
pub fn cleanup(nft: &dyn NfTables) -> Result<bool> {
    let mut found = false;
    for f in [IpFamily::V4, IpFamily::V6] {
        found |= hostnet::nftables::delete_table_if_present(nft, &table(f))?;
    }
    Ok(found)
}
