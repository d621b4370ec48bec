//! A table one component owns whole and rebuilds in one transaction when
//! it must: after its first sync, a refused transaction, or when the
//! table it built is gone or was replaced (someone's `nft flush
//! ruleset`), which its handle tells. Shared by the proxy and netpol.

use super::batch::Batch;
use super::model::Table;
use super::{NfTables, Result};

/// What the owner knows of its table.
#[derive(Debug, Clone)]
pub struct OwnedTable {
    table: Table,
    /// The table's handle after the last full apply.
    handle: Option<u64>,
    need_full: bool,
}

impl OwnedTable {
    /// `table`, not built yet: the first apply must be full.
    pub fn new(table: Table) -> OwnedTable {
        OwnedTable {
            table,
            handle: None,
            need_full: true,
        }
    }

    /// Whether the next apply must rebuild the table.
    pub fn need_full(&self) -> bool {
        self.need_full
    }

    /// The next apply must rebuild the table.
    pub fn set_need_full(&mut self) {
        self.need_full = true;
    }

    /// Applies `batch` (a rebuild of the whole table when `full`) unless
    /// it is empty; returns whether it sent anything. A refused batch
    /// makes the next apply full; a full one records the new handle.
    pub fn apply(&mut self, nft: &dyn NfTables, batch: &Batch, full: bool) -> Result<bool> {
        let applied = !batch.is_empty();
        if applied {
            if let Err(e) = nft.apply(batch) {
                self.need_full = true;
                return Err(e);
            }
        }
        if full {
            self.handle = nft.table(&self.table)?.map(|t| t.handle);
            self.need_full = false;
        }
        Ok(applied)
    }

    /// Whether the table is the one the last full apply built; if not
    /// (deleted, flushed with the ruleset, recreated), the next apply is
    /// full.
    pub fn check(&mut self, nft: &dyn NfTables) -> Canary {
        let now = nft.table(&self.table).ok().flatten().map(|t| t.handle);
        if now.is_some() && now == self.handle {
            return Canary::Intact;
        }
        if self.need_full {
            return Canary::Lost;
        }
        self.need_full = true;
        Canary::NewlyLost
    }
}

/// What [`OwnedTable::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// The table is the one the last full apply built.
    Intact,
    /// It is not, and a full apply was already due.
    Lost,
    /// It is not, noticed now (the owner logs it).
    NewlyLost,
}
