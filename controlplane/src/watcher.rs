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

/// What a watcher keeps of each object it knows.
enum Known {
    /// The objects themselves (after the transform): [`Watcher::store`].
    Objects(BTreeMap<ObjectRef, Object>),
    /// Only each object's resourceVersion, for a consumer that keeps its
    /// own projection of the events ([`Watcher::revisions_only`]).
    Revisions(BTreeMap<ObjectRef, u64>),
}

impl Known {
    fn revision(&self, key: &ObjectRef) -> Option<u64> {
        match self {
            Known::Objects(m) => m.get(key).map(rev),
            Known::Revisions(m) => m.get(key).copied(),
        }
    }

    /// Stores `o`; whether `key` was known before.
    fn insert(&mut self, key: ObjectRef, o: &Object) -> bool {
        match self {
            Known::Objects(m) => m.insert(key, o.clone()).is_some(),
            Known::Revisions(m) => m.insert(key, rev(o)).is_some(),
        }
    }

    fn remove(&mut self, key: &ObjectRef) -> bool {
        match self {
            Known::Objects(m) => m.remove(key).is_some(),
            Known::Revisions(m) => m.remove(key).is_some(),
        }
    }

    /// Replaces everything with `listed`; returns the events that turn
    /// what was known into it.
    fn replace(&mut self, listed: Vec<Object>) -> Vec<WatchEvent> {
        match self {
            Known::Objects(m) => {
                let events = diff(m, &listed);
                *m = listed.into_iter().map(|o| (ObjectRef::of(&o), o)).collect();
                events
            }
            Known::Revisions(m) => {
                let mut events = Vec::new();
                let mut now = BTreeMap::new();
                for o in listed {
                    let key = ObjectRef::of(&o);
                    let r = rev(&o);
                    match m.remove(&key) {
                        None => events.push(WatchEvent::Added(o)),
                        Some(was) if was != r => events.push(WatchEvent::Modified(o)),
                        Some(_) => {}
                    }
                    now.insert(key, r);
                }
                // What is left was not listed: gone, known by name alone.
                for (key, r) in std::mem::replace(m, now) {
                    match shell(&key, r) {
                        Some(o) => events.push(WatchEvent::Deleted(o)),
                        None => {
                            tracing::warn!(object = ?key, "watch: cannot report the deletion of an object kept by revision")
                        }
                    }
                }
                events
            }
        }
    }
}

/// An object of `key`'s kind with only its name, namespace and
/// resourceVersion: what a revisions-only watcher knows of an object that
/// went while it was not watching. `None` for kinds whose spec is required.
fn shell(key: &ObjectRef, revision: u64) -> Option<Object> {
    let mut meta = serde_json::json!({"name": key.name, "resourceVersion": revision.to_string()});
    if !key.namespace.is_empty() {
        meta["namespace"] = key.namespace.clone().into();
    }
    Object::from_value(serde_json::json!({
        "apiVersion": key.kind.api_version(),
        "kind": key.kind.name(),
        "metadata": meta,
    }))
    .ok()
}

/// A reflector over one scope.
pub struct Watcher {
    cp: Arc<dyn ControlPlane>,
    scope: Scope,
    known: Known,
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
            known: Known::Objects(BTreeMap::new()),
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

    /// Keeps only each object's resourceVersion, not the object: for a
    /// consumer that keeps its own (smaller) projection of every event, as
    /// kube-proxy's change trackers do. [`Watcher::store`] is then empty;
    /// an object that went while the watch was down is reported Deleted
    /// with only its name, namespace and resourceVersion.
    pub fn revisions_only(mut self) -> Watcher {
        self.known = Known::Revisions(BTreeMap::new());
        self
    }

    /// The objects known now, keyed by reference (empty for a watcher
    /// made [`Watcher::revisions_only`]).
    pub fn store(&self) -> &BTreeMap<ObjectRef, Object> {
        static EMPTY: BTreeMap<ObjectRef, Object> = BTreeMap::new();
        match &self.known {
            Known::Objects(m) => m,
            Known::Revisions(_) => &EMPTY,
        }
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
                if self.known.revision(&key).is_some_and(|k| k >= r) {
                    return None;
                }
                let was = self.known.insert(key, o);
                Some(match (was, ev) {
                    (false, WatchEvent::Modified(o)) => WatchEvent::Added(o),
                    (true, WatchEvent::Added(o)) => WatchEvent::Modified(o),
                    (_, ev) => ev,
                })
            }
            WatchEvent::Deleted(_) => self.known.remove(&key).then_some(ev),
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
                    let events = self.known.replace(list.items);
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
    use crate::objects::Kind;
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

    #[test]
    fn a_revisions_only_store_relists_by_revision_and_reports_the_gone_by_name() {
        let mut known = Known::Revisions(BTreeMap::new());
        assert!(!known.insert(ObjectRef::of(&cm("same", 3)), &cm("same", 3)));
        for o in [cm("changed", 4), cm("gone", 5)] {
            known.insert(ObjectRef::of(&o), &o);
        }
        assert_eq!(known.revision(&ObjectRef::of(&cm("changed", 0))), Some(4));
        let ev = known.replace(vec![cm("same", 3), cm("changed", 9), cm("new", 10)]);
        assert_eq!(
            ev,
            vec![
                WatchEvent::Modified(cm("changed", 9)),
                WatchEvent::Added(cm("new", 10)),
                WatchEvent::Deleted(cm("gone", 5)),
            ],
            "the deleted object is a shell: name, namespace, resourceVersion"
        );
        assert!(known
            .replace(vec![cm("changed", 9), cm("new", 10), cm("same", 3)])
            .is_empty());
        assert!(known.remove(&ObjectRef::of(&cm("new", 0))));
        assert!(!known.remove(&ObjectRef::of(&cm("new", 0))));
    }

    #[test]
    fn shells_exist_for_the_kinds_a_projection_watches() {
        for kind in [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Pod,
            Kind::Node,
            Kind::ConfigMap,
        ] {
            let ns = if kind.namespaced() { "ns" } else { "" };
            let key = ObjectRef::new(kind, ns, "x");
            let o = shell(&key, 7).unwrap_or_else(|| panic!("{kind}: no shell"));
            assert_eq!((ObjectRef::of(&o), rev(&o)), (key, 7));
        }
    }
}
