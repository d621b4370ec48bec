//! The sync engine: turns a desired service view into one
//! `iptables-restore --noflush` that rewrites only the chains whose rules
//! changed since the last successful sync (partial), or everything plus the
//! removal of stale chains and the re-insertion of missing jumps (full:
//! first, periodic, after a failure, or when the canary is gone). UDP
//! conntrack cleanup follows a successful restore. Blocking; one thread.

mod payload;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostnet::iptables::{chain_rules, has_chain};

pub use payload::Payload;

use crate::conntrack::{self, Conntrack, Dest, UdpTarget};
use crate::iptables::Iptables;
use crate::rules::names::{Protocol, ServicePortName, KUBE_PROXY_CANARY, SERVICE_CHAIN_PREFIXES};
use crate::rules::{builtin_jumps, service_rules, shared_chains, NodeConfig, SharedRule, Table};
use crate::view::ServicePort;
use crate::Result;

/// kube-proxy's default `--iptables-sync-period`: a full sync at least this often.
pub const DEFAULT_FULL_SYNC_PERIOD: Duration = Duration::from_secs(30);

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
    /// Stale UDP conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Whether iptables-restore ran at all (nothing changed otherwise).
    pub restored: bool,
    /// Wall time of the sync.
    pub duration: Duration,
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
    /// are intact.
    pub fn check_canary(&mut self) -> bool {
        let intact = Table::ALL.into_iter().all(|t| {
            matches!(self.ipt.list_chain(t, KUBE_PROXY_CANARY),
                Ok(Some(rules)) if rules.lines().any(|l| l.starts_with("-A ")))
        });
        if !intact {
            tracing::warn!("canary chain gone or flushed: next sync is full");
            self.need_full = true;
        }
        intact
    }

    /// Brings iptables to the ruleset of `desired` (see the module doc).
    /// On failure nothing is recorded as applied and the next sync is full.
    pub fn sync(&mut self, desired: &[ServicePort]) -> Result<SyncOutcome> {
        let start = Instant::now();
        let full = self.next_is_full();
        let mut payload = Payload::default();
        let mut chains: HashMap<ChainKey, (u64, usize)> = HashMap::with_capacity(self.chains.len());
        let mut services = HashMap::with_capacity(desired.len());
        let mut udp = Vec::new();

        for sp in desired {
            let key = (sp.name.clone(), sp.protocol);
            let prev = self.services.get(&key);
            if let Some(prev) = prev.filter(|p| !full && p.view == *sp) {
                for c in &prev.own {
                    if let Some(v) = self.chains.get(c) {
                        chains.insert(c.clone(), *v);
                    }
                }
                services.insert(key, Arc::clone(prev));
                continue;
            }
            if sp.protocol == Protocol::Udp
                && (full || prev.is_none_or(|p| p.view.endpoints != sp.endpoints))
            {
                udp.extend(udp_targets(sp, sp));
            }
            let rules = service_rules(sp, &self.node);
            let mut own = Vec::with_capacity(rules.chains.len());
            for chain in rules.chains {
                let key = (chain.table, chain.name.clone());
                let value = (digest(&chain.rules), chain.rules.len());
                if full || self.chains.get(&key) != Some(&value) {
                    payload.write(chain);
                }
                chains.insert(key.clone(), value);
                own.push(key);
            }
            services.insert(
                key,
                Arc::new(Applied {
                    view: sp.clone(),
                    own,
                    shared: rules.shared,
                }),
            );
        }
        // Deleted UDP Service ports: their flows lead nowhere now.
        for (key, prev) in &self.services {
            if key.1 == Protocol::Udp && !services.contains_key(key) {
                let gone = ServicePort {
                    endpoints: Vec::new(),
                    ..prev.view.clone()
                };
                udp.extend(udp_targets(&gone, &prev.view));
            }
        }

        let mut ordered: Vec<&Arc<Applied>> = desired
            .iter()
            .filter_map(|sp| services.get(&(sp.name.clone(), sp.protocol)))
            .collect();
        ordered.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for chain in shared_chains(ordered.iter().flat_map(|a| &a.shared), &self.node) {
            let key = (chain.table, chain.name.clone());
            let value = (digest(&chain.rules), chain.rules.len());
            if full || self.chains.get(&key) != Some(&value) {
                payload.write(chain);
            }
            chains.insert(key, value);
        }

        if full {
            self.full_extras(&chains, &mut payload)?;
        } else {
            for key in self.chains.keys().filter(|k| !chains.contains_key(*k)) {
                payload.delete(key.0, key.1.clone());
            }
        }

        let restored = !payload.is_empty();
        if restored {
            if let Err(e) = self.ipt.restore(&payload.render()) {
                self.need_full = true;
                return Err(e);
            }
        }
        let (written, deleted) = (payload.written(), payload.deleted());
        drop(payload);
        self.services = services;
        self.chains = chains;
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
            conntrack_deleted,
            restored,
            duration: start.elapsed(),
        })
    }

    /// What only a full sync does: reads both tables, deletes every service
    /// chain the ruleset does not name, and re-inserts missing jumps from
    /// the built-in chains.
    fn full_extras(
        &self,
        desired: &HashMap<ChainKey, (u64, usize)>,
        payload: &mut Payload,
    ) -> Result<()> {
        let jumps = builtin_jumps(&self.node);
        for table in Table::ALL {
            let saved = self.ipt.save(table)?;
            for line in saved.lines() {
                let Some(name) = line.strip_prefix(':').and_then(|d| d.split(' ').next()) else {
                    continue;
                };
                let ours = SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p));
                if ours && !desired.contains_key(&(table, name.to_string())) {
                    payload.delete(table, name.to_string());
                }
            }
            for j in jumps.iter().filter(|j| j.table == table) {
                let present = has_chain(&saved, j.builtin)
                    && chain_rules(&saved, j.builtin)
                        .iter()
                        .any(|r| r.ends_with(&format!("-j {}", j.target)));
                if !present {
                    payload.insert(j.clone());
                }
            }
        }
        Ok(())
    }

    /// Deletes stale UDP flows for `targets`; failures are logged, not
    /// returned: the rules are in place and the next change retries.
    fn clean_conntrack(&self, targets: &[UdpTarget]) -> usize {
        let Some(ct) = &self.conntrack else { return 0 };
        let node_ips: Vec<Ipv4Addr> = self.node.node_ips.clone();
        match conntrack::clean(ct.as_ref(), targets, &node_ips) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "clean stale UDP conntrack entries");
                0
            }
        }
    }
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
fn udp_targets(now: &ServicePort, was: &ServicePort) -> Vec<UdpTarget> {
    let endpoints: BTreeSet<(Ipv4Addr, u16)> =
        now.endpoints.iter().map(|e| (e.ip, e.port)).collect();
    let mut v = vec![UdpTarget {
        dest: Dest::ClusterIp(was.cluster_ip, was.port),
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
