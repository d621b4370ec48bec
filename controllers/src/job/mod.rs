//! The Job controller: runs pods from the template until `completions`
//! succeed (or, without completions, until one succeeds and none is left
//! running), at most `parallelism` at a time; fails the Job when more
//! pods fail than `backoffLimit` allows or when it has run longer than
//! `activeDeadlineSeconds`; `suspend` stops its pods; a finished Job is
//! deleted `ttlSecondsAfterFinished` later (its pods go with it, by the
//! collector). Conditions `Complete` and `Failed` as kube writes them, so
//! `kubectl wait --for=condition=complete` works. Indexed completion
//! mode is not run yet (the Job is marked Failed saying so). [`plan`]
//! decides from plain data.

use std::sync::Arc;
use std::time::Duration;

use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::informer::Cache;
use crate::pods::{self as podutil, controlled_by};
use crate::Result;

/// What one sync of a Job should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: usize,
    pub delete: Vec<String>,
    pub status: JobStatus,
    /// The Job itself goes (its TTL after finishing passed).
    pub delete_job: bool,
    pub requeue_after: Option<Duration>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// The time a finished Job finished, if it has.
fn finished_at(status: &JobStatus) -> Option<Timestamp> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH)
        })
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(podutil::time(now)),
        last_transition_time: Some(podutil::time(now)),
    }
}

/// Decides one sync of `job` from the pods of its namespace.
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> Plan {
    let mut p = Plan::default();
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let prev = job.status.clone().unwrap_or_default();
    let mine: Vec<&Pod> = pods
        .iter()
        .filter(|pod| controlled_by(&pod.metadata, uid))
        .collect();
    let live: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|pod| {
            !matches!(phase(pod), "Succeeded" | "Failed") && !podutil::is_terminating(&pod.metadata)
        })
        .collect();
    let succeeded = (mine.iter().filter(|pod| phase(pod) == "Succeeded").count() as i32)
        .max(prev.succeeded.unwrap_or(0));
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let failed_pods = mine.iter().filter(|pod| phase(pod) == "Failed").count() as i32;
    // With OnFailure the kubelet restarts containers in place; kube counts
    // those restarts against the backoff limit.
    let failures = failed_pods.max(prev.failed.unwrap_or(0))
        + if on_failure {
            live.iter().map(|pod| restarts(pod)).sum::<i32>()
        } else {
            0
        };
    let name_of = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
    let mut status = JobStatus {
        active: Some(live.len() as i32),
        ready: Some(live.iter().filter(|pod| podutil::is_ready(pod)).count() as i32),
        succeeded: Some(succeeded),
        failed: Some(failed_pods.max(prev.failed.unwrap_or(0))),
        start_time: prev.start_time.clone(),
        completion_time: prev.completion_time.clone(),
        conditions: prev.conditions.clone(),
        ..Default::default()
    };

    // Finished: nothing runs; the TTL may delete the Job.
    if let Some(at) = finished_at(&prev) {
        p.delete = live.iter().map(|pod| name_of(pod)).collect();
        status.active = Some(0);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let due = at + SignedDuration::from_secs(i64::from(ttl.max(0)));
            if due <= now {
                p.delete_job = true;
            } else {
                p.requeue_after = Some(Duration::from_secs_f64(
                    due.duration_since(now).as_secs_f64().max(0.0) + 0.1,
                ));
            }
        }
        p.status = status;
        return p;
    }
    let suspended = spec.suspend == Some(true);
    if suspended {
        p.delete = live.iter().map(|pod| name_of(pod)).collect();
        p.status = status;
        return p;
    }
    if status.start_time.is_none() {
        status.start_time = Some(podutil::time(now));
    }
    let started = status.start_time.as_ref().map(|t| t.0).unwrap_or(now);
    let fail = |reason: &str, message: &str, p: &mut Plan, status: &mut JobStatus| {
        p.delete = live.iter().map(|pod| name_of(pod)).collect();
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition("Failed", reason, message, now));
    };
    if spec.completion_mode.as_deref() == Some("Indexed") {
        fail(
            "IndexedJobNotSupported",
            "Indexed completion mode is not run by this controller yet",
            &mut p,
            &mut status,
        );
        p.status = status;
        return p;
    }
    if let Some(deadline) = spec.active_deadline_seconds {
        let due = started + SignedDuration::from_secs(deadline.max(0));
        if due <= now {
            fail(
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                &mut p,
                &mut status,
            );
            p.status = status;
            return p;
        }
        p.requeue_after = Some(Duration::from_secs_f64(
            due.duration_since(now).as_secs_f64() + 0.1,
        ));
    }
    if failures > spec.backoff_limit.unwrap_or(6) {
        fail(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            &mut p,
            &mut status,
        );
        p.status = status;
        return p;
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let done = match spec.completions {
        Some(c) => succeeded >= c,
        // A work queue: done when one succeeded and none still runs.
        None => succeeded > 0 && live.is_empty(),
    };
    if done {
        p.delete = live.iter().map(|pod| name_of(pod)).collect();
        status.completion_time = Some(podutil::time(now));
        status.active = Some(0);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        p.status = status;
        // The TTL counts from now: sync again to apply it.
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            p.requeue_after = Some(
                Duration::from_secs(u64::try_from(ttl.max(0)).unwrap_or(0))
                    + Duration::from_millis(100),
            );
        }
        return p;
    }
    let want = match spec.completions {
        Some(c) => parallelism.min((c - succeeded).max(0) as usize),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    if live.len() < want {
        p.create = want - live.len();
    } else if live.len() > want {
        let mut extra = live.clone();
        extra.sort_by_key(|pod| {
            std::cmp::Reverse(pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        p.delete = extra[..live.len() - want]
            .iter()
            .map(|pod| name_of(pod))
            .collect();
    }
    p.status = status;
    p
}

/// A new pod of `job`: its template, a generated name, the controller
/// reference.
pub fn new_pod(job: &Job) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", podutil::random_suffix())),
            namespace: job.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![podutil::controller_ref(
                "batch/v1",
                "Job",
                &job.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Syncs Jobs against the caches.
pub struct JobController {
    pub cp: Arc<dyn ControlPlane>,
    pub jobs: Cache,
    pub pods: Cache,
}

impl JobController {
    /// One sync of the Job `key`.
    pub async fn sync(&self, key: &ObjectRef) -> Result<Option<Duration>> {
        let Some(Object::Job(job)) = self.jobs.get(key) else {
            return Ok(None);
        };
        if podutil::is_terminating(&job.metadata) {
            return Ok(None);
        }
        let pods = self.pods.pods(&key.namespace);
        let plan = plan(&job, &pods, Timestamp::now());
        if plan.delete_job {
            let rev = controlplane::api::revision_of(&Object::Job(job.clone()))?;
            match self.cp.delete(key, rev).await {
                Ok(_) => tracing::info!(job = %key, "deleted: ttlSecondsAfterFinished passed"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(crate::Error::write(format!("delete {key}"), e)),
            }
            return Ok(None);
        }
        let new = (0..plan.create).map(|_| new_pod(&job)).collect();
        let (created, failed) = podutil::create_slow_start(&self.cp, new).await;
        for name in created {
            tracing::info!(job = %key, pod = %name, "created pod");
        }
        if let Some((name, e)) = failed {
            return Err(crate::Error::write(
                format!("create pod {name} for {key}"),
                e,
            ));
        }
        for name in &plan.delete {
            match self
                .cp
                .delete(&ObjectRef::new(Kind::Pod, &key.namespace, name), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(crate::Error::write(
                        format!("delete pod {name} of {key}"),
                        e,
                    ))
                }
            }
        }
        if job.status.as_ref() != Some(&plan.status) {
            let mut job = job;
            job.status = Some(plan.status);
            crate::write_status(self.cp.as_ref(), Object::Job(job), key).await?;
        }
        Ok(plan.requeue_after)
    }

    /// The Jobs a pod change concerns.
    pub fn keys_for_pod(jobs: &Cache, pod: &Object) -> Vec<ObjectRef> {
        jobs.owners_of(pod, Kind::Job, |o| match o {
            Object::Job(j) => j.spec.as_ref().and_then(|s| s.selector.as_ref()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
