//! A work queue of object keys, as client-go's rate-limited queue: a key
//! is queued at most once, is never handed to two workers at once (added
//! while being processed, it comes back after `done`), and failures are
//! retried with a per-key exponential back-off. It holds keys, not objects:
//! `sync` always reads the current state from the caches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::ObjectRef;
use tokio::sync::Notify;

/// First retry delay after a failure; doubled per failure of the same key.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// The longest retry delay.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    queue: VecDeque<ObjectRef>,
    /// Keys waiting in `queue` or to be re-queued after `done`.
    dirty: HashSet<ObjectRef>,
    processing: HashSet<ObjectRef>,
    failures: HashMap<ObjectRef, u32>,
}

/// A cloneable handle on one queue.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the set is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: ObjectRef) {
        let mut s = self.lock();
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: ObjectRef, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` again after its back-off, which doubles with every
    /// failure until [`Queue::forget`].
    pub fn add_rate_limited(&self, key: ObjectRef) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(key, backoff(n));
    }

    /// Clears `key`'s failure count (after a successful sync).
    pub fn forget(&self, key: &ObjectRef) {
        self.lock().failures.remove(key);
    }

    /// The next key to process; call [`Queue::done`] when finished.
    pub async fn get(&self) -> ObjectRef {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; if it was added meanwhile, it is queued.
    pub fn done(&self, key: &ObjectRef) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay before the `n`th retry (n ≥ 1).
fn backoff(n: u32) -> Duration {
    BASE_DELAY
        .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::Kind;

    fn key(n: &str) -> ObjectRef {
        ObjectRef::new(Kind::ReplicaSet, "default", n)
    }

    #[tokio::test]
    async fn a_key_is_queued_once_and_requeued_when_added_while_processing() {
        let q = Queue::new();
        q.add(key("a"));
        q.add(key("a"));
        q.add(key("b"));
        assert_eq!(q.len(), 2);
        let a = q.get().await;
        assert_eq!(a, key("a"));
        q.add(key("a")); // while processing: not handed out twice
        assert_eq!(q.get().await, key("b"));
        assert!(q.is_empty());
        q.done(&a);
        assert_eq!(q.get().await, key("a"));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(3), Duration::from_millis(20));
        assert_eq!(backoff(40), MAX_DELAY);
    }
}
