//! Expectations, as kube's controllers keep them: after creating or
//! deleting pods, a controller waits until its cache shows them before it
//! counts again, so a lagging cache never makes it create twice. An
//! expectation older than [`TIMEOUT`] is dropped (the event was missed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::ObjectRef;
use k8s_openapi::api::core::v1::Pod;

/// How long an unobserved create or delete holds a controller back.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Pending {
    adds: HashSet<String>,
    dels: HashSet<String>,
    since: Instant,
}

/// Pending creates and deletes per controller key.
#[derive(Clone, Default)]
pub struct Expectations {
    map: Arc<Mutex<HashMap<ObjectRef, Pending>>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Pending>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records pods `key` is about to create and delete.
    pub fn expect(&self, key: &ObjectRef, adds: HashSet<String>, dels: HashSet<String>) {
        let mut m = self.lock();
        let p = m.entry(key.clone()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            dels: HashSet::new(),
            since: Instant::now(),
        });
        p.adds.extend(adds);
        p.dels.extend(dels);
        p.since = Instant::now();
    }

    /// A create or delete that failed, or whose result is already seen.
    pub fn observed(&self, key: &ObjectRef, name: &str) {
        if let Some(p) = self.lock().get_mut(key) {
            p.adds.remove(name);
            p.dels.remove(name);
        }
    }

    /// Drops `key`'s expectations (the controller object is gone).
    pub fn forget(&self, key: &ObjectRef) {
        self.lock().remove(key);
    }

    /// Whether every create of `key` shows in `pods` and every delete is
    /// gone or terminating there (clearing what is seen).
    pub fn satisfied(&self, key: &ObjectRef, pods: &[Pod]) -> bool {
        self.satisfied_with(key, |n| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(n))
                .map(|p| p.metadata.deletion_timestamp.is_some())
        })
    }

    /// [`Self::satisfied`] for any kind: `seen(name)` is `None` when the
    /// cache lacks the object, else whether it is being deleted.
    pub fn satisfied_with(&self, key: &ObjectRef, seen: impl Fn(&str) -> Option<bool>) -> bool {
        let mut m = self.lock();
        let Some(p) = m.get_mut(key) else { return true };
        p.adds.retain(|n| seen(n).is_none());
        p.dels.retain(|n| seen(n) == Some(false));
        if (p.adds.is_empty() && p.dels.is_empty()) || p.since.elapsed() > TIMEOUT {
            m.remove(key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::Kind;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(n: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(n.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn creates_and_deletes_hold_back_until_the_cache_shows_them() {
        let e = Expectations::default();
        let k = ObjectRef::new(Kind::ReplicaSet, "default", "web");
        assert!(e.satisfied(&k, &[]));
        e.expect(&k, ["a".to_string()].into(), ["old".to_string()].into());
        assert!(!e.satisfied(&k, &[pod("old")]));
        assert!(!e.satisfied(&k, &[pod("a"), pod("old")]));
        assert!(e.satisfied(&k, &[pod("a")]));
    }
}
