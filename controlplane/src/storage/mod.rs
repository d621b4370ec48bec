//! Raw storage under the registry: keys, bytes and revisions, with the
//! transactional primitives the API-server duties need (create-if-absent,
//! compare-and-set on a revision, claims taken atomically with a write,
//! expiring keys) and watches after a revision. Two implementations: the
//! embedded redb file and etcd.
//!
//! Keys are `<plural>/<namespace>/<name>` (or `<plural>/<name>`); claims
//! are separate keys (`claims/clusterip/10.96.0.10`) holding their
//! owner's key, written and released in the owner's transaction so that
//! two writers can never take the same one.

pub mod dry_run;
pub mod embedded;
pub mod etcd;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::api::{Expiry, Result};

/// A stored value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// What must hold for a write to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key is absent (create).
    Absent,
    /// The key exists, at any revision.
    Exists,
    /// The key exists at exactly this revision.
    Revision(u64),
}

/// One atomic write: the value, its precondition, the claims it takes and
/// the claims it gives back. Either all of it happens or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: Vec<u8>,
    pub precondition: Precondition,
    pub expiry: Expiry,
    /// Claim keys that must be free; they are taken, owned by `key`.
    pub claim: Vec<String>,
    /// Claim keys to free.
    pub release: Vec<String>,
}

/// Why a write did not happen (besides I/O trouble).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("key exists")]
    Exists,
    #[error("key not found")]
    NotFound,
    #[error("key is at revision {current}")]
    RevisionMismatch { current: u64 },
    #[error("claim {claim} is held by {owner}")]
    ClaimTaken { claim: String, owner: String },
    #[error(transparent)]
    Other(#[from] crate::api::Error),
}

/// A change seen by a raw watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// The key was written; `created` when it did not exist before.
    Put { stored: Stored, created: bool },
    /// The key was deleted at `revision`; `last` is its final value.
    Delete { last: Stored, revision: u64 },
}

impl RawEvent {
    pub fn revision(&self) -> u64 {
        match self {
            RawEvent::Put { stored, .. } => stored.revision,
            RawEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            RawEvent::Put { stored, .. } => &stored.key,
            RawEvent::Delete { last, .. } => &last.key,
        }
    }
}

/// A raw watch's receiving end; ends with an error (e.g. compacted) or
/// `None` when the backend stops.
pub type RawWatch = mpsc::Receiver<Result<RawEvent>>;

/// Keys, bytes, revisions.
#[async_trait]
pub trait Storage: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Stored>>;

    /// Every key under `prefix`, in key order, and the store's revision.
    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64)>;

    /// Writes atomically; returns the new revision.
    async fn write(&self, w: Write) -> Result<u64, WriteError>;

    /// Deletes `key` (if at `revision`, when given) and frees `release`;
    /// returns the deleted value and the deletion's revision.
    async fn delete(
        &self,
        key: &str,
        revision: Option<u64>,
        release: Vec<String>,
    ) -> Result<(Stored, u64), WriteError>;

    /// Events for keys under `prefix` after `revision`.
    async fn watch(&self, prefix: &str, revision: u64) -> Result<RawWatch>;
}

/// Rounds a TTL up to whole seconds, at least one (etcd's unit).
pub fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}
