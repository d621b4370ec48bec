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
            // Declared in descending name order: both iptables-legacy's
            // libiptc and iptables-nft (1.8.9) insert each new chain into a
            // name-sorted list, walking from its head, so ascending input
            // walks the whole list every time. Descending input stops at
            // the head: a 10k-Service restore took 1.6 s instead of 2.0 s
            // on legacy, and a 2k-Service one 2.4 s instead of 6.6 s on nft.
            let mut declared: Vec<&String> = part
                .write
                .iter()
                .map(|c| &c.name)
                .chain(&part.delete)
                .collect();
            declared.sort_unstable_by(|a, b| b.cmp(a));
            declared.dedup();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_declared_in_descending_order_before_their_rules() {
        let mut p = Payload::default();
        for name in ["KUBE-SEP-AAA", "KUBE-SVC-MMM", "KUBE-SEP-ZZZ"] {
            p.write(Chain {
                table: Table::Nat,
                name: name.into(),
                rules: vec![format!("-A {name} -j RETURN")],
            });
        }
        p.delete(Table::Nat, "KUBE-SEP-BBB".into());
        let text = p.render();
        let declared: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(
            declared,
            [
                ":KUBE-SVC-MMM - [0:0]",
                ":KUBE-SEP-ZZZ - [0:0]",
                ":KUBE-SEP-BBB - [0:0]",
                ":KUBE-SEP-AAA - [0:0]"
            ]
        );
        // Rules keep the order they were written in; deletions come last.
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules[0], "-A KUBE-SEP-AAA -j RETURN");
        assert!(text.ends_with("-X KUBE-SEP-BBB\nCOMMIT\n"), "{text}");
    }
}
