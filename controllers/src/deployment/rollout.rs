//! What `kubectl rollout` computes on the client, as pure functions: the
//! status message of a rollout, the revisions of a Deployment, and the
//! template that `rollout undo` restores.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::{revision, rolling::desired, status};
use crate::pods::{self as podutil, controlled_by};

/// Where a rollout stands, in kubectl's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStatus {
    /// Still going: the message to print.
    Waiting(String),
    /// Finished: the message to print.
    Done(String),
    /// The progress deadline passed.
    Failed(String),
}

/// kubectl's `DeploymentStatusViewer`.
pub fn rollout_status(d: &Deployment) -> RolloutStatus {
    let name = d.metadata.name.clone().unwrap_or_default();
    let s = d.status.clone().unwrap_or_default();
    if d.metadata.generation > s.observed_generation {
        return RolloutStatus::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    if status::get(&s, status::PROGRESSING)
        .is_some_and(|c| c.reason.as_deref() == Some(status::TIMED_OUT))
    {
        return RolloutStatus::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let n = |v: Option<i32>| v.unwrap_or(0);
    let (want, updated, replicas, available) = (
        desired(d),
        n(s.updated_replicas),
        n(s.replicas),
        n(s.available_replicas),
    );
    if updated < want {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    RolloutStatus::Done(format!("deployment {name:?} successfully rolled out"))
}

/// The ReplicaSets `d` controls, by revision (oldest first).
pub fn history<'a>(d: &Deployment, rss: &'a [ReplicaSet]) -> Vec<(i64, &'a ReplicaSet)> {
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let mut out: Vec<(i64, &ReplicaSet)> = rss
        .iter()
        .filter(|rs| controlled_by(&rs.metadata, uid))
        .map(|rs| (revision(rs), rs))
        .collect();
    out.sort_by_key(|(r, _)| *r);
    out
}

/// Why an undo cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    #[error("no rollout history found for deployment {0:?}")]
    NoHistory(String),
    #[error("unable to find specified revision {0} in history")]
    NoRevision(i64),
}

/// The template `rollout undo` puts back: that of `to_revision`, or (0)
/// of the revision before the newest. Without its `pod-template-hash`.
pub fn undo_template(
    d: &Deployment,
    rss: &[ReplicaSet],
    to_revision: i64,
) -> Result<(i64, PodTemplateSpec), UndoError> {
    let h = history(d, rss);
    let pick = if to_revision == 0 {
        if h.len() < 2 {
            return Err(UndoError::NoHistory(
                d.metadata.name.clone().unwrap_or_default(),
            ));
        }
        h[h.len() - 2]
    } else {
        *h.iter()
            .find(|(r, _)| *r == to_revision)
            .ok_or(UndoError::NoRevision(to_revision))?
    };
    let mut t = pick
        .1
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    podutil::strip_hash_label(&mut t);
    Ok((pick.0, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus, ReplicaSetSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn d(
        generation: i64,
        observed: i64,
        updated: i32,
        replicas: i32,
        available: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("d".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                replicas: Some(replicas),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_messages_are_kubectls() {
        let w = |s: &str| RolloutStatus::Waiting(s.into());
        assert_eq!(
            rollout_status(&d(2, 1, 3, 3, 3)),
            w("Waiting for deployment spec update to be observed...")
        );
        assert_eq!(
            rollout_status(&d(1, 1, 1, 4, 3)),
            w("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...")
        );
        assert_eq!(
            rollout_status(&d(1, 1, 3, 4, 3)),
            w("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...")
        );
        assert_eq!(
            rollout_status(&d(1, 1, 3, 3, 2)),
            w("Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...")
        );
        assert_eq!(
            rollout_status(&d(1, 1, 3, 3, 3)),
            RolloutStatus::Done("deployment \"web\" successfully rolled out".into())
        );
    }

    #[test]
    fn undo_picks_the_revision_before_the_newest() {
        let dep = d(1, 1, 3, 3, 3);
        let rs = |rev: i64, image: &str| {
            let t = PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(
                        [(podutil::POD_TEMPLATE_HASH.to_string(), image.to_string())].into(),
                    ),
                    annotations: Some([("image".to_string(), image.to_string())].into()),
                    ..Default::default()
                }),
                spec: None,
            };
            ReplicaSet {
                metadata: ObjectMeta {
                    annotations: Some(
                        [(super::super::REVISION.to_string(), rev.to_string())].into(),
                    ),
                    owner_references: Some(vec![podutil::controller_ref(
                        "apps/v1",
                        "Deployment",
                        &dep.metadata,
                    )]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    template: Some(t),
                    ..Default::default()
                }),
                status: None,
            }
        };
        let rss = [rs(3, "v3"), rs(1, "v1"), rs(2, "v2")];
        let (rev, t) = undo_template(&dep, &rss, 0).unwrap();
        assert_eq!(rev, 2);
        let m = t.metadata.unwrap();
        assert_eq!(m.annotations.unwrap()["image"], "v2");
        assert!(m.labels.unwrap().is_empty());
        assert_eq!(undo_template(&dep, &rss, 1).unwrap().0, 1);
        assert_eq!(undo_template(&dep, &rss, 7), Err(UndoError::NoRevision(7)));
        assert!(matches!(
            undo_template(&dep, &rss[..1], 0),
            Err(UndoError::NoHistory(_))
        ));
    }
}
