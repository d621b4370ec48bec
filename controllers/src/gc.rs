//! Garbage collection by ownerReferences, as kube's garbage collector does
//! it in the background: a dependent whose owners are all gone (absent, or
//! replaced by an object with another uid) is deleted; one that lost only
//! some owners drops those references. [`orphan_dependents`] is the
//! Orphan propagation: the owner's dependents lose their reference to it.

use std::sync::Arc;
use std::time::Duration;

use controlplane::{ControlPlane, Kind, Object, ObjectRef, Scope};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::informer::Cache;
use crate::{Error, Result};

/// Whether an owner still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Present,
    Absent,
    /// Could not be told (an error): keep the dependent.
    Unknown,
}

/// What to do with a dependent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Every owner is gone.
    Delete,
    /// Drop the references with these uids (some owners remain).
    Release(Vec<String>),
}

/// Decides a dependent's fate from its owners' states.
pub fn verdict(meta: &ObjectMeta, owner: impl Fn(&OwnerReference) -> Owner) -> Verdict {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs.is_empty() || meta.deletion_timestamp.is_some() {
        return Verdict::Keep;
    }
    let states: Vec<Owner> = refs.iter().map(&owner).collect();
    if states.iter().all(|s| *s == Owner::Absent) {
        return Verdict::Delete;
    }
    let gone: Vec<String> = refs
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == Owner::Absent)
        .map(|(r, _)| r.uid.clone())
        .collect();
    if gone.is_empty() {
        Verdict::Keep
    } else {
        Verdict::Release(gone)
    }
}

/// The kind an owner reference names, if knode serves it.
fn owner_kind(r: &OwnerReference) -> Option<Kind> {
    Kind::from_kind(&r.kind).filter(|k| k.api_version() == r.api_version)
}

/// Collects dependents (pods and ReplicaSets) whose owners are gone.
pub struct GarbageCollector {
    pub cp: Arc<dyn ControlPlane>,
    /// Caches by kind: dependents are read from them, owners looked up
    /// in them first (and in the control plane when absent there).
    pub caches: Vec<(Kind, Cache)>,
}

impl GarbageCollector {
    fn cache(&self, kind: Kind) -> Option<&Cache> {
        self.caches.iter().find(|(k, _)| *k == kind).map(|(_, c)| c)
    }

    async fn owner_state(&self, ns: &str, r: &OwnerReference) -> Owner {
        let Some(kind) = owner_kind(r) else {
            return Owner::Unknown;
        };
        let key = ObjectRef::new(kind, ns, &r.name);
        let cached = self.cache(kind).and_then(|c| c.get(&key));
        if cached.is_some_and(|o| o.meta().uid.as_deref() == Some(&r.uid)) {
            return Owner::Present;
        }
        // The cache may lag behind a new owner: ask the store.
        match self.cp.get(&key).await {
            Ok(o) if o.meta().uid.as_deref() == Some(&r.uid) => Owner::Present,
            Ok(_) => Owner::Absent,
            Err(e) if e.is_not_found() => Owner::Absent,
            Err(_) => Owner::Unknown,
        }
    }

    /// Collects the dependent `key` if its owners are gone.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(obj) = self.cache(key.kind).and_then(|c| c.get(key)) else {
            return Ok(None);
        };
        let mut states = Vec::new();
        for r in obj.meta().owner_references.iter().flatten() {
            states.push((r.uid.clone(), self.owner_state(&key.namespace, r).await));
        }
        let state = |r: &OwnerReference| {
            states
                .iter()
                .find(|(u, _)| *u == r.uid)
                .map_or(Owner::Unknown, |(_, s)| *s)
        };
        match verdict(obj.meta(), state) {
            Verdict::Keep => Ok(None),
            Verdict::Delete => {
                let rev = controlplane::api::revision_of(&obj)?;
                match self.cp.delete(key, rev).await {
                    Ok(_) => {
                        tracing::info!(object = %key, "garbage-collected: its owners are gone");
                        Ok(None)
                    }
                    Err(e) if e.is_not_found() => Ok(None),
                    Err(e) => Err(Error::write(format!("garbage-collect {key}"), e)),
                }
            }
            Verdict::Release(uids) => {
                // The cached copy may be stripped: change the stored one.
                crate::pods::update_fresh(self.cp.as_ref(), &obj, |o| {
                    if let Some(refs) = o.meta_mut().owner_references.as_mut() {
                        refs.retain(|r| !uids.contains(&r.uid));
                    }
                })
                .await
                .map_err(|e| Error::write(format!("drop gone owners of {key}"), e))?;
                Ok(None)
            }
        }
    }

    /// The dependents in the caches that name `owner_uid`.
    pub fn dependents_of(
        caches: &[(Kind, Cache)],
        namespace: &str,
        owner_uid: &str,
    ) -> Vec<ObjectRef> {
        caches
            .iter()
            .flat_map(|(_, c)| c.in_namespace(namespace))
            .filter(|o| {
                o.meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == owner_uid)
            })
            .map(|o| ObjectRef::of(&o))
            .collect()
    }
}

/// Orphan propagation, before the owner is deleted: the owner gets kube's
/// `orphan` finalizer (its controller then adopts nothing back), and every
/// reference to it goes from the ReplicaSets and pods of its namespace, so
/// the collector leaves them alone. Retries each write on conflict.
pub async fn orphan_dependents(cp: &dyn ControlPlane, owner: &Object) -> Result<usize> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut marked = owner.clone();
    for _ in 0..5 {
        let f = marked.meta_mut().finalizers.get_or_insert_with(Vec::new);
        if f.iter().any(|f| f == crate::pods::ORPHAN_FINALIZER) {
            break;
        }
        f.push(crate::pods::ORPHAN_FINALIZER.into());
        match cp.update(marked.clone(), None).await {
            Ok(_) => break,
            Err(e) if e.is_conflict() => marked = cp.get(&ObjectRef::of(owner)).await?,
            Err(e) => {
                return Err(Error::write(
                    format!("mark {} for orphaning", owner.describe()),
                    e,
                ))
            }
        }
    }
    let mut n = 0;
    for kind in [Kind::ReplicaSet, Kind::Pod] {
        let list = cp.list(&Scope::namespaced(kind, owner.namespace())).await?;
        for o in list.items {
            let mut o = o;
            for _ in 0..5 {
                let Some(refs) = o.meta_mut().owner_references.as_mut() else {
                    break;
                };
                let before = refs.len();
                refs.retain(|r| r.uid != uid);
                if refs.len() == before {
                    break;
                }
                match cp.update(o.clone(), None).await {
                    Ok(_) => {
                        n += 1;
                        break;
                    }
                    Err(e) if e.is_conflict() => o = cp.get(&ObjectRef::of(&o)).await?,
                    Err(e) if e.is_not_found() => break,
                    Err(e) => return Err(Error::write(format!("orphan {}", o.describe()), e)),
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(uids: &[&str]) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(
                uids.iter()
                    .map(|u| OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: format!("rs-{u}"),
                        uid: u.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_dependent_goes_with_its_last_owner() {
        let gone = |_: &OwnerReference| Owner::Absent;
        let here = |_: &OwnerReference| Owner::Present;
        assert_eq!(verdict(&owned_by(&["a"]), gone), Verdict::Delete);
        assert_eq!(verdict(&owned_by(&["a"]), here), Verdict::Keep);
        assert_eq!(verdict(&ObjectMeta::default(), gone), Verdict::Keep);
        // One of two owners left: only its reference goes.
        let only_b = |r: &OwnerReference| {
            if r.uid == "a" {
                Owner::Absent
            } else {
                Owner::Present
            }
        };
        assert_eq!(
            verdict(&owned_by(&["a", "b"]), only_b),
            Verdict::Release(vec!["a".into()])
        );
        // Unknown owners keep the dependent.
        let unknown = |_: &OwnerReference| Owner::Unknown;
        assert_eq!(verdict(&owned_by(&["a"]), unknown), Verdict::Keep);
    }
}
