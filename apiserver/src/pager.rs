//! Chunked lists (`limit` and `continue`), with kube-apiserver's promise:
//! every page of one list comes from one consistent snapshot, at the first
//! page's resourceVersion.
//!
//! kube-apiserver keeps that promise by reading etcd at the first page's
//! revision until compaction (5 minutes by default) makes the token
//! expire. Our stores do not all keep history (the embedded one keeps
//! none), so the first page's result is kept here instead: the rest of a
//! list is served from memory, bounded in count and in items, and a token
//! older than [`TTL`] or evicted answers 410 `Expired`, as a compacted one
//! does, so client-go's pager starts over with a full list.
//!
//! A token names its snapshot and the request it belongs to (path and
//! selectors): it continues only the same list, so the authorization of
//! the continued request is the authorization of the list.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::Object;

/// How long a continue token stays valid (kube-apiserver's compaction
/// interval).
pub const TTL: Duration = Duration::from_secs(300);
/// At most this many lists are kept for continuation...
const MAX_SNAPSHOTS: usize = 32;
/// ...holding at most this many objects together.
const MAX_ITEMS: usize = 200_000;

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Object>,
    /// The snapshot's revision (the first page's resourceVersion).
    pub revision: u64,
    /// The token for the next page, when one remains.
    pub next: Option<String>,
    /// How many objects follow this page.
    pub remaining: usize,
}

/// Why a continue token cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a token this server wrote, or one for another list.
    Invalid,
    /// Expired or evicted: the client must start over.
    Expired,
}

struct Snapshot {
    id: u64,
    /// The request this list answers (path and selectors).
    request: String,
    items: Arc<Vec<Object>>,
    revision: u64,
    at: Instant,
}

/// The lists kept for continuation.
pub struct Pager {
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u64,
    /// Oldest first.
    snapshots: VecDeque<Snapshot>,
}

impl Default for Pager {
    fn default() -> Pager {
        Pager {
            inner: Mutex::new(Inner {
                next_id: seed(),
                snapshots: VecDeque::new(),
            }),
        }
    }
}

/// A random start for ids, so tokens of an earlier run of the server are
/// not mistaken for this one's.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() >> 16
}

impl Pager {
    /// The first page of `items` (a fresh list at `revision`) for
    /// `request`: all of it without a limit, else `limit` objects and a
    /// token for the rest.
    pub fn first(
        &self,
        request: &str,
        items: Vec<Object>,
        revision: u64,
        limit: Option<usize>,
    ) -> Page {
        let limit = match limit {
            Some(l) if l > 0 && l < items.len() => l,
            _ => {
                return Page {
                    items,
                    revision,
                    next: None,
                    remaining: 0,
                }
            }
        };
        let items = Arc::new(items);
        let page = items[..limit].to_vec();
        let remaining = items.len() - limit;
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.snapshots.push_back(Snapshot {
            id,
            request: request.to_string(),
            items,
            revision,
            at: Instant::now(),
        });
        inner.evict();
        Page {
            items: page,
            revision,
            next: Some(token(id, limit)),
            remaining,
        }
    }

    /// The page after `token` for `request`, `limit` objects long (all
    /// that remain without a limit).
    pub fn next(&self, request: &str, token: &str, limit: Option<usize>) -> Result<Page, Refused> {
        let (id, offset) = parse(token).ok_or(Refused::Invalid)?;
        let mut inner = self.lock();
        inner.evict();
        let snap = inner
            .snapshots
            .iter()
            .find(|s| s.id == id)
            .ok_or(if id < inner.next_id {
                Refused::Expired
            } else {
                Refused::Invalid
            })?;
        if snap.request != request || offset > snap.items.len() {
            return Err(Refused::Invalid);
        }
        let end = match limit {
            Some(l) if l > 0 => (offset + l).min(snap.items.len()),
            _ => snap.items.len(),
        };
        let page = Page {
            items: snap.items[offset..end].to_vec(),
            revision: snap.revision,
            next: (end < snap.items.len()).then(|| self::token(id, end)),
            remaining: snap.items.len() - end,
        };
        if page.next.is_none() {
            inner.snapshots.retain(|s| s.id != id);
        }
        Ok(page)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Drops expired snapshots, then the oldest until the bounds hold.
    fn evict(&mut self) {
        self.snapshots.retain(|s| s.at.elapsed() < TTL);
        let mut total: usize = self.snapshots.iter().map(|s| s.items.len()).sum();
        while self.snapshots.len() > MAX_SNAPSHOTS
            || (total > MAX_ITEMS && self.snapshots.len() > 1)
        {
            if let Some(s) = self.snapshots.pop_front() {
                total -= s.items.len();
            }
        }
    }
}

fn token(id: u64, offset: usize) -> String {
    format!("{id:x}-{offset:x}")
}

fn parse(token: &str) -> Option<(u64, usize)> {
    let (id, offset) = token.split_once('-')?;
    Some((
        u64::from_str_radix(id, 16).ok()?,
        usize::from_str_radix(offset, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cms(n: usize) -> Vec<Object> {
        (0..n)
            .map(|i| {
                Object::from_value(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("c{i:03}"), "namespace": "default"}}))
                .unwrap()
            })
            .collect()
    }

    fn names(p: &Page) -> Vec<String> {
        p.items.iter().map(|o| o.name().to_string()).collect()
    }

    #[test]
    fn pages_walk_one_snapshot_to_the_end() {
        let pager = Pager::default();
        let first = pager.first("/api/v1/configmaps", cms(5), 7, Some(2));
        assert_eq!(names(&first), ["c000", "c001"]);
        assert_eq!((first.revision, first.remaining), (7, 3));
        let second = pager
            .next(
                "/api/v1/configmaps",
                first.next.as_deref().unwrap(),
                Some(2),
            )
            .unwrap();
        assert_eq!(names(&second), ["c002", "c003"]);
        assert_eq!((second.revision, second.remaining), (7, 1));
        let last = pager
            .next(
                "/api/v1/configmaps",
                second.next.as_deref().unwrap(),
                Some(2),
            )
            .unwrap();
        assert_eq!(names(&last), ["c004"]);
        assert_eq!((last.next, last.remaining), (None, 0));
        // A finished list is forgotten: its token is expired now.
        assert_eq!(
            pager
                .next(
                    "/api/v1/configmaps",
                    second.next.as_deref().unwrap(),
                    Some(2)
                )
                .unwrap_err(),
            Refused::Expired
        );
    }

    #[test]
    fn a_list_that_fits_keeps_nothing() {
        let pager = Pager::default();
        for limit in [None, Some(0), Some(5), Some(50)] {
            let p = pager.first("/x", cms(5), 1, limit);
            assert_eq!((p.items.len(), p.next, p.remaining), (5, None, 0));
        }
        assert!(pager.lock().snapshots.is_empty());
    }

    #[test]
    fn a_token_continues_only_its_own_list() {
        let pager = Pager::default();
        let first = pager.first("/api/v1/configmaps?labelSelector=a", cms(3), 1, Some(1));
        let t = first.next.unwrap();
        assert_eq!(
            pager.next("/api/v1/secrets", &t, None).unwrap_err(),
            Refused::Invalid
        );
        assert_eq!(
            pager.next("/x", "not-a-token", None).unwrap_err(),
            Refused::Invalid
        );
        assert_eq!(
            pager.next("/x", "ffffffffffffffff-1", None).unwrap_err(),
            Refused::Invalid
        );
        let rest = pager
            .next("/api/v1/configmaps?labelSelector=a", &t, None)
            .unwrap();
        assert_eq!(names(&rest), ["c001", "c002"]);
    }

    #[test]
    fn the_oldest_lists_are_evicted_past_the_bounds() {
        let pager = Pager::default();
        let tokens: Vec<String> = (0..MAX_SNAPSHOTS + 1)
            .map(|_| pager.first("/x", cms(2), 1, Some(1)).next.unwrap())
            .collect();
        assert_eq!(
            pager.next("/x", &tokens[0], None).unwrap_err(),
            Refused::Expired
        );
        assert!(pager.next("/x", &tokens[MAX_SNAPSHOTS], None).is_ok());
    }
}
