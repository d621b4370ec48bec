//! Graceful deletion of Pods, as kube-apiserver's pod strategy does it: a
//! Pod bound to a node and not finished is marked (`deletionTimestamp`,
//! `deletionGracePeriodSeconds`) rather than removed, and its kubelet
//! removes the object once the containers are gone. This module only
//! decides and marks; stopping containers is the kubelet's.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{conflict, Registry, ALLOC_TRIES};
use crate::api::{DeleteOptions, Error, Expiry, ObjectRef, Result};
use crate::objects::Object;
use crate::storage::{Precondition, WriteError};

impl Registry {
    /// A Pod's delete: graceful (marked, removed by its kubelet) when it
    /// is bound and not finished, else at once; see
    /// [`ControlPlane::delete_with`].
    pub(super) async fn delete_pod(
        &self,
        what: &ObjectRef,
        opts: &DeleteOptions,
    ) -> Result<Object> {
        for _ in 0..ALLOC_TRIES {
            let (stored, obj) = self.stored(what).await?;
            if opts.revision.is_some_and(|r| r != stored.revision)
                || opts
                    .uid
                    .as_ref()
                    .is_some_and(|u| obj.meta().uid.as_ref() != Some(u))
            {
                return Err(conflict(what));
            }
            let Object::Pod(mut pod) = obj else {
                return Err(Error::Internal(format!("{what} is not a Pod")));
            };
            let grace = graceful_period(&pod, opts.grace_period_seconds);
            let Some(grace) = grace else {
                return self.delete_one(what, opts.revision).await;
            };
            let now = Timestamp::now();
            // Whole seconds, as metav1.Time stores it.
            let deadline = now
                .checked_add(SignedDuration::from_secs(grace))
                .ok()
                .and_then(|t| Timestamp::from_second(t.as_second()).ok())
                .unwrap_or(now);
            // A second delete may shorten the grace, never lengthen it.
            if let Some(Time(existing)) = pod.metadata.deletion_timestamp {
                if existing <= deadline {
                    return Ok(Object::Pod(pod));
                }
            }
            pod.metadata.deletion_timestamp = Some(Time(deadline));
            pod.metadata.deletion_grace_period_seconds = Some(grace);
            let obj = Object::Pod(pod);
            match self
                .put(
                    &obj,
                    Precondition::Revision(stored.revision),
                    Expiry::Keep,
                    Vec::new(),
                    Vec::new(),
                )
                .await
            {
                Err(WriteError::RevisionMismatch { .. }) if opts.revision.is_none() => continue,
                r => return self.finish(obj, r),
            }
        }
        Err(conflict(what))
    }
}

/// The grace period a Pod's delete gets, or `None` when it goes at once:
/// not bound to a node (no kubelet to stop anything), already finished
/// (Succeeded/Failed), or a grace of 0 asked for. As kube-apiserver's pod
/// strategy (CheckGracefulDelete).
fn graceful_period(pod: &Pod, asked: Option<i64>) -> Option<i64> {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let grace = asked
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    (bound && !finished && grace > 0).then_some(grace)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    use super::*;
    use crate::api::ControlPlane;
    use crate::registry::Allocators;
    use crate::storage::embedded::Embedded;

    fn pod(name: &str, node: Option<&str>) -> Object {
        Object::from(Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                termination_grace_period_seconds: Some(20),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn registry(dir: &std::path::Path) -> Registry {
        let r = Registry::new(
            Arc::new(Embedded::open(dir).expect("open")),
            Allocators::default(),
        );
        r.bootstrap().await.expect("bootstrap");
        r
    }

    #[test]
    fn only_bound_running_pods_are_deleted_gracefully() {
        let Object::Pod(mut p) = pod("p", Some("n1")) else {
            unreachable!()
        };
        assert_eq!(graceful_period(&p, None), Some(20));
        assert_eq!(graceful_period(&p, Some(3)), Some(3));
        assert_eq!(graceful_period(&p, Some(0)), None);
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(graceful_period(&p, None), None);
        let Object::Pod(unbound) = pod("q", None) else {
            unreachable!()
        };
        assert_eq!(graceful_period(&unbound, None), None);
    }

    #[tokio::test]
    async fn a_bound_pod_is_marked_then_removed_with_grace_zero() {
        let dir = std::env::temp_dir().join(format!("knode-graceful-{}", std::process::id()));
        let r = registry(&dir).await;
        let created = r
            .create(pod("web", Some("n1")), None)
            .await
            .expect("create");
        let what = ObjectRef::of(&created);
        let marked = r.delete(&what, None).await.expect("delete");
        let m = marked.meta();
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.deletion_grace_period_seconds, Some(20));
        // Still there, Terminating, and an update (a status write, an
        // apply) keeps the mark.
        let got = r.get(&what).await.expect("still there");
        assert_eq!(got.meta().deletion_timestamp, m.deletion_timestamp);
        let mut again = got.clone();
        again.meta_mut().deletion_timestamp = None;
        again.meta_mut().deletion_grace_period_seconds = None;
        let updated = r.update(again, None).await.expect("update");
        assert_eq!(updated.meta().deletion_grace_period_seconds, Some(20));
        // A longer grace does not extend it; a shorter one shortens it.
        let longer = DeleteOptions {
            grace_period_seconds: Some(60),
            ..Default::default()
        };
        let same = r.delete_with(&what, &longer).await.expect("delete again");
        assert_eq!(same.meta().deletion_grace_period_seconds, Some(20));
        let shorter = DeleteOptions {
            grace_period_seconds: Some(5),
            ..Default::default()
        };
        let short = r.delete_with(&what, &shorter).await.expect("shorten");
        assert_eq!(short.meta().deletion_grace_period_seconds, Some(5));
        // The kubelet's final removal, only for this uid.
        let other_uid = DeleteOptions {
            uid: Some("not-this-one".into()),
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        assert!(r
            .delete_with(&what, &other_uid)
            .await
            .unwrap_err()
            .is_conflict());
        let fin = DeleteOptions {
            uid: created.meta().uid.clone(),
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        r.delete_with(&what, &fin).await.expect("remove");
        assert!(r.get(&what).await.unwrap_err().is_not_found());
        // An unbound pod goes at once; a negative grace is refused.
        let q = r.create(pod("q", None), None).await.expect("create q");
        let bad = DeleteOptions {
            grace_period_seconds: Some(-1),
            ..Default::default()
        };
        let e = r.delete_with(&ObjectRef::of(&q), &bad).await.unwrap_err();
        assert!(e.to_string().contains("gracePeriodSeconds"), "{e}");
        r.delete(&ObjectRef::of(&q), None).await.expect("delete q");
        assert!(r.get(&ObjectRef::of(&q)).await.unwrap_err().is_not_found());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
