//! Rows of the workload and network kinds, with the columns
//! kube-apiserver's table printers give them (kubectl 1.3x): Deployment,
//! ReplicaSet, DaemonSet, StatefulSet, ControllerRevision, Job, CronJob,
//! EndpointSlice, NetworkPolicy, PodDisruptionBudget, Event.

use controlplane::labels;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobCondition};
use k8s_openapi::api::core::v1::{Event, PodTemplateSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

/// The wide columns of every pod-owning workload.
pub(super) const CONTAINERS_IMAGES_SELECTOR: &[&str] = &["CONTAINERS", "IMAGES", "SELECTOR"];
/// kubectl shows at most this many ports or addresses of a slice.
const MAX_LISTED: usize = 3;

/// CONTAINERS and IMAGES of a template, comma-joined.
fn containers_images(t: Option<&PodTemplateSpec>) -> [String; 2] {
    let containers = t
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    [
        containers
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(","),
        containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
    ]
}

/// The wide cells: CONTAINERS, IMAGES and (when given) SELECTOR.
fn wide_cells(
    row: &mut Vec<String>,
    t: Option<&PodTemplateSpec>,
    selector: Option<&LabelSelector>,
) {
    row.extend(containers_images(t));
    if let Some(sel) = selector {
        row.push(labels::format(sel));
    }
}

fn num(n: Option<i32>) -> String {
    n.unwrap_or(0).to_string()
}

pub(super) fn deployment_cells(d: &Deployment, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = d.spec.as_ref();
    let status = d.status.clone().unwrap_or_default();
    let mut row = vec![
        name(&d.metadata),
        format!(
            "{}/{}",
            num(status.ready_replicas),
            num(spec.and_then(|s| s.replicas))
        ),
        num(status.updated_replicas),
        num(status.available_replicas),
        age(&d.metadata, now),
    ];
    if wide {
        wide_cells(
            &mut row,
            spec.map(|s| &s.template),
            spec.map(|s| &s.selector),
        );
    }
    row
}

pub(super) fn replica_set_cells(r: &ReplicaSet, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = r.spec.as_ref();
    let status = r.status.clone().unwrap_or_default();
    let mut row = vec![
        name(&r.metadata),
        num(spec.and_then(|s| s.replicas)),
        status.replicas.to_string(),
        num(status.ready_replicas),
        age(&r.metadata, now),
    ];
    if wide {
        wide_cells(
            &mut row,
            spec.and_then(|s| s.template.as_ref()),
            spec.map(|s| &s.selector),
        );
    }
    row
}

pub(super) fn daemon_set_cells(d: &DaemonSet, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = d.spec.as_ref();
    let status = d.status.clone().unwrap_or_default();
    let node_selector = spec
        .and_then(|s| s.template.spec.as_ref()?.node_selector.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let mut row = vec![
        name(&d.metadata),
        status.desired_number_scheduled.to_string(),
        status.current_number_scheduled.to_string(),
        status.number_ready.to_string(),
        num(status.updated_number_scheduled),
        num(status.number_available),
        or_none(node_selector),
        age(&d.metadata, now),
    ];
    if wide {
        wide_cells(
            &mut row,
            spec.map(|s| &s.template),
            spec.map(|s| &s.selector),
        );
    }
    row
}

pub(super) fn stateful_set_cells(s: &StatefulSet, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = s.spec.as_ref();
    let status = s.status.clone().unwrap_or_default();
    let mut row = vec![
        name(&s.metadata),
        format!(
            "{}/{}",
            num(status.ready_replicas),
            num(spec.and_then(|s| s.replicas))
        ),
        age(&s.metadata, now),
    ];
    if wide {
        wide_cells(&mut row, spec.map(|s| &s.template), None);
    }
    row
}

pub(super) fn controller_revision_cells(r: &ControllerRevision, now: Timestamp) -> Vec<String> {
    let controller = r
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| {
            let group = o.api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let kind = o.kind.to_ascii_lowercase();
            if group.is_empty() {
                format!("{kind}/{}", o.name)
            } else {
                format!("{kind}.{group}/{}", o.name)
            }
        })
        .unwrap_or_default();
    vec![
        name(&r.metadata),
        or_none(controller),
        r.revision.to_string(),
        age(&r.metadata, now),
    ]
}

fn has_condition(conditions: &[JobCondition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub(super) fn job_cells(j: &Job, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = j.spec.as_ref();
    let status = j.status.clone().unwrap_or_default();
    let succeeded = num(status.succeeded);
    let completions = match spec.and_then(|s| s.completions) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match spec.and_then(|s| s.parallelism).unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (&status.start_time, &status.completion_time) {
        (None, _) => String::new(),
        (Some(start), None) => human_age(start.0, now),
        (Some(start), Some(end)) => human_age(start.0, end.0),
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let state = if has_condition(conditions, "Complete") {
        "Complete"
    } else if has_condition(conditions, "Failed") {
        "Failed"
    } else if j.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if has_condition(conditions, "Suspended") {
        "Suspended"
    } else if has_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(conditions, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let mut row = vec![
        name(&j.metadata),
        state.to_string(),
        completions,
        duration,
        age(&j.metadata, now),
    ];
    if wide {
        wide_cells(
            &mut row,
            spec.map(|s| &s.template),
            Some(&spec.and_then(|s| s.selector.clone()).unwrap_or_default()),
        );
    }
    row
}

pub(super) fn cron_job_cells(c: &CronJob, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = c.spec.clone().unwrap_or_default();
    let status = c.status.clone().unwrap_or_default();
    let suspend = match spec.suspend {
        Some(true) => "True",
        Some(false) => "False",
        None => NONE,
    };
    let last = status
        .last_schedule_time
        .map_or_else(|| NONE.to_string(), |t| human_age(t.0, now));
    let mut row = vec![
        name(&c.metadata),
        spec.schedule.clone(),
        or_none(spec.time_zone.clone().unwrap_or_default()),
        suspend.to_string(),
        status.active.map_or(0, |a| a.len()).to_string(),
        last,
        age(&c.metadata, now),
    ];
    if wide {
        let job = spec.job_template.spec.as_ref();
        wide_cells(
            &mut row,
            job.map(|j| &j.template),
            Some(&job.and_then(|j| j.selector.clone()).unwrap_or_default()),
        );
    }
    row
}

/// kubectl's `listWithMoreString`: the first three, `+ N more...`, or
/// `<unset>` when empty.
fn list_with_more(items: Vec<String>) -> String {
    let count = items.len();
    let mut s = items
        .into_iter()
        .take(MAX_LISTED)
        .collect::<Vec<_>>()
        .join(",");
    if count > MAX_LISTED {
        s.push_str(&format!(" + {} more...", count - MAX_LISTED));
    }
    if s.is_empty() {
        "<unset>".to_string()
    } else {
        s
    }
}

pub(super) fn endpoint_slice_cells(s: &EndpointSlice, now: Timestamp) -> Vec<String> {
    let ports = s
        .ports
        .iter()
        .flatten()
        .map(|p| match (p.port, &p.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => "*".to_string(),
        })
        .collect();
    let addresses = s
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    vec![
        name(&s.metadata),
        s.address_type.clone(),
        list_with_more(ports),
        list_with_more(addresses),
        age(&s.metadata, now),
    ]
}

pub(super) fn network_policy_cells(np: &NetworkPolicy, now: Timestamp) -> Vec<String> {
    let sel = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    vec![
        name(&np.metadata),
        labels::format(&sel),
        age(&np.metadata, now),
    ]
}

pub(super) fn pdb_cells(p: &PodDisruptionBudget, now: Timestamp) -> Vec<String> {
    let spec = p.spec.clone().unwrap_or_default();
    let show = |v: Option<IntOrString>| match v {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s,
        None => "N/A".to_string(),
    };
    vec![
        name(&p.metadata),
        show(spec.min_available),
        show(spec.max_unavailable),
        p.status
            .as_ref()
            .map_or(0, |s| s.disruptions_allowed)
            .to_string(),
        age(&p.metadata, now),
    ]
}

/// An Event's row: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (wide:
/// SUBOBJECT, SOURCE, FIRST SEEN, COUNT, NAME).
pub(super) fn event_cells(ev: &Event, wide: bool, now: Timestamp) -> Vec<String> {
    let first = ev
        .first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| ev.event_time.as_ref().map(|t| t.0))
        .or_else(|| ev.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let last = ev
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| ev.last_timestamp.as_ref().map(|t| t.0))
        .or(first);
    let seen = |t: Option<Timestamp>| t.map_or_else(|| UNKNOWN.to_string(), |t| human_age(t, now));
    let o = &ev.involved_object;
    let object = format!(
        "{}/{}",
        o.kind.clone().unwrap_or_default().to_ascii_lowercase(),
        o.name.clone().unwrap_or_default()
    );
    let mut row = vec![
        seen(last),
        ev.type_.clone().unwrap_or_default(),
        ev.reason.clone().unwrap_or_default(),
        object,
        ev.message.clone().unwrap_or_default().trim().to_string(),
    ];
    if wide {
        let source = ev
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or_else(|| ev.reporting_component.clone())
            .unwrap_or_default();
        row.extend([
            o.field_path.clone().unwrap_or_default(),
            source,
            seen(first),
            ev.count.unwrap_or(1).to_string(),
            name(&ev.metadata),
        ]);
    }
    row
}
