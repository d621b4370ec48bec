//! The sync engine: turns a desired service view into one
//! `iptables-restore --noflush` that rewrites only the chains whose rules
//! changed since the last successful sync (partial), or everything plus the
//! removal of stale chains and the re-insertion of missing jumps (full:
//! first, periodic, after a failure, or when the canary is gone). UDP
//! conntrack cleanup follows a successful restore. Blocking; one thread.

mod payload;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use payload::Payload;

use crate::conntrack::{self, Conntrack, Dest, UdpTarget};
use crate::iptables::{Iptables, Survey};
use crate::rules::names::{Protocol, ServicePortName, KUBE_PROXY_CANARY, SERVICE_CHAIN_PREFIXES};
use crate::rules::{
    builtin_jumps, large_cluster, service_rules, shared_chains, NodeConfig, SharedRule, Table,
};
use crate::view::{Addr, ServiceKey, ServiceMap, ServicePort};
use crate::Result;

/// A full sync at least this often: kube-proxy's FullSyncPeriod (1 h).
/// Partial syncs apply every change; a full one only repairs drift the
/// canary does not see (a rule deleted from a chain by hand) and costs the
/// whole table: 2-3 s at 10k Services on legacy, 36-48 s on iptables-nft 1.8.9.
pub const DEFAULT_FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// A proxy mode's sync engine, as kube-proxy's `Proxier`: the sync thread
/// drives whichever one `main` chose ([`Syncer`] for iptables,
/// [`crate::nft::NftSyncer`] for nftables) through these three calls.
pub trait Proxier<A: Addr = Ipv4Addr>: Send {
    /// Brings the kernel to the ruleset of `desired`.
    fn sync(&mut self, desired: &[ServicePort<A>]) -> Result<SyncOutcome>;
    /// Brings the kernel to `view`, which differs from the view of the last
    /// successful sync only in the Services named in `changed` (the agent's
    /// watch knows which; the nftables engine then looks at nothing else).
    /// The iptables engine diffs its chains and takes the whole view.
    fn sync_changed(
        &mut self,
        view: &ServiceMap<A>,
        changed: &BTreeSet<ServiceKey>,
    ) -> Result<SyncOutcome> {
        let _ = changed;
        let flat: Vec<ServicePort<A>> = view.values().flat_map(|p| p.iter().cloned()).collect();
        self.sync(&flat)
    }
    /// Checks that nobody removed the proxy's rules (iptables: the canary
    /// chains; nftables: the table's handle). When they did, the next sync
    /// is full and this returns false.
    fn check_canary(&mut self) -> bool;
    /// Whether the next sync will be full.
    fn next_is_full(&self) -> bool;
}

impl Proxier for Syncer {
    fn sync(&mut self, desired: &[ServicePort]) -> Result<SyncOutcome> {
        Syncer::sync(self, desired)
    }

    fn check_canary(&mut self) -> bool {
        Syncer::check_canary(self)
    }

    fn next_is_full(&self) -> bool {
        Syncer::next_is_full(self)
    }
}

/// What a successful sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Everything rewritten (and stale chains removed) rather than a diff.
    pub full: bool,
    /// Chains written.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Rules now in the proxy's filter chains.
    pub filter_rules: usize,
    /// Rules now in the proxy's nat chains.
    pub nat_rules: usize,
    /// Set/map elements added or deleted (nftables mode; 0 in iptables mode).
    pub elements_changed: usize,
    /// Stale UDP conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Whether iptables-restore ran at all (nothing changed otherwise).
    pub restored: bool,
    /// Wall time of the sync.
    pub duration: Duration,
    /// Of which in the kernel's hands: the nf_tables transaction, or
    /// `iptables-restore`.
    pub apply: Duration,
}

/// One Service port as last applied.
#[derive(Debug)]
struct Applied {
    view: ServicePort,
    /// Its own chains.
    own: Vec<(Table, String)>,
    /// Its lines in the shared chains.
    shared: Vec<SharedRule>,
}

type Key = (ServicePortName, Protocol);
type ChainKey = (Table, String);

/// The engine. Keeps, per Service port and per chain, what the last
/// successful sync wrote.
pub struct Syncer {
    ipt: Arc<dyn Iptables>,
    conntrack: Option<Arc<dyn Conntrack>>,
    node: NodeConfig,
    full_period: Duration,
    services: HashMap<Key, Arc<Applied>>,
    /// Each chain written: hash of its rules and how many there are.
    chains: HashMap<ChainKey, (u64, usize)>,
    need_full: bool,
    last_full: Option<Instant>,
    /// Whether the last sync wrote large-cluster mode rules.
    large: bool,
    /// Per table, its stamp when the canary was last found intact.
    canary_stamps: HashMap<Table, u64>,
}

impl Syncer {
    /// An engine writing through `ipt` for `node`; the first sync is full.
    pub fn new(ipt: Arc<dyn Iptables>, node: NodeConfig) -> Syncer {
        Syncer {
            ipt,
            conntrack: None,
            node,
            full_period: DEFAULT_FULL_SYNC_PERIOD,
            services: HashMap::new(),
            chains: HashMap::new(),
            need_full: true,
            last_full: None,
            large: false,
            canary_stamps: HashMap::new(),
        }
    }

    /// Cleans stale UDP flows through `ct` after each sync.
    pub fn with_conntrack(mut self, ct: Arc<dyn Conntrack>) -> Syncer {
        self.conntrack = Some(ct);
        self
    }

    /// A full sync at least every `period`.
    pub fn with_full_sync_period(mut self, period: Duration) -> Syncer {
        self.full_period = period;
        self
    }

    /// Makes the next sync a full one.
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// Whether the next sync will be full.
    pub fn next_is_full(&self) -> bool {
        self.need_full
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.full_period)
    }

    /// Checks the canary chains; when one is gone or empty (someone deleted
    /// or flushed the table) the next sync is full. Returns whether they
    /// are intact. A table whose stamp ([`Iptables::table_stamp`]) has not
    /// changed since its canary was last found intact is not read again.
    pub fn check_canary(&mut self) -> bool {
        let intact = Table::ALL.into_iter().all(|t| {
            let stamp = self.ipt.table_stamp(t);
            if stamp.is_some() && self.canary_stamps.get(&t) == stamp.as_ref() {
                return true;
            }
            let ok = matches!(self.ipt.list_chain(t, KUBE_PROXY_CANARY),
                Ok(Some(rules)) if rules.lines().any(|l| l.starts_with("-A ")));
            match stamp.filter(|_| ok) {
                Some(s) => self.canary_stamps.insert(t, s),
                None => self.canary_stamps.remove(&t),
            };
            ok
        });
        if !intact {
            tracing::warn!("canary chain gone or flushed: next sync is full");
            self.need_full = true;
        }
        intact
    }

    /// Brings iptables to the ruleset of `desired` (see the module doc).
    ///
    /// The engine's record is updated as the payload is built; when the
    /// restore fails the next sync is full, and a full sync depends on
    /// nothing recorded (it regenerates every chain and finds stale ones
    /// with [`Iptables::survey`]), so a failed sync cannot leave a wrong record
    /// behind. A partial sync costs one hash lookup and one comparison per
    /// unchanged Service port; the shared chains (KUBE-SERVICES, ...) are
    /// rebuilt only when some Service port's lines in them changed.
    pub fn sync(&mut self, desired: &[ServicePort]) -> Result<SyncOutcome> {
        let start = Instant::now();
        let large = large_cluster(desired);
        if large != self.large {
            // Every endpoint rule changes form: rewrite all of them.
            self.need_full = true;
        }
        let full = self.next_is_full();
        // A full sync reads the tables (stale chains, missing jumps) while
        // it generates the rules: on legacy at 10k Services the read is an
        // iptables-save of 0.5 s and the generation 0.25 s. The thread
        // starts in this thread's network namespace.
        let survey = full.then(|| {
            let ipt = Arc::clone(&self.ipt);
            let builtins = builtin_chains(&self.node);
            std::thread::spawn(move || {
                Table::ALL
                    .into_iter()
                    .map(|t| {
                        let listed: Vec<&str> = builtins
                            .iter()
                            .filter(|(table, _)| *table == t)
                            .map(|(_, c)| *c)
                            .collect();
                        Ok((t, ipt.survey(t, &listed)?))
                    })
                    .collect::<Result<Vec<(Table, Survey)>>>()
            })
        });
        // A full sync rebuilds the record; the old one only tells which
        // UDP Service ports are gone (their flows must still be cleaned).
        let previous = if full {
            self.chains.clear();
            std::mem::take(&mut self.services)
        } else {
            HashMap::new()
        };
        let mut payload = Payload::default();
        let mut udp = Vec::new();
        let mut shared_dirty = full;
        let mut present: HashSet<Key> = HashSet::with_capacity(desired.len());

        for sp in desired {
            let key = (sp.name.clone(), sp.protocol);
            let prev = if full { &previous } else { &self.services }
                .get(&key)
                .cloned();
            if !full && prev.as_ref().is_some_and(|p| p.view == *sp) {
                present.insert(key);
                continue;
            }
            if sp.protocol == Protocol::Udp
                && (full || prev.as_ref().is_none_or(|p| !p.view.same_endpoints(sp)))
            {
                udp.extend(udp_targets(sp, sp));
            }
            let rules = service_rules(sp, &self.node, large);
            shared_dirty |= prev.as_ref().is_none_or(|p| p.shared != rules.shared);
            let mut own = Vec::with_capacity(rules.chains.len());
            for chain in rules.chains {
                let ckey = (chain.table, chain.name.clone());
                let value = (digest(&chain.rules), chain.rules.len());
                if full || self.chains.get(&ckey) != Some(&value) {
                    payload.write(chain);
                }
                self.chains.insert(ckey.clone(), value);
                own.push(ckey);
            }
            // Chains the Service port no longer has (a removed endpoint's SEP).
            for old in prev.iter().flat_map(|p| &p.own) {
                if !own.contains(old) && self.chains.remove(old).is_some() {
                    payload.delete(old.0, old.1.clone());
                }
            }
            let applied = Arc::new(Applied {
                view: sp.clone(),
                own,
                shared: rules.shared,
            });
            self.services.insert(key.clone(), applied);
            present.insert(key);
        }
        // Service ports gone from the view: their chains go, and their UDP
        // flows lead nowhere now.
        let gone: Vec<Arc<Applied>> = if full {
            previous
                .into_iter()
                .filter(|(k, _)| !present.contains(k))
                .map(|(_, a)| a)
                .collect()
        } else if present.len() < self.services.len() {
            let keys: Vec<Key> = self
                .services
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| self.services.remove(k))
                .collect()
        } else {
            Vec::new()
        };
        for prev in gone {
            shared_dirty = true;
            for c in &prev.own {
                if self.chains.remove(c).is_some() {
                    payload.delete(c.0, c.1.clone());
                }
            }
            if prev.view.protocol == Protocol::Udp {
                let gone = ServicePort {
                    endpoints: Vec::new(),
                    local_fallback: Vec::new(),
                    ..prev.view.clone()
                };
                udp.extend(udp_targets(&gone, &prev.view));
            }
        }

        if shared_dirty {
            let mut ordered: Vec<&Arc<Applied>> = desired
                .iter()
                .filter_map(|sp| self.services.get(&(sp.name.clone(), sp.protocol)))
                .collect();
            ordered.dedup_by(|a, b| Arc::ptr_eq(a, b));
            let shared = shared_chains(ordered.iter().flat_map(|a| &a.shared), &self.node);
            for chain in shared {
                let ckey = (chain.table, chain.name.clone());
                let value = (digest(&chain.rules), chain.rules.len());
                if full || self.chains.get(&ckey) != Some(&value) {
                    payload.write(chain);
                }
                self.chains.insert(ckey, value);
            }
        }

        if let Some(handle) = survey {
            let found = handle.join().unwrap_or_else(|_| {
                Err(crate::Error::Iptables {
                    what: "survey the tables".into(),
                    detail: "the survey thread panicked".into(),
                })
            });
            if let Err(e) = found.map(|f| self.full_extras(&f, &mut payload)) {
                self.need_full = true;
                return Err(e);
            }
        }

        let restored = !payload.is_empty();
        let applying = Instant::now();
        if restored {
            if let Err(e) = self.ipt.restore(&payload.render()) {
                self.need_full = true;
                return Err(e);
            }
        }
        let apply = applying.elapsed();
        let (written, deleted) = (payload.written(), payload.deleted());
        drop(payload);
        self.large = large;
        if full {
            self.need_full = false;
            self.last_full = Some(Instant::now());
        }
        let conntrack_deleted = self.clean_conntrack(&udp);
        let count = |t: Table| {
            self.chains
                .iter()
                .filter(|(k, _)| k.0 == t)
                .map(|(_, v)| v.1)
                .sum()
        };
        Ok(SyncOutcome {
            full,
            chains_written: written,
            chains_deleted: deleted,
            filter_rules: count(Table::Filter),
            nat_rules: count(Table::Nat),
            elements_changed: 0,
            conntrack_deleted,
            restored,
            duration: start.elapsed(),
            apply,
        })
    }

    /// What only a full sync adds, from the survey of both tables: the
    /// deletion of every service chain the ruleset does not name, and the
    /// missing jumps from the built-in chains.
    fn full_extras(&self, found: &[(Table, Survey)], payload: &mut Payload) {
        let desired = &self.chains;
        let jumps = builtin_jumps(&self.node);
        for (table, found) in found {
            let table = *table;
            for name in &found.chains {
                let ours = SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p));
                if ours && !desired.contains_key(&(table, name.clone())) {
                    payload.delete(table, name.clone());
                }
            }
            for j in jumps.iter().filter(|j| j.table == table) {
                let suffix = format!("-j {}", j.target);
                let present = found
                    .rules
                    .get(j.builtin)
                    .is_some_and(|rules| rules.iter().any(|r| r.ends_with(&suffix)));
                if !present {
                    payload.insert(j.clone());
                }
            }
        }
    }

    /// Deletes stale UDP flows for `targets`; failures are logged, not
    /// returned: the rules are in place and the next change retries.
    fn clean_conntrack(&self, targets: &[UdpTarget]) -> usize {
        let Some(ct) = &self.conntrack else { return 0 };
        let node_ips: Vec<IpAddr> = self.node.node_ips.iter().map(|ip| (*ip).into()).collect();
        match conntrack::clean(ct.as_ref(), targets, &node_ips) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "clean stale UDP conntrack entries");
                0
            }
        }
    }
}

/// The built-in chains the proxy jumps from, per table, once each.
fn builtin_chains(node: &NodeConfig) -> Vec<(Table, &'static str)> {
    let mut v: Vec<(Table, &'static str)> = builtin_jumps(node)
        .iter()
        .map(|j| (j.table, j.builtin))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Removes every chain the proxy made (`KUBE-*`, in nat and filter) and
/// the jumps to them from the built-in chains, as `kube-proxy --cleanup`
/// does. Returns whether anything was there.
pub fn cleanup(ipt: &dyn Iptables) -> Result<bool> {
    let mut any = false;
    for table in Table::ALL {
        let saved = ipt.save(table)?;
        if let Some(p) =
            hostnet::iptables::removal_payload(table.name(), &saved, |c| c.starts_with("KUBE-"))
        {
            ipt.restore(&p)?;
            any = true;
        }
    }
    Ok(any)
}

/// Where `now` is reached (taken from `was`, which names its VIP and
/// NodePort) and the endpoints it leads to now.
pub(crate) fn udp_targets<A: Addr>(now: &ServicePort<A>, was: &ServicePort<A>) -> Vec<UdpTarget> {
    let endpoints: BTreeSet<(IpAddr, u16)> =
        now.all_endpoints().map(|e| (e.ip.into(), e.port)).collect();
    let mut v = vec![UdpTarget {
        dest: Dest::ClusterIp(was.cluster_ip.into(), was.port),
        endpoints: endpoints.clone(),
    }];
    if let Some(np) = was.node_port {
        v.push(UdpTarget {
            dest: Dest::NodePort(np),
            endpoints,
        });
    }
    v
}

/// A hash of a chain's rules (SipHash with fixed keys: stable within a process).
fn digest(rules: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
