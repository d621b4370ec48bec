//! The nftables mode's sync engine (one per address family): table `ip
//! kube-proxy` (or `ip6 kube-proxy`) built once per
//! full sync (delete + recreate in one transaction) from the static
//! skeleton of [`ruleset`], then kept current by partial syncs that send
//! only set/map element changes, one transaction each. A deleted or
//! recreated table (someone's `nft flush ruleset`) is noticed by its handle.

mod affinity;
pub mod ruleset;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use affinity::Targets;
use hostnet::nftables::{Batch, Canary, Elem, NfTables, OwnedTable, Value};
use ruleset::{
    affinity_rules_for, hairpin_elem, names, service_elements, set_named_for, skeleton_for, table,
    table_for, Element,
};

use crate::conntrack::{self, Conntrack, UdpTarget};
use crate::family::Addr;
use crate::rules::names::Protocol;
use crate::rules::NodeConfig;
use crate::sync::{udp_targets, Proxier, SyncOutcome, DEFAULT_FULL_SYNC_PERIOD};
use crate::view::{group, ServiceKey, ServiceMap, ServicePort};
use crate::Result;

/// Whether two ports of one Service are the same port.
fn same_port<F: Addr>(a: &ServicePort<F>, b: &ServicePort<F>) -> bool {
    (&a.name.port, a.protocol) == (&b.name.port, b.protocol)
}

/// What one sync's walk over the view collects.
#[derive(Default)]
struct Walk {
    diff: Diff,
    udp: Vec<UdpTarget>,
    /// Full: the ports whose client entries carry over; partial: the
    /// ports whose entries may now be stale.
    affinity: Targets,
    /// The affinity timeouts of the ports written.
    timeouts: BTreeSet<u32>,
}

/// `view` as if it had no affinity: all its client entries are stale.
fn without_affinity<F: Addr>(view: &ServicePort<F>) -> ServicePort<F> {
    ServicePort {
        affinity_seconds: None,
        ..view.clone()
    }
}

/// The nftables engine. Keeps what the last successful sync wrote, per
/// Service port, so a partial sync diffs only the ports that changed.
pub struct NftSyncer<F: Addr = Ipv4Addr> {
    nft: Arc<dyn NfTables>,
    conntrack: Option<Arc<dyn Conntrack>>,
    node: NodeConfig,
    full_period: Duration,
    /// Per Service, the ports the last sync wrote (shared with the view
    /// they came from). Their elements are not kept: a port's elements are
    /// a function of the port ([`service_elements`]), so a partial sync
    /// recomputes the old ones of the few ports it changes.
    services: BTreeMap<ServiceKey, Arc<[ServicePort<F>]>>,
    /// Endpoint IP → how many Service ports use it (its hairpin element).
    hairpin: HashMap<F, usize>,
    /// Whether the table is the one the last full sync built.
    table: OwnedTable,
    /// The affinity timeouts whose sets and rules the table holds.
    timeouts: BTreeSet<u32>,
    last_full: Option<Instant>,
}

impl<F: Addr> NftSyncer<F> {
    /// An engine writing through `nft` for `node`; the first sync is full.
    pub fn new(nft: Arc<dyn NfTables>, node: NodeConfig) -> NftSyncer<F> {
        NftSyncer {
            nft,
            conntrack: None,
            node,
            full_period: DEFAULT_FULL_SYNC_PERIOD,
            services: BTreeMap::new(),
            hairpin: HashMap::new(),
            table: OwnedTable::new(table_for::<F>()),
            timeouts: BTreeSet::new(),
            last_full: None,
        }
    }

    /// Cleans stale UDP flows through `ct` after each sync.
    pub fn with_conntrack(mut self, ct: Arc<dyn Conntrack>) -> NftSyncer<F> {
        self.conntrack = Some(ct);
        self
    }

    /// A full sync at least every `period`.
    pub fn with_full_sync_period(mut self, period: Duration) -> NftSyncer<F> {
        self.full_period = period;
        self
    }

    /// Moves one Service port's endpoint IPs from `old` to `new` in the
    /// hairpin counts, noting elements that appear or disappear.
    fn count_hairpin(
        &mut self,
        old: Option<&ServicePort<F>>,
        new: Option<&ServicePort<F>>,
        diff: &mut Diff,
    ) {
        let ips = |v: Option<&ServicePort<F>>| -> BTreeSet<F> {
            v.iter()
                .flat_map(|v| v.all_endpoints().map(|e| e.ip))
                .collect()
        };
        let (before, after) = (ips(old), ips(new));
        let changes = before
            .difference(&after)
            .map(|ip| (*ip, false))
            .chain(after.difference(&before).map(|ip| (*ip, true)));
        for (ip, add) in changes.collect::<Vec<_>>() {
            let n = self.hairpin.entry(ip).or_default();
            if add {
                *n += 1;
                if *n == 1 {
                    diff.add((names::HAIRPIN.into(), hairpin_elem(ip), None));
                }
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.hairpin.remove(&ip);
                    diff.delete((names::HAIRPIN.into(), hairpin_elem(ip), None));
                }
            }
        }
    }

    /// Brings the table to `view`. A full sync writes every Service; a
    /// partial one looks at the Services in `changed` only, or, without
    /// it, compares every Service with what the last sync wrote.
    fn sync_inner(
        &mut self,
        view: &ServiceMap<F>,
        changed: Option<&BTreeSet<ServiceKey>>,
    ) -> Result<SyncOutcome> {
        let start = Instant::now();
        let full = self.next_is_full();
        let mut w = Walk::default();
        if full {
            self.hairpin.clear();
            let mut previous = std::mem::take(&mut self.services);
            for (key, ports) in view {
                let applied = self.service(previous.remove(key), ports, true, &mut w);
                self.services.insert(key.clone(), applied);
            }
            for old in previous.into_values() {
                self.service_gone(old, true, &mut w);
            }
        } else if let Some(keys) = changed {
            for key in keys {
                self.update(key, view.get(key), &mut w);
            }
        } else {
            let gone: Vec<ServiceKey> = self
                .services
                .keys()
                .filter(|k| !view.contains_key(*k))
                .cloned()
                .collect();
            for key in &gone {
                self.update(key, None, &mut w);
            }
            for (key, ports) in view {
                self.update(key, Some(ports), &mut w);
            }
        }

        let Walk {
            diff,
            udp,
            affinity,
            timeouts,
        } = w;

        // Client entries from before a full sync, read while the old table
        // is still there.
        let carried = if full {
            self.carried_clients(&affinity)
        } else {
            Vec::new()
        };
        let mut batch = if full {
            skeleton_for::<F>(&self.node)
        } else {
            Batch::new()
        };
        let new_timeouts: Vec<u32> = if full {
            timeouts.iter().copied().collect()
        } else {
            timeouts.difference(&self.timeouts).copied().collect()
        };
        for t in &new_timeouts {
            affinity_rules_for::<F>(&mut batch, *t);
        }
        let changed = diff.render::<F>(&mut batch);
        if !carried.is_empty() {
            let map = set_named_for::<F>(names::AFFINITY_CLIENTS);
            batch.add_elements(&table_for::<F>(), &map, carried);
        }
        let applying = Instant::now();
        let applied = self.table.apply(self.nft.as_ref(), &batch, full)?;
        let apply = applying.elapsed();
        if full {
            self.last_full = Some(Instant::now());
            self.timeouts.clear();
        } else if !affinity.is_empty() {
            self.drop_stale_clients(&affinity);
        }
        self.timeouts.extend(new_timeouts);
        let conntrack_deleted = self.clean_conntrack(&udp);
        Ok(SyncOutcome {
            full,
            chains_written: 0,
            chains_deleted: 0,
            filter_rules: 0,
            nat_rules: 0,
            elements_changed: changed,
            conntrack_deleted,
            restored: applied,
            duration: start.elapsed(),
            apply,
        })
    }

    /// Service `key` in a partial sync: now `ports`, or gone.
    fn update(&mut self, key: &ServiceKey, ports: Option<&Arc<[ServicePort<F>]>>, w: &mut Walk) {
        let old = self.services.remove(key);
        match (old, ports) {
            (None, None) => {}
            (Some(old), None) => self.service_gone(old, false, w),
            (Some(old), Some(ports)) if Arc::ptr_eq(&old, ports) || old == *ports => {
                self.services.insert(key.clone(), Arc::clone(ports));
            }
            (old, Some(ports)) => {
                let applied = self.service(old, ports, false, w);
                self.services.insert(key.clone(), applied);
            }
        }
    }

    /// One Service of the view that is new (`old` is `None`), changed, or
    /// rewritten by a full sync: each of its ports is paired with the same
    /// port as last applied; unchanged ports are skipped (a partial sync),
    /// the others are written, and ports it no longer has go.
    fn service(
        &mut self,
        old: Option<Arc<[ServicePort<F>]>>,
        ports: &Arc<[ServicePort<F>]>,
        full: bool,
        w: &mut Walk,
    ) -> Arc<[ServicePort<F>]> {
        let old_ports: &[ServicePort<F>] = old.as_deref().unwrap_or_default();
        let mut paired = vec![false; old_ports.len()];
        for sp in ports.iter() {
            let prev = old_ports
                .iter()
                .enumerate()
                .find(|(j, p)| !paired[*j] && same_port(p, sp));
            if let Some((j, _)) = prev {
                paired[j] = true;
            }
            match prev {
                Some((_, p)) if !full && p == sp => {}
                prev => self.port(prev.map(|(_, p)| p), sp, full, w),
            }
        }
        for (p, paired) in old_ports.iter().zip(paired) {
            if !paired {
                self.port_gone(p, full, w);
            }
        }
        Arc::clone(ports)
    }

    /// A Service no longer in the view: each of its ports goes.
    fn service_gone(&mut self, old: Arc<[ServicePort<F>]>, full: bool, w: &mut Walk) {
        for p in old.iter() {
            self.port_gone(p, full, w);
        }
    }

    /// One Service port that is new (`old` is `None`), changed, or
    /// rewritten by a full sync: its element changes (against the old
    /// port's, recomputed), hairpin counts, UDP flows to clean and affinity
    /// entries to check go into `w`.
    fn port(
        &mut self,
        old: Option<&ServicePort<F>>,
        sp: &ServicePort<F>,
        full: bool,
        w: &mut Walk,
    ) {
        if sp.protocol == Protocol::Udp && (full || old.is_none_or(|p| !p.same_endpoints(sp))) {
            w.udp.extend(udp_targets(sp, sp));
        }
        let elems = service_elements(sp);
        w.timeouts.extend(sp.affinity_seconds);
        let old = old.filter(|_| !full);
        if full {
            w.affinity.add(sp);
        } else if let Some(p) = old.filter(|p| may_strand(p, sp)) {
            w.affinity.add(&without_affinity(p));
            w.affinity.add(sp);
        }
        match old {
            Some(p) => w.diff.replace(&service_elements(p), &elems),
            None => elems.into_iter().for_each(|e| w.diff.add(e)),
        }
        self.count_hairpin(old, Some(sp), &mut w.diff);
    }

    /// A Service port no longer in the view: its elements go (a full sync
    /// wrote none), and its UDP flows and client entries are cleaned.
    fn port_gone(&mut self, view: &ServicePort<F>, full: bool, w: &mut Walk) {
        if !full {
            self.count_hairpin(Some(view), None, &mut w.diff);
            for e in service_elements(view) {
                w.diff.delete(e);
            }
            if view.affinity_seconds.is_some() {
                w.affinity.add(&without_affinity(view));
            }
        }
        if view.protocol == Protocol::Udp {
            let none = ServicePort {
                endpoints: Vec::new(),
                local_fallback: Vec::new(),
                ..view.clone()
            };
            w.udp.extend(udp_targets(&none, view));
        }
    }

    /// The client entries of the current table that still lead to an
    /// endpoint of their port (none when there is no table to read).
    fn carried_clients(&self, targets: &Targets) -> Vec<Elem> {
        if targets.is_empty() {
            return Vec::new();
        }
        self.nft
            .elements(&table_for::<F>(), names::AFFINITY_CLIENTS)
            .map(|dumped| targets.carried(&dumped))
            .unwrap_or_default()
    }

    /// Deletes the client entries that lead to an endpoint their port no
    /// longer has. An entry may expire between the read and the delete
    /// (the transaction then fails with ENOENT): read again, a few times.
    fn drop_stale_clients(&self, targets: &Targets) {
        let map = set_named_for::<F>(names::AFFINITY_CLIENTS);
        for _ in 0..3 {
            let stale = match self.nft.elements(&table_for::<F>(), &map.name) {
                Ok(dumped) => targets.stale(&dumped),
                Err(e) => {
                    tracing::warn!(error = %e, "read session affinity entries");
                    return;
                }
            };
            if stale.is_empty() {
                return;
            }
            let mut b = Batch::new();
            b.delete_elements(&table_for::<F>(), &map, stale);
            match self.nft.apply(&b) {
                Ok(()) => return,
                Err(e) if e.errno() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "delete stale session affinity entries");
                    return;
                }
            }
        }
    }

    fn clean_conntrack(&self, targets: &[UdpTarget]) -> usize {
        let Some(ct) = &self.conntrack else { return 0 };
        let node_ips: Vec<std::net::IpAddr> = F::nodeport_ips(&self.node)
            .into_iter()
            .map(Into::into)
            .collect();
        match conntrack::clean(ct.as_ref(), targets, &node_ips) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "clean stale UDP conntrack entries");
                0
            }
        }
    }
}

impl<F: Addr> NftSyncer<F> {
    fn sync_or_full_next(
        &mut self,
        view: &ServiceMap<F>,
        changed: Option<&BTreeSet<ServiceKey>>,
    ) -> Result<SyncOutcome> {
        let r = self.sync_inner(view, changed);
        if r.is_err() {
            self.table.set_need_full();
        }
        r
    }
}

impl<F: Addr> Proxier<F> for NftSyncer<F> {
    /// Compares every Service with what the last sync wrote.
    fn sync(&mut self, desired: &[ServicePort<F>]) -> Result<SyncOutcome> {
        self.sync_or_full_next(&group(desired), None)
    }

    fn sync_changed(
        &mut self,
        view: &ServiceMap<F>,
        changed: &BTreeSet<ServiceKey>,
    ) -> Result<SyncOutcome> {
        self.sync_or_full_next(view, Some(changed))
    }

    /// Whether table `ip kube-proxy` is the one the last full sync built
    /// (same handle); if not (deleted, flushed with the ruleset, or
    /// recreated by someone) the next sync is full.
    fn check_canary(&mut self) -> bool {
        let c = self.table.check(self.nft.as_ref());
        if c == Canary::NewlyLost {
            tracing::warn!(
                family = F::NAME,
                "nft table kube-proxy gone or recreated: next sync is full"
            );
        }
        c == Canary::Intact
    }

    fn next_is_full(&self) -> bool {
        self.table.need_full()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.full_period)
    }
}

/// Whether going from `old` to `new` may leave clients pinned to an
/// endpoint the port no longer has (or pinned at all, when it lost
/// affinity).
fn may_strand<F: Addr>(old: &ServicePort<F>, new: &ServicePort<F>) -> bool {
    // A port that gains affinity may find entries left from before (a
    // NodePort's number reached on another address): check them too.
    (old.affinity_seconds.is_none() && new.affinity_seconds.is_some())
        || old.affinity_seconds.is_some()
            && (new.affinity_seconds.is_none()
                || (old.cluster_ip, old.port, old.node_port)
                    != (new.cluster_ip, new.port, new.node_port)
                || (old.internal_local, old.external_local)
                    != (new.internal_local, new.external_local)
                || !old
                    .all_endpoints()
                    .all(|e| new.all_endpoints().any(|n| n == e)))
}

/// Element changes of one sync, by set: deletions go first in the batch,
/// so a key whose value changed is deleted and re-added in one transaction.
#[derive(Default)]
struct Diff {
    delete: BTreeMap<String, Vec<Elem>>,
    add: BTreeMap<String, Vec<Elem>>,
}

impl Diff {
    fn add(&mut self, (set, key, value): Element) {
        self.add.entry(set).or_default().push(elem(key, value));
    }

    fn delete(&mut self, (set, key, _): Element) {
        self.delete.entry(set).or_default().push(Elem::key(key));
    }

    /// From `old` to `new` elements of one Service port.
    fn replace(&mut self, old: &[Element], new: &[Element]) {
        let keyed = |v: &[Element]| -> HashMap<(String, Value), Option<Value>> {
            v.iter()
                .map(|(s, k, d)| ((s.clone(), k.clone()), d.clone()))
                .collect()
        };
        let (before, after) = (keyed(old), keyed(new));
        for (key, d) in &before {
            if after.get(key) != Some(d) {
                self.delete((key.0.clone(), key.1.clone(), None));
            }
        }
        for (key, d) in &after {
            if before.get(key) != Some(d) {
                self.add((key.0.clone(), key.1.clone(), d.clone()));
            }
        }
    }

    /// Appends the changes to `batch`; returns how many elements.
    fn render<F: Addr>(self, batch: &mut Batch) -> usize {
        let t = table_for::<F>();
        let mut n = 0;
        for (set, elems) in self.delete {
            n += elems.len();
            batch.delete_elements(&t, &set_named_for::<F>(&set), elems);
        }
        for (set, elems) in self.add {
            n += elems.len();
            batch.add_elements(&t, &set_named_for::<F>(&set), elems);
        }
        n
    }
}

fn elem(key: Value, value: Option<Value>) -> Elem {
    match value {
        Some(v) => Elem::map(key, v),
        None => Elem::key(key),
    }
}

/// Deletes tables `ip kube-proxy` and `ip6 kube-proxy` (switching to
/// iptables mode, or `knode agent --cleanup`). Returns whether one was
/// there.
pub fn cleanup(nft: &dyn NfTables) -> Result<bool> {
    let v4 = hostnet::nftables::delete_table_if_present(nft, &table())?;
    let v6 = hostnet::nftables::delete_table_if_present(nft, &table_for::<Ipv6Addr>())?;
    Ok(v4 || v6)
}
