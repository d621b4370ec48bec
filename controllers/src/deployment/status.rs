//! A Deployment's status from its ReplicaSets, and the Available and
//! Progressing conditions with kube's reasons, which `rollout status`
//! reads: NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable,
//! ProgressDeadlineExceeded, DeploymentPaused.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::jiff::Timestamp;

use super::rolling::{desired, max_unavailable, spec_replicas};
use crate::pods::time;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";

fn cond(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    }
}

/// The condition of `type_`, if set.
pub fn get<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == type_)
}

/// kube's `SetDeploymentCondition`: no change when status and reason are
/// the same; a new reason with the same status keeps the transition time.
pub fn set(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    if let Some(old) = conds.iter().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    conds.retain(|o| o.type_ != c.type_);
    conds.push(c);
}

fn sum(
    rss: &[&ReplicaSet],
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i32 {
    rss.iter()
        .filter_map(|rs| rs.status.as_ref().and_then(&f))
        .sum()
}

/// The counts of the status (`calculateStatus`) and the Available condition.
pub fn calculate(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let available = sum(all, |s| s.available_replicas);
    let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let old = d.status.clone().unwrap_or_default();
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(all, |s| Some(s.replicas))),
        updated_replicas: Some(
            new.and_then(|n| n.status.as_ref())
                .map(|s| s.replicas)
                .unwrap_or(0),
        ),
        ready_replicas: Some(sum(all, |s| s.ready_replicas)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    if available >= desired(d) - max_unavailable(d) {
        set(
            &mut s,
            cond(
                AVAILABLE,
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set(
            &mut s,
            cond(
                AVAILABLE,
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    s
}

/// kube's `DeploymentComplete`.
pub fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let n = desired(d);
    s.updated_replicas == Some(n)
        && s.replicas == Some(n)
        && s.available_replicas == Some(n)
        && s.observed_generation >= d.metadata.generation
}

/// kube's `DeploymentProgressing`: more updated, ready or available
/// replicas, or fewer old ones, than the stored status says.
fn progressing(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_olds = n(old.replicas) - n(old.updated_replicas);
    let new_olds = n(s.replicas) - n(s.updated_replicas);
    n(s.updated_replicas) > n(old.updated_replicas)
        || new_olds < old_olds
        || n(s.ready_replicas) > n(old.ready_replicas)
        || n(s.available_replicas) > n(old.available_replicas)
}

fn deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .map(i64::from)
}

/// Sets the Progressing condition as `syncRolloutStatus` does; returns
/// when to look again for a deadline that may pass.
pub fn progress(
    d: &Deployment,
    s: &mut DeploymentStatus,
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> Option<Duration> {
    let rs_name = new
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if paused {
        set(
            s,
            cond(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                now,
            ),
        );
        return None;
    }
    let limit = deadline(d)?;
    let current = get(s, PROGRESSING).cloned();
    let was_complete = s.replicas == s.updated_replicas
        && current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if was_complete {
        return None;
    }
    if complete(d, s) {
        set(
            s,
            cond(
                PROGRESSING,
                "True",
                NEW_RS_AVAILABLE,
                format!("ReplicaSet {rs_name:?} has successfully progressed."),
                now,
            ),
        );
        return None;
    }
    if progressing(d, s)
        || current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some(PAUSED))
    {
        let mut c = cond(
            PROGRESSING,
            "True",
            RS_UPDATED,
            format!("ReplicaSet {rs_name:?} is progressing."),
            now,
        );
        if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        if let Some(conds) = s.conditions.as_mut() {
            conds.retain(|c| c.type_ != PROGRESSING);
        }
        set(s, c);
        return Some(Duration::from_secs(u64::try_from(limit).unwrap_or(600)));
    }
    let cur = current?;
    if cur.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let since = cur
        .last_update_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(now.as_second());
    let left = since + limit - now.as_second();
    if left < 0 {
        set(
            s,
            cond(
                PROGRESSING,
                "False",
                TIMED_OUT,
                format!("ReplicaSet {rs_name:?} has timed out progressing."),
                now,
            ),
        );
        None
    } else {
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1))
    }
}

/// Marks a new ReplicaSet created (Progressing True, NewReplicaSetCreated).
pub fn created(s: &mut DeploymentStatus, rs_name: &str, now: Timestamp) {
    set(
        s,
        cond(
            PROGRESSING,
            "True",
            NEW_RS_CREATED,
            format!("Created new replica set {rs_name:?}"),
            now,
        ),
    );
}
