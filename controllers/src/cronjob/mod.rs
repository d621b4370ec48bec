//! The CronJob controller: at each time its `schedule` names (in its
//! `timeZone`, else the controller's local zone), a CronJob creates a Job
//! from its `jobTemplate`, named `<cronjob>-<minutes since the epoch>` as
//! kube names it, so one scheduled time makes one Job however many times
//! it is synced. Only the most recent missed time runs, and not if it is
//! older than `startingDeadlineSeconds`. `concurrencyPolicy`: Allow runs
//! beside active Jobs, Forbid skips while one is active, Replace deletes
//! the active ones first. `suspend` stops new runs. Finished Jobs beyond
//! `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted,
//! oldest first. Status: `active`, `lastScheduleTime`,
//! `lastSuccessfulTime`. [`plan`] decides from plain data and a clock.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use controlplane::cron::Schedule;
use controlplane::events::{Recorder, Type};
use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::informer::Cache;
use crate::pods::{controlled_by, controller_ref};
use crate::{Error, Result};

/// The annotation kube puts on a CronJob's Job: its scheduled time.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed times older than this are not looked for.
const LOOKBACK: SignedDuration = SignedDuration::from_hours(24 * 7);

/// What one sync of a CronJob should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Create the Job for this scheduled time.
    pub create: Option<Timestamp>,
    /// Jobs to delete (replaced, or beyond the history limits).
    pub delete: Vec<String>,
    pub status: CronJobStatus,
    /// A warning event: (reason, message).
    pub warning: Option<(String, String)>,
    pub requeue_after: Option<Duration>,
}

fn finished(job: &Job) -> Option<(&str, Timestamp)> {
    let status = job.status.as_ref()?;
    let c = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let at = c
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    Some((c.type_.as_str(), at))
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The Job name for scheduled time `t`.
pub fn job_name(cron_job: &str, t: Timestamp) -> String {
    format!("{cron_job}-{}", t.as_second().div_euclid(60))
}

/// The most recent scheduled time in `(after, now]`, and the next one
/// after `now`, in `tz`.
fn times(
    s: &Schedule,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let from = after.max(now - LOOKBACK);
    let mut t = from.to_zoned(tz.clone()).datetime();
    let mut due = None;
    loop {
        let Some(n) = s.next_after(t) else {
            return (due, None);
        };
        let Ok(at) = n.to_zoned(tz.clone()).map(|z| z.timestamp()) else {
            return (due, None);
        };
        if at > now {
            return (due, Some(at));
        }
        due = Some(at);
        t = n;
    }
}

/// Decides one sync of `cj`, whose Jobs (controlled by it) are `jobs`.
pub fn plan(cj: &CronJob, jobs: &[Job], now: Timestamp, local: &TimeZone) -> Plan {
    let mut p = Plan {
        status: cj.status.clone().unwrap_or_default(),
        ..Plan::default()
    };
    let Some(spec) = cj.spec.as_ref() else {
        return p;
    };
    let name = cj.metadata.name.as_deref().unwrap_or_default();

    let mut active: Vec<&Job> = jobs.iter().filter(|j| finished(j).is_none()).collect();
    active.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut succeeded: Vec<(Timestamp, &Job)> = Vec::new();
    let mut failed: Vec<(Timestamp, &Job)> = Vec::new();
    for j in jobs {
        match finished(j) {
            Some(("Complete", at)) => succeeded.push((at, j)),
            Some((_, at)) => failed.push((at, j)),
            None => {}
        }
    }
    if let Some(last) = succeeded.iter().map(|(at, _)| *at).max() {
        let known = p.status.last_successful_time.as_ref().map(|t| t.0);
        if known.is_none_or(|k| k < last) {
            p.status.last_successful_time = Some(Time(last));
        }
    }
    for (list, limit) in [
        (
            &mut succeeded,
            spec.successful_jobs_history_limit.unwrap_or(3),
        ),
        (&mut failed, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        list.sort_by_key(|(at, _)| *at);
        let extra = list
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for (_, j) in list.iter().take(extra) {
            p.delete.push(j.metadata.name.clone().unwrap_or_default());
        }
    }

    let tz = match spec.time_zone.as_deref() {
        Some(zone) => match TimeZone::get(zone) {
            Ok(tz) => tz,
            Err(_) => {
                p.warning = Some((
                    "UnknownTimeZone".into(),
                    format!("invalid timeZone: {zone:?}"),
                ));
                p.status.active = Some(active.iter().map(|j| reference(j)).collect());
                return p;
            }
        },
        None => local.clone(),
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(why) => {
            p.warning = Some(("InvalidSchedule".into(), format!("invalid schedule: {why}")));
            p.status.active = Some(active.iter().map(|j| reference(j)).collect());
            return p;
        }
    };
    let mut since = p
        .status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        since = since.max(now - SignedDuration::from_secs(deadline.max(0)));
    }
    let (due, next) = times(&schedule, &tz, since, now);
    p.requeue_after =
        next.map(|n| Duration::try_from(n.duration_since(now)).unwrap_or(Duration::ZERO));

    if let Some(at) = due.filter(|_| !spec.suspend.unwrap_or(false)) {
        let made = job_name(name, at);
        let exists = jobs
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(&made));
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let others_active = active
            .iter()
            .any(|j| j.metadata.name.as_deref() != Some(&made));
        if exists {
            p.status.last_schedule_time = Some(Time(at));
        } else if policy == "Forbid" && others_active {
            // Skipped: tried again when the active Job finishes (its
            // change queues us) or at the next time.
        } else {
            if policy == "Replace" {
                for j in active.drain(..) {
                    p.delete.push(j.metadata.name.clone().unwrap_or_default());
                }
            }
            p.create = Some(at);
            p.status.last_schedule_time = Some(Time(at));
        }
    }
    p.status.active = Some(active.iter().map(|j| reference(j)).collect());
    p
}

/// The Job `cj` runs at `at`.
pub fn new_job(cj: &CronJob, at: Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), at.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or_default(),
                at,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The controller.
pub struct CronJobController {
    pub cp: Arc<dyn ControlPlane>,
    pub cron_jobs: Cache,
    pub jobs: Cache,
    pub events: Recorder,
}

impl CronJobController {
    /// The CronJob controlling a Job, to queue when the Job changes.
    pub fn key_for_job(job: &Object) -> Option<ObjectRef> {
        let r = crate::pods::controller_of(job.meta())?;
        (r.kind == "CronJob").then(|| ObjectRef::new(Kind::CronJob, job.namespace(), &r.name))
    }

    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::CronJob(cj)) = self.cron_jobs.get(key) else {
            return Ok(None);
        };
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let jobs: Vec<Job> = self
            .jobs
            .in_namespace(&key.namespace)
            .into_iter()
            .filter_map(|o| match o {
                Object::Job(j) if controlled_by(&j.metadata, &uid) => Some(*j),
                _ => None,
            })
            .collect();
        let plan = plan(&cj, &jobs, Timestamp::now(), &TimeZone::system());
        if let Some((reason, message)) = &plan.warning {
            self.events.about(
                &Object::CronJob(cj.clone()),
                Type::Warning,
                reason,
                message.clone(),
            );
        }
        for name in &plan.delete {
            let job = ObjectRef::new(Kind::Job, &key.namespace, name);
            match self.cp.delete(&job, None).await {
                Ok(_) => {
                    let msg = format!("Deleted job {name}");
                    self.events.about(
                        &Object::CronJob(cj.clone()),
                        Type::Normal,
                        "SuccessfulDelete",
                        msg,
                    );
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::write(format!("delete {job}"), e)),
            }
        }
        if let Some(at) = plan.create {
            let job = new_job(&cj, at);
            let name = job.metadata.name.clone().unwrap_or_default();
            match self.cp.create(Object::from(job), None).await {
                Ok(_) => {
                    let msg = format!("Created job {name}");
                    self.events.about(
                        &Object::CronJob(cj.clone()),
                        Type::Normal,
                        "SuccessfulCreate",
                        msg,
                    );
                }
                Err(controlplane::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::write(format!("create Job {name}"), e)),
            }
        }
        if cj.status.as_ref() != Some(&plan.status) {
            let mut updated = cj.clone();
            updated.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::CronJob(updated), key).await?;
        }
        // Wake a little after the next time, so it is due.
        Ok(plan.requeue_after.map(|d| d + Duration::from_millis(100)))
    }
}
