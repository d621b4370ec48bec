use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::*;

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// Every 5 minutes, created at 10:00 UTC.
fn cron(extra: Value) -> CronJob {
    let mut v = json!({
        "metadata": {"name": "backup", "namespace": "default", "uid": "cj-uid",
                     "creationTimestamp": "2026-12-07T10:00:00Z"},
        "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow",
                 "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1,
                 "jobTemplate": {"metadata": {"labels": {"app": "backup"}},
                                 "spec": {"template": {"spec": {"restartPolicy": "Never",
                                     "containers": [{"name": "c", "image": "busybox"}]}}}}}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn job(at: &str, state: Option<(&str, &str)>) -> Job {
    let mut v = json!({"metadata": {"name": job_name("backup", ts(at)), "namespace": "default",
        "creationTimestamp": at}});
    if let Some((ty, when)) = state {
        v["status"] =
            json!({"conditions": [{"type": ty, "status": "True", "lastTransitionTime": when}]});
    }
    serde_json::from_value(v).unwrap()
}

fn utc() -> TimeZone {
    TimeZone::UTC
}

#[test]
fn nothing_runs_before_the_first_time_and_the_next_wakes_us() {
    let p = plan(&cron(json!({})), &[], ts("2026-12-07T10:03:00Z"), &utc());
    assert_eq!(p.create, None);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(120)));
}

#[test]
fn the_most_recent_missed_time_runs_once_with_kubes_name() {
    let cj = cron(json!({}));
    let now = ts("2026-12-07T10:17:30Z");
    let p = plan(&cj, &[], now, &utc());
    assert_eq!(
        p.create,
        Some(ts("2026-12-07T10:15:00Z")),
        "10:05 and 10:10 are not run"
    );
    assert_eq!(
        p.status.last_schedule_time.unwrap().0,
        ts("2026-12-07T10:15:00Z")
    );
    let j = new_job(&cj, ts("2026-12-07T10:15:00Z"));
    assert_eq!(j.metadata.name.as_deref(), Some("backup-29943975"));
    assert_eq!(j.metadata.labels.unwrap()["app"], "backup");
    assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "CronJob");
    // Its Job exists: nothing new, however often it is synced.
    let made = job("2026-12-07T10:15:00Z", None);
    assert_eq!(plan(&cj, &[made], now, &utc()).create, None);
}

#[test]
fn concurrency_policies_and_suspend() {
    let now = ts("2026-12-07T10:20:10Z");
    let running = job("2026-12-07T10:15:00Z", None);
    let with_status = |extra: Value| {
        let mut c = json!({"status": {"lastScheduleTime": "2026-12-07T10:15:00Z"}});
        merge(&mut c, extra);
        cron(c)
    };
    let allow = plan(
        &with_status(json!({})),
        std::slice::from_ref(&running),
        now,
        &utc(),
    );
    assert_eq!(allow.create, Some(ts("2026-12-07T10:20:00Z")));
    assert!(allow.delete.is_empty());
    let forbid = plan(
        &with_status(json!({"spec": {"concurrencyPolicy": "Forbid"}})),
        std::slice::from_ref(&running),
        now,
        &utc(),
    );
    assert_eq!(forbid.create, None);
    assert_eq!(forbid.status.active.as_ref().unwrap().len(), 1);
    let replace = plan(
        &with_status(json!({"spec": {"concurrencyPolicy": "Replace"}})),
        std::slice::from_ref(&running),
        now,
        &utc(),
    );
    assert_eq!(replace.create, Some(ts("2026-12-07T10:20:00Z")));
    assert_eq!(
        replace.delete,
        [job_name("backup", ts("2026-12-07T10:15:00Z"))]
    );
    let suspended = plan(
        &with_status(json!({"spec": {"suspend": true}})),
        &[running],
        now,
        &utc(),
    );
    assert_eq!(suspended.create, None);
}

#[test]
fn a_missed_time_past_the_starting_deadline_is_skipped() {
    let cj = cron(json!({"spec": {"startingDeadlineSeconds": 60},
                         "status": {"lastScheduleTime": "2026-12-07T10:00:00Z"}}));
    assert_eq!(
        plan(&cj, &[], ts("2026-12-07T10:07:00Z"), &utc()).create,
        None
    );
    assert_eq!(
        plan(&cj, &[], ts("2026-12-07T10:05:40Z"), &utc()).create,
        Some(ts("2026-12-07T10:05:00Z"))
    );
}

#[test]
fn history_keeps_the_newest_and_records_the_last_success() {
    let jobs = [
        job(
            "2026-12-07T10:00:00Z",
            Some(("Complete", "2026-12-07T10:01:00Z")),
        ),
        job(
            "2026-12-07T10:05:00Z",
            Some(("Complete", "2026-12-07T10:06:00Z")),
        ),
        job(
            "2026-12-07T10:10:00Z",
            Some(("Complete", "2026-12-07T10:11:00Z")),
        ),
        job(
            "2026-12-07T10:15:00Z",
            Some(("Failed", "2026-12-07T10:16:00Z")),
        ),
        job(
            "2026-12-07T10:20:00Z",
            Some(("Failed", "2026-12-07T10:21:00Z")),
        ),
    ];
    let cj = cron(json!({"status": {"lastScheduleTime": "2026-12-07T10:20:00Z"}}));
    let p = plan(&cj, &jobs, ts("2026-12-07T10:22:00Z"), &utc());
    assert_eq!(
        p.delete,
        [
            job_name("backup", ts("2026-12-07T10:00:00Z")),
            job_name("backup", ts("2026-12-07T10:15:00Z"))
        ]
    );
    assert_eq!(
        p.status.last_successful_time.unwrap().0,
        ts("2026-12-07T10:11:00Z")
    );
    assert!(p.status.active.unwrap().is_empty());
}

#[test]
fn time_zones_move_the_times_and_bad_ones_warn() {
    // 09:00 in New York is 14:00 UTC in December.
    let cj = cron(json!({"spec": {"schedule": "0 9 * * *", "timeZone": "America/New_York"}}));
    let p = plan(&cj, &[], ts("2026-12-07T14:00:30Z"), &utc());
    assert_eq!(p.create, Some(ts("2026-12-07T14:00:00Z")));
    let bad = cron(json!({"spec": {"timeZone": "Mars/Olympus"}}));
    let p = plan(&bad, &[], ts("2026-12-07T14:00:30Z"), &utc());
    assert_eq!(p.create, None);
    assert_eq!(p.warning.unwrap().0, "UnknownTimeZone");
}
