//! Leader election through a coordination.k8s.io/v1 Lease, as
//! kube-controller-manager's leaderelection does: a candidate takes the
//! Lease when it is free or its holder stopped renewing for a lease
//! duration (measured on the candidate's own clock, from when it last saw
//! the Lease change, so clock skew does not matter); the leader renews
//! every retry period and steps down when it could not renew within the
//! renew deadline. Writes are compare-and-set on resourceVersion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

/// kube-controller-manager's defaults and our Lease's name.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate (the node name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    /// `kube-system/knode-controller-manager`, 15 s / 10 s / 2 s.
    pub fn new(identity: &str) -> Config {
        Config::with_lease(identity, Duration::from_secs(15))
    }

    /// The same with another lease duration, renew deadline and retry
    /// period in kube's proportions (2/3 and 2/15 of it).
    pub fn with_lease(identity: &str, lease_duration: Duration) -> Config {
        Config {
            namespace: "kube-system".into(),
            name: "knode-controller-manager".into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }
}

/// What a candidate or leader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: write a new renewTime.
    Renew,
    /// Free or expired: take it (a transition).
    TakeOver,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease and how long it has gone unchanged.
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let d = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for >= d {
                Decision::TakeOver
            } else {
                Decision::Wait
            }
        }
    }
}

/// An elector: tries and renews.
pub struct Elector {
    cp: Arc<dyn ControlPlane>,
    cfg: Config,
    /// The Lease's resourceVersion and when we first saw it.
    seen: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(cp: Arc<dyn ControlPlane>, cfg: Config) -> Elector {
        Elector {
            cp,
            cfg,
            seen: None,
        }
    }

    /// One attempt to acquire or renew; `true` when we hold the Lease.
    pub async fn try_acquire_or_renew(&mut self) -> bool {
        let key = ObjectRef::new(Kind::Lease, &self.cfg.namespace, &self.cfg.name);
        let current = match self.cp.get(&key).await {
            Ok(Object::Lease(l)) => Some(l),
            Ok(_) => return false,
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                tracing::warn!(error = %e, "read the controller-manager Lease");
                return false;
            }
        };
        let rv = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let unchanged_for = match &self.seen {
            Some((r, at)) if *r == rv => at.elapsed(),
            _ => {
                self.seen = Some((rv, Instant::now()));
                Duration::ZERO
            }
        };
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15);
        let decision = decide(
            current.as_deref(),
            &self.cfg.identity,
            unchanged_for,
            self.cfg.lease_duration,
        );
        let result = match (decision, current) {
            (Decision::Wait, _) => return false,
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.cp.create(Object::from(lease), None).await
            }
            (d, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if d == Decision::TakeOver {
                    spec.holder_identity = Some(self.cfg.identity.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    tracing::info!(identity = %self.cfg.identity, "taking over the controller-manager Lease");
                }
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(now);
                self.cp.update(Object::Lease(lease), None).await
            }
            (_, None) => return false,
        };
        match result {
            Ok(o) => {
                self.seen = o
                    .meta()
                    .resource_version
                    .clone()
                    .map(|r| (r, Instant::now()));
                true
            }
            Err(controlplane::Error::NotFound {
                kind: Kind::Namespace,
                ..
            }) => {
                self.ensure_namespace().await;
                false
            }
            Err(e) if e.is_conflict() || matches!(e, controlplane::Error::AlreadyExists { .. }) => {
                tracing::debug!(error = %e, "controller-manager Lease write lost to another");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "write the controller-manager Lease");
                false
            }
        }
    }

    /// Creates the Lease's namespace (`kube-system`) when it is missing.
    async fn ensure_namespace(&self) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(self.cfg.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match self.cp.create(Object::from(ns), None).await {
            Ok(_) => {
                tracing::info!(namespace = %self.cfg.namespace, "created the namespace of the controller-manager Lease")
            }
            Err(controlplane::Error::AlreadyExists { .. }) => {}
            Err(e) => {
                tracing::warn!(namespace = %self.cfg.namespace, error = %e, "create the namespace of the controller-manager Lease")
            }
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        while !self.try_acquire_or_renew().await {
            tokio::time::sleep(self.cfg.retry_period).await;
        }
        tracing::info!(identity = %self.cfg.identity, lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name), "became the controller-manager leader");
    }

    /// Renews every retry period; returns when a renewal has failed for
    /// the whole renew deadline (leadership lost).
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            if self.try_acquire_or_renew().await {
                last_ok = Instant::now();
            } else if last_ok.elapsed() >= self.cfg.renew_deadline {
                tracing::warn!(identity = %self.cfg.identity, "lost the controller-manager Lease");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(who.into()),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_candidate_takes_a_free_or_expired_lease_only() {
        let d = Duration::from_secs(15);
        let s = Duration::from_secs;
        assert_eq!(decide(None, "a", s(0), d), Decision::Create);
        assert_eq!(decide(Some(&held_by("a")), "a", s(100), d), Decision::Renew);
        assert_eq!(decide(Some(&held_by("b")), "a", s(14), d), Decision::Wait);
        assert_eq!(
            decide(Some(&held_by("b")), "a", s(15), d),
            Decision::TakeOver
        );
        assert_eq!(decide(Some(&held_by("")), "a", s(0), d), Decision::TakeOver);
    }
}
