//! A recording [`NfTables`] for unit tests of proxy and netpol: it keeps
//! every applied [`Batch`] as a typed value and a small model of what the
//! kernel would hold (tables, chains, elements), so that reads after
//! writes answer as the kernel would. It validates nothing else.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::batch::{Batch, Op};
use super::model::{Elem, Table, Value};
use super::read::{ChainInfo, TableInfo};
use super::{Error, NfTables, Result};

/// What the fake holds.
#[derive(Debug, Default)]
pub struct Applied {
    /// Every batch applied, in order (failed ones included).
    pub batches: Vec<Batch>,
    /// The next `apply` fails with this errno (then it is cleared).
    pub fail_next: Option<i32>,
    tables: BTreeMap<(u8, String), FakeTable>,
    next_handle: u64,
    generation: u32,
}

#[derive(Debug, Default, Clone)]
struct FakeTable {
    handle: u64,
    chains: BTreeMap<String, bool>,
    /// Elements by set, keyed by key.
    sets: BTreeMap<String, BTreeMap<Value, Elem>>,
}

/// The recording fake.
#[derive(Debug, Default)]
pub struct RecordingNfTables {
    /// Open for tests to inspect and to arrange failures.
    pub state: Mutex<Applied>,
}

impl RecordingNfTables {
    /// An empty ruleset.
    pub fn new() -> RecordingNfTables {
        RecordingNfTables::default()
    }

    /// The batches applied so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.lock().batches.clone()
    }

    /// Drops a table, as `nft flush ruleset` by someone else would.
    pub fn remove_table(&self, table: &Table) {
        self.lock().tables.remove(&key(table));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(t: &Table) -> (u8, String) {
    (t.family.proto(), t.name.clone())
}

fn missing(what: String) -> Error {
    Error::Refused {
        what,
        source: std::io::Error::from_raw_os_error(libc::ENOENT),
    }
}

impl Applied {
    fn apply_op(&mut self, op: &Op) -> Result<()> {
        if let Op::AddTable(t) = op {
            self.next_handle += 1;
            let handle = self.next_handle;
            self.tables.entry(key(t)).or_insert_with(|| FakeTable {
                handle,
                ..FakeTable::default()
            });
            return Ok(());
        }
        if let Op::DeleteTable(t) = op {
            return self
                .tables
                .remove(&key(t))
                .map(drop)
                .ok_or_else(|| missing(op.describe()));
        }
        let table = match op {
            Op::AddChain { table, .. }
            | Op::FlushChain { table, .. }
            | Op::DeleteChain { table, .. }
            | Op::DeleteSet { table, .. }
            | Op::AddSet { table, .. }
            | Op::AddElements { table, .. }
            | Op::DeleteElements { table, .. }
            | Op::AddRule { table, .. } => table,
            Op::AddTable(_) | Op::DeleteTable(_) => return Ok(()),
        };
        let t = self
            .tables
            .get_mut(&key(table))
            .ok_or_else(|| missing(op.describe()))?;
        match op {
            Op::AddChain { chain, .. } => {
                t.chains.insert(chain.name.clone(), chain.base.is_some());
            }
            Op::AddSet { set, .. } => {
                t.sets.entry(set.name.clone()).or_default();
            }
            Op::DeleteChain { chain, .. } => {
                t.chains
                    .remove(chain)
                    .ok_or_else(|| missing(op.describe()))?;
            }
            Op::DeleteSet { set, .. } => {
                t.sets.remove(set).ok_or_else(|| missing(op.describe()))?;
            }
            Op::AddElements {
                set,
                elems,
                exclusive,
                ..
            } => {
                let s = t
                    .sets
                    .get_mut(&set.name)
                    .ok_or_else(|| missing(op.describe()))?;
                for e in elems {
                    if *exclusive && s.contains_key(&e.key) {
                        return Err(Error::Refused {
                            what: op.describe(),
                            source: std::io::Error::from_raw_os_error(libc::EEXIST),
                        });
                    }
                    s.insert(e.key.clone(), e.clone());
                }
            }
            Op::DeleteElements { set, elems, .. } => {
                let s = t
                    .sets
                    .get_mut(&set.name)
                    .ok_or_else(|| missing(op.describe()))?;
                for e in elems {
                    s.remove(&e.key).ok_or_else(|| missing(op.describe()))?;
                }
            }
            Op::FlushChain { chain, .. } | Op::AddRule { chain, .. } => {
                if !t.chains.contains_key(chain) {
                    return Err(missing(op.describe()));
                }
            }
            Op::AddTable(_) | Op::DeleteTable(_) => {}
        }
        Ok(())
    }
}

impl NfTables for RecordingNfTables {
    fn apply(&self, batch: &Batch) -> Result<()> {
        let mut s = self.lock();
        s.batches.push(batch.clone());
        if let Some(errno) = s.fail_next.take() {
            return Err(Error::Refused {
                what: "apply an nf_tables transaction".into(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        // All or nothing, as the kernel: apply to a copy of the tables.
        let saved = s.tables.clone();
        for op in batch.ops() {
            if let Err(e) = s.apply_op(op) {
                s.tables = saved;
                return Err(e);
            }
        }
        s.generation = s.generation.wrapping_add(1);
        Ok(())
    }

    fn table(&self, table: &Table) -> Result<Option<TableInfo>> {
        Ok(self.lock().tables.get(&key(table)).map(|t| TableInfo {
            handle: t.handle,
            use_count: (t.chains.len() + t.sets.len()) as u32,
        }))
    }

    fn generation(&self) -> Result<u32> {
        Ok(self.lock().generation)
    }

    fn chains(&self, table: &Table) -> Result<Vec<ChainInfo>> {
        let s = self.lock();
        let t = s
            .tables
            .get(&key(table))
            .ok_or_else(|| missing(format!("list chains of table {}", table.name)))?;
        Ok(t.chains
            .iter()
            .map(|(name, base)| ChainInfo {
                name: name.clone(),
                handle: 0,
                base: *base,
            })
            .collect())
    }

    fn elements(&self, table: &Table, set: &str) -> Result<Vec<Elem>> {
        let s = self.lock();
        let what = || format!("list elements of {}/{set}", table.name);
        let t = s.tables.get(&key(table)).ok_or_else(|| missing(what()))?;
        let elems = t.sets.get(set).ok_or_else(|| missing(what()))?;
        Ok(elems.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::{Chain, DataType, Elem, Family, Field, Set, Value};

    fn elem(port: u16) -> Elem {
        Elem::key(Value::of(&[Field::Port(port)]))
    }

    #[test]
    fn records_batches_and_applies_them_all_or_nothing() {
        let fake = RecordingNfTables::new();
        let t = Table::new(Family::Inet, "kube-proxy");
        let ports = Set::new("ports", &[DataType::InetService]);
        let mut full = Batch::new();
        full.add_table(&t)
            .add_chain(&t, Chain::regular("services"))
            .add_set(&t, ports.clone())
            .add_elements(&t, &ports, vec![elem(80)]);
        fake.apply(&full).unwrap();

        let mut partial = Batch::new();
        partial
            .create_elements(&t, &ports, vec![elem(443)])
            .create_elements(&t, &ports, vec![elem(80)]);
        let err = fake.apply(&partial).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert_eq!(
            fake.elements(&t, "ports").unwrap(),
            vec![elem(80)],
            "443 rolled back"
        );

        let batches = fake.batches();
        assert_eq!(batches.len(), 2);
        assert!(!batches[0].only_elements());
        assert!(
            batches[1].only_elements(),
            "a partial sync holds only elements"
        );
        assert_eq!(fake.chains(&t).unwrap()[0].name, "services");

        fake.remove_table(&t);
        assert_eq!(fake.table(&t).unwrap(), None);
    }
}
