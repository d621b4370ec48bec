//! The arithmetic of a rolling update, as kube's deployment controller
//! does it: maxSurge and maxUnavailable resolved against replicas (surge
//! rounds up, unavailable down; both zero means one unavailable), how far
//! the new ReplicaSet may grow, and how far the old ones may shrink.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `spec.replicas` of a ReplicaSet (0 when unset: not yet scaled).
pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// `status.availableReplicas` of a ReplicaSet.
pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// `spec.replicas` of a Deployment.
pub fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Whether the Deployment rolls (not Recreate).
pub fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// An int or a percentage of `total`, rounded up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct * i64::from(total);
            let r = if round_up {
                (num + 99) / 100
            } else {
                num / 100
            };
            i32::try_from(r).unwrap_or(i32::MAX)
        }
    }
}

/// (maxSurge, maxUnavailable) as numbers of pods for `d`.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let pct25 = IntOrString::String("25%".into());
    let n = desired(d);
    let surge = scaled_value(
        ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&pct25),
        n,
        true,
    );
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref())
            .unwrap_or(&pct25),
        n,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// kube's `MaxUnavailable`: 0 for Recreate or no replicas, never above replicas.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let n = desired(d);
    if !is_rolling(d) || n == 0 {
        return 0;
    }
    fenceposts(d).1.min(n)
}

/// The replicas the new ReplicaSet may have now (`NewRSNewReplicas`):
/// up to replicas + maxSurge pods in all, never more than wanted.
pub fn new_rs_replicas(d: &Deployment, all: &[&ReplicaSet], new_current: i32) -> i32 {
    if !is_rolling(d) {
        return desired(d);
    }
    let (surge, _) = fenceposts(d);
    let current: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let max_total = desired(d) + surge;
    if current >= max_total {
        return new_current;
    }
    let up = (max_total - current).min((desired(d) - new_current).max(0));
    new_current + up
}

/// The old ReplicaSets' new sizes in a rolling update (kube's
/// `reconcileOldReplicaSets`): first unhealthy replicas go, then healthy
/// ones as far as `replicas - maxUnavailable` stay available. `olds` are
/// sorted oldest first; returns their target sizes in the same order.
pub fn scale_down_olds(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    new_replicas: i32,
    olds: &[&ReplicaSet],
) -> Vec<i32> {
    let mut target: Vec<i32> = olds.iter().map(|rs| spec_replicas(rs)).collect();
    let old_pods: i32 = target.iter().sum();
    if old_pods == 0 {
        return target;
    }
    let all_pods = old_pods + new_replicas;
    let min_available = desired(d) - max_unavailable(d);
    let new_unavailable = new_replicas - new.map(available).unwrap_or(0);
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return target;
    }
    // Unhealthy replicas first: they cost no availability.
    for (i, rs) in olds.iter().enumerate() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (target[i] - available(rs)).max(0);
        let cut = unhealthy.min(budget);
        target[i] -= cut;
        budget -= cut;
    }
    // Then healthy ones, as far as availability allows.
    let available_all: i32 =
        olds.iter().map(|rs| available(rs)).sum::<i32>() + new.map(available).unwrap_or(0);
    let mut cut_total = (available_all - min_available).max(0);
    for t in target.iter_mut() {
        if cut_total <= 0 {
            break;
        }
        let cut = (*t).min(cut_total);
        *t -= cut;
        cut_total -= cut;
    }
    target
}
