//! Informer caches: a [`Watcher`] per kind keeps a shared map of the
//! objects current, and tells the controllers' handlers of every change
//! (with the object's previous state) so they can queue keys. Controllers
//! read the caches; they never write to them, nor write what they read
//! from them without reading it again (a cache may hold stripped objects).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use controlplane::watcher::{Update, Watcher};
use controlplane::{labels, ControlPlane, Kind, Object, ObjectRef, Scope, WatchEvent};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio::sync::watch;

/// Called with (old, new): `old` is `None` on add, `new` is `None` on delete.
pub type Handler = Box<dyn Fn(Option<&Object>, Option<&Object>) + Send + Sync>;

/// The objects of one kind, as last seen.
#[derive(Clone)]
pub struct Cache {
    objects: Arc<RwLock<BTreeMap<ObjectRef, Object>>>,
    synced: watch::Receiver<bool>,
}

impl Cache {
    /// A cache holding `objects`, already synced (for tests).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Cache {
        let map = objects
            .into_iter()
            .map(|o| (ObjectRef::of(&o), o))
            .collect();
        Cache {
            objects: Arc::new(RwLock::new(map)),
            synced: watch::channel(true).1,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ObjectRef, Object>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One object.
    pub fn get(&self, key: &ObjectRef) -> Option<Object> {
        self.read().get(key).cloned()
    }

    /// The objects in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Object> {
        self.read()
            .values()
            .filter(|o| o.namespace() == namespace)
            .cloned()
            .collect()
    }

    /// The pods in `namespace` (of a Pod cache).
    pub fn pods(&self, namespace: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        let objs = self.in_namespace(namespace).into_iter();
        objs.filter_map(|o| match o {
            Object::Pod(p) => Some(*p),
            _ => None,
        })
        .collect()
    }

    /// The ReplicaSets in `namespace` (of a ReplicaSet cache).
    pub fn replica_sets(&self, namespace: &str) -> Vec<k8s_openapi::api::apps::v1::ReplicaSet> {
        let objs = self.in_namespace(namespace).into_iter();
        objs.filter_map(|o| match o {
            Object::ReplicaSet(rs) => Some(*rs),
            _ => None,
        })
        .collect()
    }

    /// The controllers an object's change concerns: its controller of
    /// `kind` (by its controller reference), or for an orphan every object
    /// of this cache in its namespace whose selector (`selector_of`)
    /// matches its labels.
    pub fn owners_of(
        &self,
        obj: &Object,
        kind: Kind,
        selector_of: fn(&Object) -> Option<&LabelSelector>,
    ) -> Vec<ObjectRef> {
        let meta = obj.meta();
        if let Some(r) = crate::pods::controller_of(meta) {
            return if r.kind == kind.name() {
                vec![ObjectRef::new(kind, obj.namespace(), &r.name)]
            } else {
                vec![]
            };
        }
        let empty = Default::default();
        let l = meta.labels.as_ref().unwrap_or(&empty);
        self.in_namespace(obj.namespace())
            .iter()
            .filter(|o| {
                selector_of(o).is_some_and(|s| !labels::is_empty(s) && labels::matches(s, l))
            })
            .map(ObjectRef::of)
            .collect()
    }

    /// Every object.
    pub fn all(&self) -> Vec<Object> {
        self.read().values().cloned().collect()
    }

    /// Waits for the first full list.
    pub async fn wait_synced(&self) {
        let mut s = self.synced.clone();
        let _ = s.wait_for(|v| *v).await;
    }
}

/// Feeds a [`Cache`] from a watch and calls the handlers on every change.
pub struct Informer {
    watcher: Watcher,
    objects: Arc<RwLock<BTreeMap<ObjectRef, Object>>>,
    synced: watch::Sender<bool>,
    handlers: Vec<Handler>,
}

impl Informer {
    /// An informer over every object of `kind`, and its cache.
    pub fn new(cp: Arc<dyn ControlPlane>, kind: Kind) -> (Informer, Cache) {
        let objects = Arc::new(RwLock::new(BTreeMap::new()));
        let (tx, rx) = watch::channel(false);
        let informer = Informer {
            watcher: Watcher::new(cp, Scope::all(kind)),
            objects: objects.clone(),
            synced: tx,
            handlers: Vec::new(),
        };
        (
            informer,
            Cache {
                objects,
                synced: rx,
            },
        )
    }

    /// Passes every object through `f` before it is cached (see
    /// [`Watcher::with_transform`]): the cache then holds what `f` keeps,
    /// and nothing read from it may be written back whole.
    pub fn with_transform(mut self, f: fn(&mut Object)) -> Informer {
        self.watcher = self.watcher.with_transform(f);
        self
    }

    /// Adds a handler of changes.
    pub fn on_change(&mut self, h: Handler) {
        self.handlers.push(h);
    }

    /// Runs until the task is aborted.
    pub async fn run(mut self) {
        loop {
            match self.watcher.next().await {
                Update::Synced => {
                    self.synced.send_replace(true);
                }
                Update::Event(ev) => {
                    let key = ObjectRef::of(ev.object());
                    let (old, new) = {
                        let mut m = self.objects.write().unwrap_or_else(|e| e.into_inner());
                        match ev {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                (m.insert(key, o.clone()), Some(o))
                            }
                            WatchEvent::Deleted(o) => (m.remove(&key).or(Some(o)), None),
                        }
                    };
                    for h in &self.handlers {
                        h(old.as_ref(), new.as_ref());
                    }
                }
            }
        }
    }
}
