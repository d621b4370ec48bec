//! A storage that answers writes as the real one would and keeps none of
//! them: kube-apiserver's dry run (`dryRun=All`). Reads and watches go to
//! the real storage; a write checks its precondition and its claims (a
//! ClusterIP or NodePort held by another object is refused, a free one is
//! picked but not kept, as kube-apiserver's allocators do under dry run)
//! and changes nothing, so no watcher sees it and no revision moves.

use std::sync::Arc;

use async_trait::async_trait;

use crate::api::Result;
use crate::storage::{Precondition, RawWatch, Storage, Stored, Write, WriteError};

/// The real storage, read-only.
pub struct DryRun {
    inner: Arc<dyn Storage>,
}

impl DryRun {
    pub fn new(inner: Arc<dyn Storage>) -> DryRun {
        DryRun { inner }
    }
}

#[async_trait]
impl Storage for DryRun {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64)> {
        self.inner.list(prefix).await
    }

    /// The write's outcome without the write: the stored revision for an
    /// update, 0 (no revision: the object was never stored) for a create.
    async fn write(&self, w: Write) -> Result<u64, WriteError> {
        let current = self.inner.get(&w.key).await?;
        let revision = match (w.precondition, &current) {
            (Precondition::Absent, Some(_)) => return Err(WriteError::Exists),
            (Precondition::Absent, None) => 0,
            (_, None) => return Err(WriteError::NotFound),
            (Precondition::Revision(r), Some(c)) if c.revision != r => {
                return Err(WriteError::RevisionMismatch {
                    current: c.revision,
                })
            }
            (_, Some(c)) => c.revision,
        };
        for claim in &w.claim {
            if let Some(held) = self.inner.get(claim).await? {
                let owner = String::from_utf8_lossy(&held.value).into_owned();
                if owner != w.key {
                    return Err(WriteError::ClaimTaken {
                        claim: claim.clone(),
                        owner,
                    });
                }
            }
        }
        Ok(revision)
    }

    async fn delete(
        &self,
        key: &str,
        revision: Option<u64>,
        _release: Vec<String>,
    ) -> Result<(Stored, u64), WriteError> {
        let Some(current) = self.inner.get(key).await? else {
            return Err(WriteError::NotFound);
        };
        if revision.is_some_and(|r| r != current.revision) {
            return Err(WriteError::RevisionMismatch {
                current: current.revision,
            });
        }
        let at = current.revision;
        Ok((current, at))
    }

    async fn watch(&self, prefix: &str, revision: u64) -> Result<RawWatch> {
        self.inner.watch(prefix, revision).await
    }
}
