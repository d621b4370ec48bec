//! The ControlPlane abstraction: what the agent, the proxy, the overlay and
//! the CLI ask of a control plane, whatever serves it (the embedded store,
//! etcd, or later a Kubernetes API server).
//!
//! Objects carry their revision as `metadata.resourceVersion`. Watches
//! deliver events after a revision; a watch that cannot be served from that
//! revision (compacted, or the watcher fell behind) ends with
//! [`Error::Compacted`], and [`crate::watcher`] turns that into a relist and
//! a diff so that consumers never keep a stale view.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::objects::{Kind, Object};
use crate::validate::{FieldError, Invalid};

/// A control-plane error, shaped like the API server's status reasons so
/// the REST layer maps it to and from HTTP without loss.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: Kind, name: String },
    /// The object changed since the caller read it (resourceVersion).
    #[error("Operation cannot be fulfilled on {kind} {name:?}: {reason}")]
    Conflict {
        kind: Kind,
        name: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(Invalid),
    /// The requested revision is no longer available: relist.
    #[error("too old resource version: {requested} (oldest available {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request body in a media type the server does not read.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    /// The backend cannot be reached or refused to work.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// One invalid field of `object`.
    pub fn invalid(object: impl Into<String>, path: &str, reason: impl Into<String>) -> Error {
        Error::Invalid(Invalid {
            object: object.into(),
            errors: vec![FieldError {
                path: path.to_string(),
                reason: reason.into(),
            }],
        })
    }

    /// Whether retrying the same request after a fresh read may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Whether the object is absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which objects a list or watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: Kind,
    /// `None`: every namespace (and always for cluster-scoped kinds).
    pub namespace: Option<String>,
}

impl Scope {
    /// Every object of `kind`.
    pub fn all(kind: Kind) -> Scope {
        Scope {
            kind,
            namespace: None,
        }
    }

    /// Objects of `kind` in `namespace` (ignored for cluster-scoped kinds).
    pub fn namespaced(kind: Kind, namespace: &str) -> Scope {
        Scope {
            kind,
            namespace: kind.namespaced().then(|| namespace.to_string()),
        }
    }
}

/// Names one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: if kind.namespaced() {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// The reference to `obj`.
    pub fn of(obj: &Object) -> ObjectRef {
        ObjectRef::new(obj.kind(), obj.namespace(), obj.name())
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.plural(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.plural(), self.namespace, self.name)
        }
    }
}

/// A list and the revision it was read at: watch from there.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList {
    pub items: Vec<Object>,
    pub revision: u64,
}

/// One change seen by a watch. `Deleted` carries the object's last state.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Added(Object),
    Modified(Object),
    Deleted(Object),
}

impl WatchEvent {
    pub fn object(&self) -> &Object {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }

    /// The object, taken.
    pub fn into_object(self) -> Object {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }

    /// The object, to change in place.
    pub fn object_mut(&mut self) -> &mut Object {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }

    /// The API server's event type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
        }
    }
}

/// A stream of watch events. It ends with `Some(Err(..))` (typically
/// [`Error::Compacted`]) or `None` when the backend closes it.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchEvent>>,
}

impl Watch {
    /// A watch and the sender a backend feeds it through. The backend's
    /// task stops when the receiver is dropped (send fails).
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<WatchEvent>>, Watch) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Watch { rx })
    }

    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

/// How long a written object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// Until deleted.
    #[default]
    Never,
    /// Deleted (and watchers told) if not written again within this time.
    After(Duration),
    /// Whatever the stored object had (status writes do not renew).
    Keep,
}

/// How a delete is carried out: the parts of kube's DeleteOptions knode
/// honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Only if the stored object still has this revision.
    pub revision: Option<u64>,
    /// Only if the stored object still has this uid.
    pub uid: Option<String>,
    /// Seconds a Pod's containers get to stop; `None`: the pod's
    /// `terminationGracePeriodSeconds`; 0: remove at once.
    pub grace_period_seconds: Option<i64>,
}

/// The control plane as every component sees it.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// One object.
    async fn get(&self, what: &ObjectRef) -> Result<Object>;

    /// Every object in `scope`, sorted by namespace and name, with the
    /// revision to watch from.
    async fn list(&self, scope: &Scope) -> Result<ObjectList>;

    /// Creates `obj` after defaulting and validation, assigning uid,
    /// creationTimestamp, resourceVersion and, for Services, ClusterIP and
    /// NodePorts. `ttl` makes the object a lease that expires unless
    /// updated again within it.
    async fn create(&self, obj: Object, ttl: Option<Duration>) -> Result<Object>;

    /// Replaces `obj`'s spec and metadata. With `metadata.resourceVersion`
    /// set, succeeds only if the stored object still has that revision
    /// ([`Error::Conflict`] otherwise). Status is kept as stored. `ttl`
    /// renews (or sets) the expiry; `None` clears it.
    async fn update(&self, obj: Object, ttl: Option<Duration>) -> Result<Object>;

    /// Replaces only `obj`'s status, with the same compare-and-set rule.
    /// Does not renew an expiry.
    async fn update_status(&self, obj: Object) -> Result<Object>;

    /// Deletes one object, releasing what it holds (ClusterIP, NodePorts).
    /// With `revision`, only if the stored object still has it. Deleting a
    /// Namespace deletes the objects in it first.
    async fn delete(&self, what: &ObjectRef, revision: Option<u64>) -> Result<Object>;

    /// Deletes with `opts`. A Pod bound to a node and not finished is
    /// not removed but marked, as kube-apiserver does: `deletionTimestamp`
    /// (now + grace) and `deletionGracePeriodSeconds` are set and the
    /// kubelet removes the object (grace 0) once its containers are gone;
    /// a second delete may only shorten the grace. Everything else, and a
    /// grace of 0 (`--force`), is removed at once.
    async fn delete_with(&self, what: &ObjectRef, opts: &DeleteOptions) -> Result<Object> {
        self.delete(what, opts.revision).await
    }

    /// Events in `scope` after `revision` (from [`ControlPlane::list`]).
    async fn watch(&self, scope: &Scope, revision: u64) -> Result<Watch>;

    /// The same control plane in dry-run mode (`dryRun=All`): every write
    /// is defaulted, validated and checked as a real one and answered
    /// with the object as it would be stored, and nothing is kept. `None`
    /// when this control plane cannot dry-run (a client of another one).
    fn dry_run(&self) -> Option<std::sync::Arc<dyn ControlPlane>> {
        None
    }
}

/// `metadata.resourceVersion` as a number, if set.
pub fn revision_of(obj: &Object) -> Result<Option<u64>> {
    match obj.meta().resource_version.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            Error::invalid(
                obj.describe(),
                "metadata.resourceVersion",
                format!("must be a revision number, got {s:?}"),
            )
        }),
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// Creates `obj`, or updates the stored one to match it, as
/// `kubectl apply` does for a user's manifest: what the manifest leaves
/// out that the control plane assigned (ClusterIP, NodePorts, status) is
/// kept. Retries on write conflicts.
pub async fn apply(cp: &dyn ControlPlane, obj: Object) -> Result<(Applied, Object)> {
    let mut obj = obj;
    crate::defaults::apply(&mut obj);
    let what = ObjectRef::of(&obj);
    for _ in 0..10 {
        match cp.get(&what).await {
            Err(e) if e.is_not_found() => match cp.create(obj.clone(), None).await {
                Ok(o) => return Ok((Applied::Created, o)),
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
            Ok(current) => {
                let mut want = obj.clone();
                crate::registry::carry_assigned(&current, &mut want);
                if crate::registry::same_spec(&current, &want) {
                    return Ok((Applied::Unchanged, current));
                }
                want.meta_mut().resource_version = current.meta().resource_version.clone();
                match cp.update(want, None).await {
                    Ok(o) => return Ok((Applied::Configured, o)),
                    Err(e) if e.is_conflict() || e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(Error::Conflict {
        kind: what.kind,
        name: what.name,
        reason: "the object kept changing; tried 10 times".into(),
    })
}

/// Binds pod `what` to `node`, as the `pods/<name>/binding` subresource
/// does: only a pod not yet bound (else 409 Conflict, "pod ... is already
/// assigned to node ..."), with `uid` as a precondition when given, and
/// compare-and-set on the pod's resourceVersion so a pod changed meanwhile
/// is not bound blindly (409 too). A pod being deleted is not bound.
pub async fn bind(
    cp: &dyn ControlPlane,
    what: &ObjectRef,
    uid: Option<&str>,
    node: &str,
) -> Result<Object> {
    let Object::Pod(pod) = cp.get(what).await? else {
        return Err(Error::BadRequest(format!("{what} is not a pod")));
    };
    bind_pod(cp, *pod, uid, node).await
}

/// [`bind`] for a pod the caller already holds (a scheduler's cached
/// copy): written only if the pod is still at that resourceVersion (409
/// otherwise: read it again and use [`bind`]).
pub async fn bind_pod(
    cp: &dyn ControlPlane,
    mut pod: k8s_openapi::api::core::v1::Pod,
    uid: Option<&str>,
    node: &str,
) -> Result<Object> {
    let what = ObjectRef::new(
        Kind::Pod,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    if node.is_empty() {
        return Err(Error::invalid(
            what.to_string(),
            "target.name",
            "Required value",
        ));
    }
    let conflict = |reason: String| Error::Conflict {
        kind: Kind::Pod,
        name: what.name.clone(),
        reason,
    };
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                pod.metadata.uid.as_deref().unwrap_or_default()
            )));
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(conflict(format!(
            "pod {} is being deleted, cannot be assigned to a host",
            what.name
        )));
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    if let Some(bound) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Err(conflict(format!(
            "pod {} is already assigned to node {bound:?}",
            what.name
        )));
    }
    spec.node_name = Some(node.to_string());
    cp.update(Object::from(pod), None).await
}
