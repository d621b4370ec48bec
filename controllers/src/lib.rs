//! The controller manager: informer caches fed by watches, work queues of
//! keys, and one `sync(key)` per controller that decides with a pure
//! function and then writes (ReplicaSet, Deployment, garbage collection),
//! run by whichever agent holds the `kube-system/knode-controller-manager`
//! Lease. It only talks to the control plane; it never touches a node.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod expectations;
#[cfg(test)]
mod fixtures;
pub mod gc;
pub mod informer;
pub mod job;
pub mod leader;
pub mod manager;
pub mod nodelifecycle;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;
#[cfg(test)]
mod strip_tests;

pub use manager::run;

/// A controller error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write or read of the control plane failed.
    #[error("{what}: {source}")]
    Write {
        what: String,
        #[source]
        source: controlplane::Error,
    },
    #[error(transparent)]
    ControlPlane(#[from] controlplane::Error),
}

impl Error {
    /// `what` failed with `source`.
    pub fn write(what: impl Into<String>, source: controlplane::Error) -> Error {
        Error::Write {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `obj`'s status (an object deleted meanwhile needs none).
pub async fn write_status(
    cp: &dyn controlplane::ControlPlane,
    obj: controlplane::Object,
    key: &controlplane::ObjectRef,
) -> Result<()> {
    match cp.update_status(obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(Error::write(format!("update status of {key}"), e)),
    }
}
