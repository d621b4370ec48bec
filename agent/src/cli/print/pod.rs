//! The pod row: READY, STATUS and RESTARTS as kubectl's `printPod` derives
//! them from container statuses, init containers and conditions.

use super::*;

/// The status summary kubectl's `printPod` computes.
#[derive(Debug, PartialEq)]
pub(super) struct PodSummary {
    pub(super) ready: usize,
    pub(super) total: usize,
    pub(super) reason: String,
    pub(super) restarts: i64,
    pub(super) last_restart: Option<Timestamp>,
}

fn is_true(conditions: &[PodCondition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// When the container's previous run ended, if known.
fn last_finished(c: &ContainerStatus) -> Option<Timestamp> {
    c.last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()
        .map(|t| t.0)
}

/// `Completed`/`Error`/..., or `Signal:N`/`ExitCode:N` without a reason.
fn terminated_reason(state: &ContainerState) -> Option<String> {
    let t = state.terminated.as_ref()?;
    Some(match non_empty(&t.reason) {
        Some(r) => r.to_string(),
        None => match t.signal.unwrap_or(0) {
            0 => format!("ExitCode:{}", t.exit_code),
            signal => format!("Signal:{signal}"),
        },
    })
}

/// kubectl's pod STATUS/READY/RESTARTS derivation (`printPod`).
pub(super) fn pod_summary(pod: &Pod) -> PodSummary {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let status_reason = status.and_then(|s| non_empty(&s.reason));
    let mut reason = status_reason.unwrap_or(phase).to_string();
    if conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".to_string();
    }

    let init_specs = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[]);
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let total = spec.map_or(0, |s| s.containers.len())
        + init_specs
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .count();
    let mut ready = 0;
    let mut restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut sidecar_restarts = 0i64;
    let mut sidecar_last_restart: Option<Timestamp> = None;

    let init_statuses = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or(&[]);
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += i64::from(c.restart_count);
        last_restart = last_restart.max(last_finished(c));
        let sidecar = is_sidecar(&c.name);
        if sidecar {
            sidecar_restarts += i64::from(c.restart_count);
            sidecar_last_restart = sidecar_last_restart.max(last_finished(c));
        }
        let state = c.state.clone().unwrap_or_default();
        if state.terminated.as_ref().is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if sidecar && c.started == Some(true) {
            if c.ready {
                ready += 1;
            }
            continue;
        }
        let waiting = state
            .waiting
            .as_ref()
            .and_then(|w| non_empty(&w.reason))
            .filter(|r| *r != "PodInitializing");
        reason = match (terminated_reason(&state), waiting) {
            (Some(r), _) => format!("Init:{r}"),
            (None, Some(r)) => format!("Init:{r}"),
            (None, None) => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || is_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        let statuses = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or(&[]);
        // Backwards, like kubectl: the first container with a reason wins.
        for c in statuses.iter().rev() {
            restarts += i64::from(c.restart_count);
            last_restart = last_restart.max(last_finished(c));
            let state = c.state.clone().unwrap_or_default();
            if let Some(r) = state.waiting.as_ref().and_then(|w| non_empty(&w.reason)) {
                reason = r.to_string();
            } else if let Some(r) = terminated_reason(&state) {
                reason = r;
            } else if c.ready && state.waiting.is_none() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if is_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    if pod.metadata.deletion_timestamp.is_some() {
        if status_reason == Some("NodeLost") {
            reason = "Unknown".to_string();
        } else if !matches!(phase, "Succeeded" | "Failed") {
            reason = "Terminating".to_string();
        }
    }

    PodSummary {
        ready,
        total,
        reason,
        restarts,
        last_restart,
    }
}

pub(super) fn pod_cells(pod: &Pod, wide: bool, now: Timestamp) -> Vec<String> {
    let s = pod_summary(pod);
    let restarts = match s.last_restart {
        Some(t) if s.restarts != 0 => format!("{} ({} ago)", s.restarts, human_age(t, now)),
        _ => s.restarts.to_string(),
    };
    let mut row = vec![
        name(&pod.metadata),
        format!("{}/{}", s.ready, s.total),
        s.reason,
        restarts,
        age(&pod.metadata, now),
    ];
    if wide {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ips.as_ref()?.first().map(|p| p.ip.clone()))
            .or_else(|| status.and_then(|s| s.pod_ip.clone()))
            .unwrap_or_default();
        let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
        let nominated = status
            .and_then(|s| s.nominated_node_name.clone())
            .unwrap_or_default();
        let gates = spec
            .and_then(|s| s.readiness_gates.as_deref())
            .unwrap_or(&[]);
        let readiness_gates = if gates.is_empty() {
            NONE.to_string()
        } else {
            let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
            let passed = gates
                .iter()
                .filter(|g| {
                    conditions
                        .iter()
                        .find(|c| c.type_ == g.condition_type)
                        .is_some_and(|c| c.status == "True")
                })
                .count();
            format!("{passed}/{}", gates.len())
        };
        row.extend([
            or_none(ip),
            or_none(node),
            or_none(nominated),
            readiness_gates,
        ]);
    }
    row
}
