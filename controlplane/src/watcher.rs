//! List + watch that survives falling behind: the store of what a consumer
//! knows, kept current from a watch, and re-synchronised by a relist whose
//! difference from the store is delivered as ordinary events. Consumers
//! (pod workers, the proxy, the overlay) therefore never hold a silently
//! stale view: after a compaction, a lagging watch or a backend outage
//! they receive exactly the Added/Modified/Deleted events that bring them
//! to the listed state, then `Synced`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{ControlPlane, ObjectRef, Scope, Watch, WatchEvent};
use crate::objects::Object;

/// What a watch transform keeps of an object's metadata beyond the
/// identity the watcher needs (name, namespace, `resourceVersion`): each
/// field set to `true` is kept, everything else (annotations, managed
/// fields, generation...) is dropped. One place for every transform
/// (DNS, network policy, the proxy, the controllers), so none forgets the
/// identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepMeta {
    pub uid: bool,
    pub labels: bool,
    pub owner_references: bool,
    pub creation_timestamp: bool,
    pub deletion_timestamp: bool,
    pub finalizers: bool,
}

impl KeepMeta {
    /// Name, namespace and `resourceVersion` only.
    pub const IDENTITY: KeepMeta = KeepMeta {
        uid: false,
        labels: false,
        owner_references: false,
        creation_timestamp: false,
        deletion_timestamp: false,
        finalizers: false,
    };

    /// Replaces `meta` with its identity and the fields chosen.
    pub fn strip(self, meta: &mut ObjectMeta) {
        let m = std::mem::take(meta);
        *meta = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            uid: m.uid.filter(|_| self.uid),
            labels: m.labels.filter(|_| self.labels),
            owner_references: m.owner_references.filter(|_| self.owner_references),
            creation_timestamp: m.creation_timestamp.filter(|_| self.creation_timestamp),
            deletion_timestamp: m.deletion_timestamp.filter(|_| self.deletion_timestamp),
            finalizers: m.finalizers.filter(|_| self.finalizers),
            ..ObjectMeta::default()
        };
    }
}

/// What a watcher reports. (Events are moved straight to the consumer;
/// boxing them would only add an allocation per event.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Event(WatchEvent),
    /// The store matches a full list (after the first list and each relist).
    Synced,
}

/// A reflector over one scope.
pub struct Watcher {
    cp: Arc<dyn ControlPlane>,
    scope: Scope,
    known: BTreeMap<ObjectRef, Object>,
    revision: u64,
    watch: Option<Watch>,
    pending: VecDeque<Update>,
    backoff: Duration,
    relists: u64,
    /// Applied to every object before it is stored or delivered.
    transform: Option<fn(&mut Object)>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Watcher {
    pub fn new(cp: Arc<dyn ControlPlane>, scope: Scope) -> Watcher {
        Watcher {
            cp,
            scope,
            known: BTreeMap::new(),
            revision: 0,
            watch: None,
            pending: VecDeque::new(),
            backoff: Duration::from_millis(100),
            relists: 0,
            transform: None,
        }
    }

    /// Passes every object through `f` before it is stored or delivered
    /// (client-go's informer transform): a consumer that reads a few
    /// fields of many objects keeps only those. `f` must keep
    /// `metadata.resourceVersion`, name and namespace, and must be a pure
    /// function of the object, so that a relist compares like with like.
    pub fn with_transform(mut self, f: fn(&mut Object)) -> Watcher {
        self.transform = Some(f);
        self
    }

    /// The objects known now, keyed by reference.
    pub fn store(&self) -> &BTreeMap<ObjectRef, Object> {
        &self.known
    }

    /// How many times the watcher had to list (the first list included).
    pub fn relists(&self) -> u64 {
        self.relists
    }

    /// The next update. Never fails: backend errors are logged and retried
    /// with back-off, and a watch that cannot continue becomes a relist.
    pub async fn next(&mut self) -> Update {
        loop {
            if let Some(u) = self.pending.pop_front() {
                return u;
            }
            let Some(watch) = self.watch.as_mut() else {
                self.relist().await;
                continue;
            };
            match watch.next().await {
                Some(Ok(mut ev)) => {
                    if let Some(f) = self.transform {
                        f(ev.object_mut());
                    }
                    if let Some(ev) = self.apply(ev) {
                        return Update::Event(ev);
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(scope = ?self.scope, error = %e, "watch ended; relisting");
                    self.watch = None;
                }
                None => {
                    tracing::info!(scope = ?self.scope, "watch closed; relisting");
                    self.watch = None;
                }
            }
        }
    }

    /// Folds one event into the store; drops events that are older than
    /// what the store holds (a relist may already have covered them).
    fn apply(&mut self, ev: WatchEvent) -> Option<WatchEvent> {
        let obj = ev.object();
        let key = ObjectRef::of(obj);
        let r = rev(obj);
        if r > self.revision {
            self.revision = r;
        }
        match &ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                if self.known.get(&key).is_some_and(|k| rev(k) >= r) {
                    return None;
                }
                let was = self.known.insert(key, o.clone());
                Some(match (was, ev) {
                    (None, WatchEvent::Modified(o)) => WatchEvent::Added(o),
                    (Some(_), WatchEvent::Added(o)) => WatchEvent::Modified(o),
                    (_, ev) => ev,
                })
            }
            WatchEvent::Deleted(_) => self.known.remove(&key).map(|_| ev),
        }
    }

    /// Lists, queues the difference from the store, and starts watching
    /// from the list's revision. Retries with back-off until it works.
    async fn relist(&mut self) {
        loop {
            let attempt = async {
                let list = self.cp.list(&self.scope).await?;
                let watch = self.cp.watch(&self.scope, list.revision).await?;
                Ok::<_, crate::api::Error>((list, watch))
            };
            match attempt.await {
                Ok((mut list, watch)) => {
                    if let Some(f) = self.transform {
                        list.items.iter_mut().for_each(f);
                    }
                    self.relists += 1;
                    self.backoff = Duration::from_millis(100);
                    let events = diff(&self.known, &list.items);
                    self.known = list
                        .items
                        .into_iter()
                        .map(|o| (ObjectRef::of(&o), o))
                        .collect();
                    self.revision = list.revision;
                    self.pending.extend(events.into_iter().map(Update::Event));
                    self.pending.push_back(Update::Synced);
                    self.watch = Some(watch);
                    return;
                }
                Err(e) => {
                    tracing::warn!(scope = ?self.scope, error = %e, retry_in = ?self.backoff, "list failed");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn rev(o: &Object) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The events that turn `known` into `listed`: Added for new objects,
/// Modified for changed revisions, Deleted (with the last known state)
/// for objects no longer listed.
pub fn diff(known: &BTreeMap<ObjectRef, Object>, listed: &[Object]) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for o in listed {
        let key = ObjectRef::of(o);
        match known.get(&key) {
            None => out.push(WatchEvent::Added(o.clone())),
            Some(k) if rev(k) != rev(o) || k != o => out.push(WatchEvent::Modified(o.clone())),
            Some(_) => {}
        }
        seen.insert(key);
    }
    for (key, o) in known {
        if !seen.contains(key) {
            out.push(WatchEvent::Deleted(o.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(name: &str, rv: u64) -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()}}))
        .unwrap()
    }

    #[test]
    fn keep_meta_keeps_the_identity_and_only_the_fields_chosen() {
        let mut whole = ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            resource_version: Some("7".into()),
            uid: Some("u".into()),
            labels: Some([("a".to_string(), "b".to_string())].into()),
            annotations: Some([("big".to_string(), "x".repeat(100))].into()),
            finalizers: Some(vec!["f".into()]),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        let mut id = whole.clone();
        KeepMeta::IDENTITY.strip(&mut id);
        assert_eq!(
            id,
            ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            }
        );
        let keep = KeepMeta {
            uid: true,
            labels: true,
            ..KeepMeta::IDENTITY
        };
        keep.strip(&mut whole);
        assert_eq!(whole.uid.as_deref(), Some("u"));
        assert!(whole.labels.is_some() && whole.resource_version.is_some());
        assert!(whole.annotations.is_none() && whole.finalizers.is_none());
        assert_eq!(whole.generation, None);
    }

    #[test]
    fn a_relist_is_delivered_as_a_diff() {
        let known: BTreeMap<_, _> = [cm("same", 3), cm("changed", 4), cm("gone", 5)]
            .into_iter()
            .map(|o| (ObjectRef::of(&o), o))
            .collect();
        let listed = [cm("same", 3), cm("changed", 9), cm("new", 10)];
        let ev = diff(&known, &listed);
        assert_eq!(
            ev,
            vec![
                WatchEvent::Modified(cm("changed", 9)),
                WatchEvent::Added(cm("new", 10)),
                WatchEvent::Deleted(cm("gone", 5)),
            ]
        );
        assert!(diff(&known, &[cm("changed", 4), cm("gone", 5), cm("same", 3)]).is_empty());
    }
}
