//! The iptables-restore input of one sync: per table, the chains to
//! (re)write, the jumps to insert into built-in chains, and the chains to
//! delete, in the order restore needs (declare, fill, then delete).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::rules::{Chain, Jump, Table};

/// What one sync changes, table by table.
#[derive(Debug, Default)]
pub struct Payload {
    tables: BTreeMap<Table, Part>,
}

#[derive(Debug, Default)]
struct Part {
    write: Vec<Chain>,
    insert: Vec<Jump>,
    delete: Vec<String>,
}

impl Payload {
    fn part(&mut self, table: Table) -> &mut Part {
        self.tables.entry(table).or_default()
    }

    /// Flushes `chain` (creating it if needed) and fills it.
    pub fn write(&mut self, chain: Chain) {
        self.part(chain.table).write.push(chain);
    }

    /// Inserts `jump` at the top of its built-in chain.
    pub fn insert(&mut self, jump: Jump) {
        self.part(jump.table).insert.push(jump);
    }

    /// Flushes and deletes `chain`.
    pub fn delete(&mut self, table: Table, chain: String) {
        self.part(table).delete.push(chain);
    }

    /// Chains written (not counting deletions).
    pub fn written(&self) -> usize {
        self.tables.values().map(|p| p.write.len()).sum()
    }

    /// Chains deleted.
    pub fn deleted(&self) -> usize {
        self.tables.values().map(|p| p.delete.len()).sum()
    }

    /// True when the sync changes nothing.
    pub fn is_empty(&self) -> bool {
        self.tables
            .values()
            .all(|p| p.write.is_empty() && p.insert.is_empty() && p.delete.is_empty())
    }

    /// The restore input: for each table with changes, every chain touched
    /// is declared first (which flushes it under `--noflush`), then the
    /// jumps and rules, then the deletions, so a deleted chain is no longer
    /// referenced by the time it goes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (table, part) in &self.tables {
            if part.write.is_empty() && part.insert.is_empty() && part.delete.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{}", table.name());
            let declared = part.write.iter().map(|c| &c.name).chain(&part.delete);
            for name in declared {
                let _ = writeln!(out, ":{name} - [0:0]");
            }
            for j in &part.insert {
                let _ = writeln!(out, "-I {} 1 {}", j.builtin, j.args);
            }
            for rule in part.write.iter().flat_map(|c| &c.rules) {
                out.push_str(rule);
                out.push('\n');
            }
            for name in &part.delete {
                let _ = writeln!(out, "-X {name}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}
