//! The pod status the agent writes back, computed from what it observed
//! (a pure function, tested with plain data): phase by kubelet's rules,
//! conditions whose transition times move only when their status changes,
//! and one ContainerStatus per container with state, last state and
//! restart count.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One container's state as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Option<Timestamp>,
    },
    Terminated(Terminated),
}

/// A finished run of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub container_id: Option<String>,
}

impl Terminated {
    /// kubelet's reasons: Completed for exit 0, Error otherwise (OOMKilled
    /// is not detected yet).
    fn reason(&self) -> &'static str {
        if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// One container, observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last: Option<Terminated>,
    pub restart_count: i32,
    /// Running, started, and its readiness probe (if any) passing.
    pub ready: bool,
    /// Running and its startup probe (if any) passed.
    pub started: bool,
}

/// The whole pod, observed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub sandbox_ready: bool,
    /// The pod's IPs, the primary (`status.podIP`) first: one per family.
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub start_time: Option<Timestamp>,
    pub restart_policy: String,
    /// Every init container completed (sidecars: started).
    pub initialized: bool,
    /// The pod failed for a reason of its own (reason, message), e.g.
    /// `DeadlineExceeded`, whatever its containers do.
    pub failed: Option<(String, String)>,
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    /// `spec.readinessGates`: condition types that must be True too.
    pub readiness_gates: Vec<String>,
}

/// The phase by kubelet's rules: Pending while init containers run
/// (Failed when one failed and the pod never restarts), then by the app
/// containers.
pub fn phase(view: &PodView) -> &'static str {
    if view.failed.is_some() {
        return "Failed";
    }
    if !view.initialized {
        let failed = view
            .init_containers
            .iter()
            .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        return if failed && view.restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => match &c.last {
                Some(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                None => waiting += 1,
            },
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if view.restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if view.restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// The full status. `prev` keeps condition transition times stable.
pub fn pod_status(prev: Option<&PodStatus>, view: &PodView, now: Timestamp) -> PodStatus {
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let phase = phase(view);
    let containers_ready = unready.is_empty() && phase == "Running";
    let not_ready = (!containers_ready).then(|| {
        (
            "ContainersNotReady".to_string(),
            format!("containers with unready status: [{}]", unready.join(" ")),
        )
    });
    let prev_conditions = prev.and_then(|p| p.conditions.as_deref()).unwrap_or(&[]);
    let cond = |type_: &str, ok: bool, why: Option<(String, String)>| {
        condition(prev_conditions, type_, ok, why, now)
    };
    let gates_not_ready = unready_gates(prev_conditions, &view.readiness_gates);
    let ready_why = not_ready.clone().or(gates_not_ready.clone());
    let incomplete: Vec<&str> = view
        .init_containers
        .iter()
        .filter(|c| !c.ready && !view.initialized)
        .map(|c| c.name.as_str())
        .collect();
    let not_initialized = (!view.initialized).then(|| {
        (
            "ContainersNotInitialized".to_string(),
            format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            ),
        )
    });
    let mut conditions = vec![
        cond("PodReadyToStartContainers", view.sandbox_ready, None),
        cond("Initialized", view.initialized, not_initialized),
        cond(
            "Ready",
            containers_ready && gates_not_ready.is_none(),
            ready_why,
        ),
        cond("ContainersReady", containers_ready, not_ready),
        cond("PodScheduled", true, None),
    ];
    // Readiness gates are conditions others write: kept as they are.
    conditions.extend(
        prev_conditions
            .iter()
            .filter(|c| view.readiness_gates.contains(&c.type_))
            .cloned(),
    );
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.clone()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: view.host_ip.clone(),
        }]),
        pod_ip: view.pod_ips.first().cloned(),
        pod_ips: (!view.pod_ips.is_empty()).then(|| {
            view.pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: view.start_time.map(Time),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        init_container_statuses: (!view.init_containers.is_empty())
            .then(|| view.init_containers.iter().map(container_status).collect()),
        qos_class: prev.and_then(|p| p.qos_class.clone()),
        reason: view.failed.as_ref().map(|(r, _)| r.clone()),
        message: view.failed.as_ref().map(|(_, m)| m.clone()),
        ..Default::default()
    }
}

/// kubelet's reason and message when a readiness gate is not True.
fn unready_gates(prev: &[PodCondition], gates: &[String]) -> Option<(String, String)> {
    let msgs: Vec<String> = gates
        .iter()
        .filter_map(|g| match prev.iter().find(|c| &c.type_ == g) {
            None => Some(format!(
                "corresponding condition of pod readiness gate \"{g}\" does not exist."
            )),
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate \"{g}\" is not \"True\", but {}",
                c.status
            )),
            Some(_) => None,
        })
        .collect();
    (!msgs.is_empty()).then(|| ("ReadinessGatesNotReady".to_string(), msgs.join(", ")))
}

fn condition(
    prev: &[PodCondition],
    type_: &str,
    ok: bool,
    why: Option<(String, String)>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let (reason, message) = why.map_or((None, None), |(r, m)| (Some(r), Some(m)));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since),
        reason,
        message,
        ..Default::default()
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c
            .container_id
            .as_ref()
            .map(|id| format!("containerd://{id}")),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state(&c.state)),
        last_state: Some(
            c.last
                .as_ref()
                .map(|t| state(&State::Terminated(t.clone())))
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

fn state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: started_at.map(Time),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                reason: Some(t.reason().to_string()),
                started_at: t.started_at.map(Time),
                finished_at: t.finished_at.map(Time),
                container_id: t
                    .container_id
                    .as_ref()
                    .map(|id| format!("containerd://{id}")),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(policy: &str, states: Vec<(State, Option<i32>)>) -> PodView {
        PodView {
            sandbox_ready: true,
            pod_ips: vec!["10.244.0.5".into(), "fd00:10:244::5".into()],
            host_ip: "192.0.2.1".into(),
            start_time: None,
            restart_policy: policy.into(),
            initialized: true,
            failed: None,
            init_containers: Vec::new(),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, (state, last))| ContainerView {
                    name: format!("c{i}"),
                    image: "busybox".into(),
                    image_id: String::new(),
                    container_id: None,
                    ready: matches!(state, State::Running { .. }),
                    started: matches!(state, State::Running { .. }),
                    state,
                    last: last.map(exited),
                    restart_count: 0,
                })
                .collect(),
            readiness_gates: Vec::new(),
        }
    }

    fn condition_of<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn init_containers_hold_the_pod_pending_and_uninitialized() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut v = view("Always", vec![(waiting("PodInitializing"), None)]);
        let init = view(
            "Always",
            vec![(State::Terminated(exited(0)), None), (RUNNING, None)],
        );
        v.init_containers = init.containers;
        v.init_containers[0].ready = true;
        v.init_containers[1].ready = false;
        v.init_containers[1].name = "second".into();
        v.initialized = false;
        let s = pod_status(None, &v, now);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = condition_of(&s, "Initialized");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            c.message.as_deref(),
            Some("containers with incomplete status: [second]")
        );
        let init = s.init_container_statuses.unwrap();
        assert_eq!(init.len(), 2);
        assert!(init[0].ready && init[0].state.as_ref().unwrap().terminated.is_some());
        // A failed init container under Never fails the pod; under
        // OnFailure/Always it is retried and the pod stays Pending.
        v.init_containers[1].state = State::Terminated(exited(1));
        v.restart_policy = "Never".into();
        assert_eq!(phase(&v), "Failed");
        v.restart_policy = "OnFailure".into();
        assert_eq!(phase(&v), "Pending");
        v.initialized = true;
        v.containers[0].state = RUNNING;
        assert_eq!(phase(&v), "Running");
        assert_eq!(
            condition_of(&pod_status(None, &v, now), "Initialized").status,
            "True"
        );
    }

    #[test]
    fn a_running_container_failing_readiness_keeps_the_pod_unready() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut v = view("Always", vec![(RUNNING, None), (RUNNING, None)]);
        v.containers[1].ready = false;
        let s = pod_status(None, &v, now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = condition_of(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [c1]")
        );
        let cs = s.container_statuses.unwrap();
        assert!(cs[0].ready && !cs[1].ready);
        assert_eq!(cs[1].started, Some(true));
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_condition_is_true() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut v = view("Always", vec![(RUNNING, None)]);
        v.readiness_gates = vec!["example.com/lb".into()];
        let s = pod_status(None, &v, now);
        assert_eq!(condition_of(&s, "ContainersReady").status, "True");
        let ready = condition_of(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
            )
        );
        // Someone else sets the gate's condition: it is kept, and Ready follows.
        let mut prev = s.clone();
        prev.conditions.as_mut().unwrap().push(PodCondition {
            type_: "example.com/lb".into(),
            status: "True".into(),
            ..Default::default()
        });
        let s = pod_status(Some(&prev), &v, now);
        assert_eq!(condition_of(&s, "Ready").status, "True");
        assert_eq!(condition_of(&s, "example.com/lb").status, "True");
    }

    fn exited(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            started_at: None,
            finished_at: None,
            container_id: None,
        }
    }

    fn waiting(reason: &str) -> State {
        State::Waiting {
            reason: reason.into(),
            message: None,
        }
    }

    const RUNNING: State = State::Running { started_at: None };

    #[test]
    fn phases_follow_kubelet() {
        let t = |c| State::Terminated(exited(c));
        assert_eq!(
            phase(&view("Always", vec![(waiting("ContainerCreating"), None)])),
            "Pending"
        );
        assert_eq!(
            phase(&view(
                "Always",
                vec![(RUNNING, None), (waiting("ErrImagePull"), None)]
            )),
            "Pending"
        );
        assert_eq!(phase(&view("Always", vec![(RUNNING, None)])), "Running");
        // A crash-looping container keeps an Always pod Running.
        assert_eq!(
            phase(&view(
                "Always",
                vec![(waiting("CrashLoopBackOff"), Some(1))]
            )),
            "Running"
        );
        assert_eq!(
            phase(&view("Never", vec![(t(0), None), (t(0), None)])),
            "Succeeded"
        );
        assert_eq!(
            phase(&view("Never", vec![(t(0), None), (t(2), None)])),
            "Failed"
        );
        assert_eq!(phase(&view("OnFailure", vec![(t(0), None)])), "Succeeded");
        assert_eq!(
            phase(&view(
                "OnFailure",
                vec![(waiting("CrashLoopBackOff"), Some(1))]
            )),
            "Running"
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_change() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let v = view("Always", vec![(waiting("ContainerCreating"), None)]);
        let s0 = pod_status(None, &v, t0);
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&s0).status, "False");
        assert_eq!(
            ready(&s0).message.as_deref(),
            Some("containers with unready status: [c0]")
        );
        let s1 = pod_status(Some(&s0), &v, t1);
        assert_eq!(ready(&s1).last_transition_time, Some(Time(t0)));
        let s2 = pod_status(Some(&s1), &view("Always", vec![(RUNNING, None)]), t1);
        assert_eq!(ready(&s2).status, "True");
        assert_eq!(ready(&s2).last_transition_time, Some(Time(t1)));
        assert_eq!(s2.pod_ip.as_deref(), Some("10.244.0.5"));
    }

    #[test]
    fn container_status_carries_reason_restarts_and_last_state() {
        let mut v = view("Always", vec![(waiting("CrashLoopBackOff"), Some(3))]);
        v.containers[0].restart_count = 4;
        let s = pod_status(None, &v, Timestamp::UNIX_EPOCH);
        let cs = &s.container_statuses.unwrap()[0];
        assert_eq!(cs.restart_count, 4);
        assert!(!cs.ready);
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    }
}
