//! The Job controller's decisions, from plain data.

use super::*;
use crate::fixtures::{owner_meta, status, template};
use k8s_openapi::api::batch::v1::JobSpec;

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn job(completions: Option<i32>, parallelism: i32) -> Job {
    let mut t = template("busybox");
    t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    Job {
        metadata: owner_meta("job-uid"),
        spec: Some(JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(2),
            template: t,
            ..Default::default()
        }),
        status: None,
    }
}

fn pod(j: &Job, name: &str, phase: &str) -> Pod {
    let mut p = new_pod(j);
    p.metadata.name = Some(name.into());
    p.status = Some(status(phase, phase == "Running"));
    p
}

#[test]
fn runs_parallelism_pods_until_completions_succeed() {
    let j = job(Some(3), 2);
    let p = plan(&j, &[], now());
    assert_eq!(p.create, 2);
    assert!(p.status.start_time.is_some());
    let pods = [pod(&j, "a", "Succeeded"), pod(&j, "b", "Running")];
    // Two left to do, one running: one more (parallelism 2).
    assert_eq!(plan(&j, &pods, now()).create, 1);
    let pods = [
        pod(&j, "a", "Succeeded"),
        pod(&j, "b", "Succeeded"),
        pod(&j, "c", "Running"),
    ];
    // One left to do and running: nothing more.
    assert_eq!(plan(&j, &pods, now()).create, 0);
    let pods = [
        pod(&j, "a", "Succeeded"),
        pod(&j, "b", "Succeeded"),
        pod(&j, "c", "Succeeded"),
    ];
    let p = plan(&j, &pods, now());
    let c = &p.status.conditions.as_ref().unwrap()[0];
    assert_eq!((c.type_.as_str(), c.status.as_str()), ("Complete", "True"));
    assert!(p.status.completion_time.is_some());
    assert_eq!(p.status.succeeded, Some(3));
}

#[test]
fn too_many_failures_fail_the_job_and_stop_its_pods() {
    let j = job(Some(1), 1);
    let pods = [
        pod(&j, "a", "Failed"),
        pod(&j, "b", "Failed"),
        pod(&j, "c", "Failed"),
        pod(&j, "d", "Running"),
    ];
    let p = plan(&j, &pods, now());
    let c = &p.status.conditions.as_ref().unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.reason.as_deref()),
        ("Failed", Some("BackoffLimitExceeded"))
    );
    assert_eq!(p.delete, ["d"]);
    // Two failures are within the limit: a new pod replaces them.
    let p = plan(&j, &pods[..2], now());
    assert_eq!(p.create, 1);
}

#[test]
fn the_deadline_fails_the_job_and_the_ttl_deletes_it() {
    let mut j = job(Some(1), 1);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(10);
    j.status = Some(JobStatus {
        start_time: Some(podutil::time(
            Timestamp::from_second(1_000_000 - 11).unwrap(),
        )),
        ..Default::default()
    });
    let p = plan(&j, &[pod(&j, "a", "Running")], now());
    let c = &p.status.conditions.as_ref().unwrap()[0];
    assert_eq!(c.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(p.delete, ["a"]);
    // Finished 30 s ago with a TTL of 60: later; with 20: now.
    let mut done = job(Some(1), 1);
    done.status = Some(JobStatus {
        conditions: Some(vec![condition(
            "Complete",
            "CompletionsReached",
            "",
            Timestamp::from_second(1_000_000 - 30).unwrap(),
        )]),
        ..Default::default()
    });
    done.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(60);
    let p = plan(&done, &[], now());
    assert!(!p.delete_job && p.requeue_after.is_some());
    done.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(20);
    assert!(plan(&done, &[], now()).delete_job);
}

#[test]
fn a_work_queue_job_is_done_when_one_succeeded_and_none_runs() {
    let j = job(None, 2);
    assert_eq!(plan(&j, &[], now()).create, 2);
    let pods = [pod(&j, "a", "Succeeded"), pod(&j, "b", "Running")];
    let p = plan(&j, &pods, now());
    assert_eq!(p.create, 0);
    assert!(p.status.conditions.is_none());
    let pods = [pod(&j, "a", "Succeeded"), pod(&j, "b", "Succeeded")];
    assert!(plan(&j, &pods, now()).status.conditions.is_some());
}

#[test]
fn suspend_stops_the_pods() {
    let mut j = job(Some(1), 1);
    j.spec.as_mut().unwrap().suspend = Some(true);
    let p = plan(&j, &[pod(&j, "a", "Running")], now());
    assert_eq!((p.create, p.delete.clone()), (0, vec!["a".to_string()]));
}
