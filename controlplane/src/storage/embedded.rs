//! The embedded store: one redb file under the data dir.
//!
//! Why redb: pure Rust (no C toolchain, no second build system), ACID with
//! copy-on-write B-trees, crash-safe by default (a commit returns only
//! after fsync, so a kill -9 loses no acknowledged write), a stable file
//! format, and actively maintained. sled's on-disk format was never
//! declared stable; SQLite or RocksDB would add a C build for a store
//! holding thousands, not billions, of keys.
//!
//! Layout: table `kv` maps key → revision (8 bytes LE) ++ value; table
//! `expiry` maps key → deadline (ms since the epoch); table `meta` holds
//! the store's revision. Writers are serialized by one mutex held across
//! commit and publish, so events reach watchers in revision order. Recent
//! events stay in a bounded ring for watches that resume; a watch from
//! before the ring (or from before this process opened the file) gets
//! [`Error::Compacted`] and relists.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use super::{Precondition, RawEvent, RawWatch, Storage, Stored, Write, WriteError};
use crate::api::{Error, Expiry, Result};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const EXPIRY: TableDefinition<&str, u64> = TableDefinition::new("expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// Events kept for watches that resume from a recent revision.
const RING: usize = 2048;
/// Events a live watcher may lag behind before it is told to relist.
const LAG: usize = 1024;
/// How often expired keys are looked for.
const REAP_EVERY: Duration = Duration::from_millis(250);
/// redb's page cache: the store holds thousands of small objects.
const CACHE_BYTES: usize = 16 << 20;

/// The database file inside the data dir.
pub const FILE_NAME: &str = "store.redb";

struct Events {
    ring: VecDeque<RawEvent>,
    /// The oldest revision a watch may start from.
    oldest: u64,
    tx: broadcast::Sender<RawEvent>,
}

/// The embedded store. Cloning shares it.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Held across each write's commit and publish.
    events: Mutex<Events>,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn split(raw: &[u8]) -> (u64, Vec<u8>) {
    let (rev, value) = raw.split_at(raw.len().min(8));
    let mut b = [0u8; 8];
    b[..rev.len()].copy_from_slice(rev);
    (u64::from_le_bytes(b), value.to_vec())
}

fn join(rev: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// The store's revision as `meta` holds it (0 for a new store).
fn revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, redb::StorageError> {
    Ok(meta.get(REVISION)?.map_or(0, |g| g.value()))
}

/// Advances the store's revision inside a write transaction.
fn next_revision(meta: &mut redb::Table<&str, u64>) -> Result<u64, redb::StorageError> {
    let rev = revision(meta)? + 1;
    meta.insert(REVISION, rev)?;
    Ok(rev)
}

fn now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The end of a prefix range: the prefix with its last byte incremented
/// (keys are ASCII paths ending in `/`).
fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_string();
    if let Some(last) = s.pop() {
        s.push(char::from_u32(last as u32 + 1).unwrap_or(char::MAX));
    } else {
        s.push(char::MAX);
    }
    s
}

impl Embedded {
    /// Opens (or creates) the store in `dir` and starts expiring leases.
    /// Must be called inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Embedded> {
        std::fs::create_dir_all(dir).map_err(|e| io("create data dir", dir, e))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| io("open store", &path, e))?;
        let revision = {
            let txn = db.begin_write().map_err(|e| io("open store", &path, e))?;
            let rev = {
                // Opening creates the tables, so readers never miss them.
                txn.open_table(KV).map_err(|e| io("open store", &path, e))?;
                txn.open_table(EXPIRY)
                    .map_err(|e| io("open store", &path, e))?;
                let meta = txn
                    .open_table(META)
                    .map_err(|e| io("open store", &path, e))?;
                revision(&meta).map_err(|e| io("open store", &path, e))?
            };
            txn.commit().map_err(|e| io("open store", &path, e))?;
            rev
        };
        let (tx, _) = broadcast::channel(LAG);
        let store = Embedded {
            inner: Arc::new(Inner {
                db,
                path,
                events: Mutex::new(Events {
                    ring: VecDeque::new(),
                    oldest: revision,
                    tx,
                }),
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Embedded { inner };
                let r = tokio::task::spawn_blocking(move || store.reap_blocking()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "expiring leases");
                }
            }
        });
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        io(what, &self.inner.path, e)
    }

    fn events(&self) -> MutexGuard<'_, Events> {
        // A panic while publishing leaves the ring consistent (pushes are
        // single operations), so a poisoned lock is still usable.
        self.inner.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(events: &mut Events, ev: Vec<RawEvent>) {
        for e in ev {
            if events.ring.len() == RING {
                if let Some(old) = events.ring.pop_front() {
                    events.oldest = old.revision();
                }
            }
            events.ring.push_back(e.clone());
            // No receivers is fine: nobody is watching.
            let _ = events.tx.send(e);
        }
    }

    fn get_blocking(&self, key: &str) -> Result<Option<Stored>> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| self.err("read", e))?;
        let t = txn.open_table(KV).map_err(|e| self.err("read", e))?;
        let got = t.get(key).map_err(|e| self.err("read", e))?;
        Ok(got.map(|g| {
            let (revision, value) = split(g.value());
            Stored {
                key: key.to_string(),
                value,
                revision,
            }
        }))
    }

    fn list_blocking(&self, prefix: &str) -> Result<(Vec<Stored>, u64)> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| self.err("list", e))?;
        let t = txn.open_table(KV).map_err(|e| self.err("list", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("list", e))?;
        let rev = revision(&meta).map_err(|e| self.err("list", e))?;
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for item in t
            .range::<&str>(prefix..end.as_str())
            .map_err(|e| self.err("list", e))?
        {
            let (k, v) = item.map_err(|e| self.err("list", e))?;
            let (revision, value) = split(v.value());
            out.push(Stored {
                key: k.value().to_string(),
                value,
                revision,
            });
        }
        Ok((out, rev))
    }

    fn write_blocking(&self, w: Write) -> Result<u64, WriteError> {
        let mut events = self.events();
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| self.err("write", e))?;
        let (rev, created) = {
            let mut kv = txn.open_table(KV).map_err(|e| self.err("write", e))?;
            let mut exp = txn.open_table(EXPIRY).map_err(|e| self.err("write", e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            let current = kv
                .get(w.key.as_str())
                .map_err(|e| self.err("write", e))?
                .map(|g| split(g.value()).0);
            match (w.precondition, current) {
                (Precondition::Absent, Some(_)) => return Err(WriteError::Exists),
                (Precondition::Exists | Precondition::Revision(_), None) => {
                    return Err(WriteError::NotFound)
                }
                (Precondition::Revision(want), Some(cur)) if want != cur => {
                    return Err(WriteError::RevisionMismatch { current: cur })
                }
                _ => {}
            }
            for c in &w.claim {
                if let Some(owner) = kv.get(c.as_str()).map_err(|e| self.err("write", e))? {
                    let owner = String::from_utf8_lossy(&split(owner.value()).1).into_owned();
                    if owner != w.key {
                        return Err(WriteError::ClaimTaken {
                            claim: c.clone(),
                            owner,
                        });
                    }
                }
            }
            let rev = next_revision(&mut meta).map_err(|e| self.err("write", e))?;
            kv.insert(w.key.as_str(), join(rev, &w.value).as_slice())
                .map_err(|e| self.err("write", e))?;
            for c in &w.claim {
                kv.insert(c.as_str(), join(rev, w.key.as_bytes()).as_slice())
                    .map_err(|e| self.err("write", e))?;
            }
            for c in &w.release {
                kv.remove(c.as_str()).map_err(|e| self.err("write", e))?;
            }
            match w.expiry {
                Expiry::Keep => {}
                Expiry::Never => {
                    exp.remove(w.key.as_str())
                        .map_err(|e| self.err("write", e))?;
                }
                Expiry::After(ttl) => {
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    exp.insert(w.key.as_str(), now_ms().saturating_add(ms))
                        .map_err(|e| self.err("write", e))?;
                }
            }
            (rev, current.is_none())
        };
        txn.commit().map_err(|e| self.err("commit", e))?;
        let ev = RawEvent::Put {
            stored: Stored {
                key: w.key,
                value: w.value,
                revision: rev,
            },
            created,
        };
        Self::publish(&mut events, vec![ev]);
        Ok(rev)
    }

    /// Deletes `keys` (each only if at the given revision) in one
    /// transaction; returns the deleted values and the revision.
    fn delete_blocking(
        &self,
        keys: &[(String, Option<u64>)],
        release: &[String],
    ) -> Result<(Vec<Stored>, u64), WriteError> {
        let mut events = self.events();
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| self.err("delete", e))?;
        let (gone, rev) = {
            let mut kv = txn.open_table(KV).map_err(|e| self.err("delete", e))?;
            let mut exp = txn.open_table(EXPIRY).map_err(|e| self.err("delete", e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err("delete", e))?;
            let mut gone = Vec::new();
            for (key, want) in keys {
                let Some(cur) = kv.get(key.as_str()).map_err(|e| self.err("delete", e))? else {
                    return Err(WriteError::NotFound);
                };
                let (revision, value) = split(cur.value());
                if matches!(want, Some(w) if *w != revision) {
                    return Err(WriteError::RevisionMismatch { current: revision });
                }
                gone.push(Stored {
                    key: key.clone(),
                    value,
                    revision,
                });
            }
            let rev = next_revision(&mut meta).map_err(|e| self.err("delete", e))?;
            for s in &gone {
                kv.remove(s.key.as_str())
                    .map_err(|e| self.err("delete", e))?;
                exp.remove(s.key.as_str())
                    .map_err(|e| self.err("delete", e))?;
            }
            for c in release {
                kv.remove(c.as_str()).map_err(|e| self.err("delete", e))?;
            }
            (gone, rev)
        };
        txn.commit().map_err(|e| self.err("commit", e))?;
        let evs = gone
            .iter()
            .map(|s| RawEvent::Delete {
                last: s.clone(),
                revision: rev,
            })
            .collect();
        Self::publish(&mut events, evs);
        Ok((gone, rev))
    }

    /// Deletes every key whose deadline has passed.
    fn reap_blocking(&self) -> Result<()> {
        let now = now_ms();
        let due: Vec<(String, Option<u64>)> = {
            let txn = self
                .inner
                .db
                .begin_read()
                .map_err(|e| self.err("reap", e))?;
            let t = txn.open_table(EXPIRY).map_err(|e| self.err("reap", e))?;
            let mut due = Vec::new();
            for item in t.iter().map_err(|e| self.err("reap", e))? {
                let (k, v) = item.map_err(|e| self.err("reap", e))?;
                if v.value() <= now {
                    due.push((k.value().to_string(), None));
                }
            }
            due
        };
        for key in due {
            // One by one: a key renewed or deleted meanwhile is skipped.
            let still_due = {
                let txn = self
                    .inner
                    .db
                    .begin_read()
                    .map_err(|e| self.err("reap", e))?;
                let t = txn.open_table(EXPIRY).map_err(|e| self.err("reap", e))?;
                t.get(key.0.as_str())
                    .map_err(|e| self.err("reap", e))?
                    .is_some_and(|d| d.value() <= now_ms())
            };
            if !still_due {
                continue;
            }
            match self.delete_blocking(std::slice::from_ref(&key), &[]) {
                Ok(_) | Err(WriteError::NotFound) => {
                    tracing::debug!(key = %key.0, "lease expired");
                }
                Err(WriteError::Other(e)) => return Err(e),
                Err(e) => return Err(Error::Internal(format!("expire {}: {e}", key.0))),
            }
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Embedded) -> T + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))
    }
}

#[async_trait]
impl Storage for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let key = key.to_string();
        self.blocking(move |s| s.get_blocking(&key)).await?
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64)> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list_blocking(&prefix)).await?
    }

    async fn write(&self, w: Write) -> Result<u64, WriteError> {
        self.blocking(move |s| s.write_blocking(w)).await?
    }

    async fn delete(
        &self,
        key: &str,
        revision: Option<u64>,
        release: Vec<String>,
    ) -> Result<(Stored, u64), WriteError> {
        let keys = vec![(key.to_string(), revision)];
        let (mut gone, rev) = self
            .blocking(move |s| s.delete_blocking(&keys, &release))
            .await??;
        let last = gone.pop().ok_or(WriteError::NotFound)?;
        Ok((last, rev))
    }

    async fn watch(&self, prefix: &str, revision: u64) -> Result<RawWatch> {
        let (backlog, mut rx) = {
            let events = self.events();
            if revision < events.oldest {
                return Err(Error::Compacted {
                    requested: revision,
                    oldest: events.oldest,
                });
            }
            let backlog: Vec<RawEvent> = events
                .ring
                .iter()
                .filter(|e| e.revision() > revision && e.key().starts_with(prefix))
                .cloned()
                .collect();
            (backlog, events.tx.subscribe())
        };
        let (tx, out) = mpsc::channel(256);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut seen = revision;
            for e in backlog {
                seen = e.revision();
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(e) => {
                        if e.revision() <= seen || !e.key().starts_with(&prefix) {
                            continue;
                        }
                        seen = e.revision();
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Error::Compacted {
                                requested: seen,
                                oldest: seen + 1,
                            }))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_stop_at_the_next_prefix() {
        assert_eq!(prefix_end("pods/"), "pods0");
        assert!("pods/default/x" < prefix_end("pods/").as_str());
        assert!("podsx" > prefix_end("pods/").as_str());
    }

    #[test]
    fn values_carry_their_revision() {
        let raw = join(42, b"{}");
        assert_eq!(split(&raw), (42, b"{}".to_vec()));
    }
}
