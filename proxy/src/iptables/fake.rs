//! A recording fake of the iptables boundary that also keeps tables the
//! way `iptables-restore --noflush` would leave them (chains declared are
//! flushed, `-A`/`-I`/`-X` applied, all or nothing), so tests can assert on
//! the calls made and on the resulting state, and simulate outside flushes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Iptables;
use crate::rules::Table;
use crate::{Error, Result};

/// One call made through the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Restore(String),
    Save(Table),
    ListChain(Table, String),
}

type Tables = BTreeMap<Table, BTreeMap<String, Vec<String>>>;

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    tables: Tables,
    fail_restores: usize,
    /// Bumped by every change to the tables.
    generation: u64,
}

/// The fake. Built-in chains come into being when first used.
#[derive(Debug, Default)]
pub struct FakeIptables {
    state: Mutex<State>,
}

impl FakeIptables {
    /// An empty fake.
    pub fn new() -> FakeIptables {
        FakeIptables::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, then forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The payloads restored so far (without forgetting them).
    pub fn restores(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Restore(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The rules of `chain`, `None` when it does not exist.
    pub fn chain(&self, table: Table, chain: &str) -> Option<Vec<String>> {
        self.lock().tables.get(&table)?.get(chain).cloned()
    }

    /// Names of the chains in `table`.
    pub fn chains(&self, table: Table) -> Vec<String> {
        self.lock()
            .tables
            .get(&table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes the next `n` restores fail.
    pub fn fail_restores(&self, n: usize) {
        self.lock().fail_restores = n;
    }

    /// What `iptables -t TABLE -F` does: every chain emptied, none deleted.
    pub fn flush_table(&self, table: Table) {
        let mut s = self.lock();
        s.generation += 1;
        if let Some(t) = s.tables.get_mut(&table) {
            t.values_mut().for_each(Vec::clear);
        }
    }
}

fn apply(tables: &mut Tables, payload: &str) -> std::result::Result<(), String> {
    let mut table: Option<Table> = None;
    for line in payload.lines() {
        let t = || table.ok_or_else(|| format!("{line:?} outside a table"));
        if let Some(name) = line.strip_prefix('*') {
            table = Some(match name {
                "nat" => Table::Nat,
                "filter" => Table::Filter,
                other => return Err(format!("unknown table {other}")),
            });
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap_or_default().to_string();
            tables.entry(t()?).or_default().insert(name, Vec::new());
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default();
            let rules = tables.entry(t()?).or_default();
            rules
                .get_mut(chain)
                .ok_or_else(|| format!("{line:?}: no chain {chain}"))?
                .push(line.to_string());
        } else if let Some(rest) = line.strip_prefix("-I ") {
            let mut parts = rest.splitn(3, ' ');
            let chain = parts.next().unwrap_or_default().to_string();
            let _position = parts.next();
            let args = parts.next().unwrap_or_default();
            let rules = tables
                .entry(t()?)
                .or_default()
                .entry(chain.clone())
                .or_default();
            rules.insert(0, format!("-A {chain} {args}"));
        } else if let Some(chain) = line.strip_prefix("-X ") {
            let rules = tables.entry(t()?).or_default();
            let referenced = rules
                .values()
                .flatten()
                .any(|r| r.ends_with(&format!("-j {chain}")));
            if referenced {
                return Err(format!("-X {chain}: chain still referenced"));
            }
            rules
                .remove(chain)
                .ok_or_else(|| format!("-X {chain}: no such chain"))?;
        } else if line == "COMMIT" {
            table = None;
        } else if !line.is_empty() && !line.starts_with('#') {
            return Err(format!("cannot parse {line:?}"));
        }
    }
    Ok(())
}

impl Iptables for FakeIptables {
    fn restore(&self, payload: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Restore(payload.to_string()));
        let fail = |detail: String| Error::Iptables {
            what: "fake iptables-restore --noflush".into(),
            detail,
        };
        if s.fail_restores > 0 {
            s.fail_restores -= 1;
            return Err(fail("failure injected by the test".into()));
        }
        // All or nothing, as the real restore commits per table at COMMIT.
        let mut next = s.tables.clone();
        apply(&mut next, payload).map_err(fail)?;
        s.tables = next;
        s.generation += 1;
        Ok(())
    }

    fn save(&self, table: Table) -> Result<String> {
        let mut s = self.lock();
        s.calls.push(Call::Save(table));
        let mut out = format!("*{}\n", table.name());
        let chains = s.tables.get(&table).cloned().unwrap_or_default();
        for name in chains.keys() {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for rule in chains.values().flatten() {
            out.push_str(rule);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }

    /// Like legacy's: changes with every change (to any table, here).
    fn table_stamp(&self, _table: Table) -> Option<u64> {
        Some(self.lock().generation)
    }

    fn list_chain(&self, table: Table, chain: &str) -> Result<Option<String>> {
        let mut s = self.lock();
        s.calls.push(Call::ListChain(table, chain.to_string()));
        Ok(s.tables
            .get(&table)
            .and_then(|t| t.get(chain))
            .map(|rules| {
                let mut out = format!("-N {chain}\n");
                for r in rules {
                    out.push_str(r);
                    out.push('\n');
                }
                out
            }))
    }
}
