//! Validation of `batch/v1`: Job and CronJob, with kube-apiserver's field
//! paths and messages, and what a Job's update may not change.

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::selector::{label_selector, template, TemplateRules};
use super::Errs;

/// Pods of a Job run to completion.
const TO_COMPLETION: TemplateRules = TemplateRules {
    restart: &["OnFailure", "Never"],
    no_deadline: false,
};

/// A CronJob's name leaves room for the Job names made from it.
const CRONJOB_NAME_MAX: usize = 52;

/// The fields of a Job's spec, at `at` (`spec`, `spec.jobTemplate.spec`).
fn job_spec(s: &JobSpec, at: &str, e: &mut Errs) {
    e.nonnegative(format!("{at}.parallelism"), s.parallelism);
    e.nonnegative(format!("{at}.completions"), s.completions);
    e.nonnegative(
        format!("{at}.activeDeadlineSeconds"),
        s.active_deadline_seconds,
    );
    e.nonnegative(format!("{at}.backoffLimit"), s.backoff_limit);
    e.nonnegative(
        format!("{at}.ttlSecondsAfterFinished"),
        s.ttl_seconds_after_finished,
    );
    match s.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") if s.completions.is_none() => e.required(
            format!("{at}.completions"),
            "when completion mode is Indexed",
        ),
        Some("Indexed") => {}
        Some(other) => e.not_supported(
            format!("{at}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        ),
    }
    let sel = s.selector.clone().unwrap_or_default();
    if let Some(sel) = &s.selector {
        label_selector(sel, &format!("{at}.selector"), e);
    }
    template(
        &sel,
        &s.template,
        &format!("{at}.template"),
        &TO_COMPLETION,
        e,
    );
}

/// A Job. Its selector was generated at create (unless `manualSelector`),
/// so a missing one means the user asked to pick it and did not.
pub(crate) fn job(j: &Job, e: &mut Errs) {
    let Some(s) = &j.spec else {
        e.required("spec", "");
        return;
    };
    if s.selector.is_none() {
        e.required("spec.selector", "");
    }
    job_spec(s, "spec", e);
}

/// A CronJob.
pub(crate) fn cron_job(c: &CronJob, e: &mut Errs) {
    let name = c.metadata.name.as_deref().unwrap_or_default();
    if name.len() > CRONJOB_NAME_MAX {
        e.invalid(
            "metadata.name",
            format!("{name:?}"),
            "must be no more than 52 characters",
        );
    }
    let Some(s) = &c.spec else {
        e.required("spec", "");
        return;
    };
    if s.schedule.trim().is_empty() {
        e.required("spec.schedule", "");
    } else if let Err(why) = schedule(&s.schedule) {
        e.invalid("spec.schedule", format!("{:?}", s.schedule), &why);
    }
    if let Some(tz) = &s.time_zone {
        if tz.is_empty() || tz.contains(' ') || tz.starts_with('/') || tz.contains("..") {
            e.invalid("spec.timeZone", format!("{tz:?}"), "unknown time zone");
        }
    }
    match s.concurrency_policy.as_deref().unwrap_or_default() {
        "Allow" | "Forbid" | "Replace" => {}
        "" => e.required("spec.concurrencyPolicy", ""),
        other => e.not_supported(
            "spec.concurrencyPolicy",
            other,
            &["Allow", "Forbid", "Replace"],
        ),
    }
    e.nonnegative("spec.startingDeadlineSeconds", s.starting_deadline_seconds);
    e.nonnegative(
        "spec.successfulJobsHistoryLimit",
        s.successful_jobs_history_limit,
    );
    e.nonnegative("spec.failedJobsHistoryLimit", s.failed_jobs_history_limit);
    match &s.job_template.spec {
        Some(js) => job_spec(js, "spec.jobTemplate.spec", e),
        None => e.required("spec.jobTemplate.spec", ""),
    }
}

/// Checks a cron schedule ([`crate::cron::Schedule`]).
pub(crate) fn schedule(s: &str) -> Result<(), String> {
    crate::cron::Schedule::parse(s).map(|_| ())
}

/// What a Job's update may not change: its selector, and its completion
/// mode.
pub(crate) fn job_update(old: &Job, new: &Job, e: &mut Errs) {
    let (Some(o), Some(n)) = (&old.spec, &new.spec) else {
        return;
    };
    if o.selector != n.selector {
        let sel = n.selector.clone().unwrap_or_else(LabelSelector::default);
        e.invalid(
            "spec.selector",
            crate::labels::format(&sel),
            "field is immutable",
        );
    }
    if o.completion_mode != n.completion_mode {
        e.invalid(
            "spec.completionMode",
            format!("{:?}", n.completion_mode.as_deref().unwrap_or_default()),
            "field is immutable",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::schedule;
    use crate::validate::create_errors;

    const POD: &str = "    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n";

    #[test]
    fn jobs_get_a_selector_and_need_a_finite_restart_policy() {
        let ok = format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: pi}}\nspec:\n  template:\n{POD}"
        );
        assert_eq!(create_errors(&ok), Vec::<String>::new());
        let e = create_errors("apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  parallelism: -1\n  completionMode: Indexed\n  template:\n    spec: {containers: [{name: c, image: busybox}]}\n");
        assert_eq!(
            e,
            [
                "spec.parallelism: Invalid value: -1: must be greater than or equal to 0",
                "spec.completions: Required value: when completion mode is Indexed",
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
            ]
        );
        let manual = format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: pi}}\nspec:\n  manualSelector: true\n  template:\n{POD}");
        assert_eq!(create_errors(&manual), ["spec.selector: Required value"]);
        let mismatched = format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: pi}}\nspec:\n  manualSelector: true\n  selector: {{matchLabels: {{a: b}}}}\n  template:\n    metadata: {{labels: {{a: c}}}}\n{POD}");
        assert_eq!(
            create_errors(&mismatched),
            ["spec.template.metadata.labels: Invalid value: map[string]string{\"a\":\"c\"}: `selector` does not match template `labels`"]
        );
    }

    #[test]
    fn cron_jobs() {
        let cron = |name: &str, spec: &str| {
            create_errors(&format!("apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n{spec}  jobTemplate:\n    spec:\n      template:\n        spec: {{restartPolicy: OnFailure, containers: [{{name: c, image: busybox}}]}}\n"))
        };
        assert_eq!(
            cron("tick", "  schedule: '*/5 * * * *'\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            cron("tick", "  schedule: '@hourly'\n  timeZone: Europe/Paris\n"),
            Vec::<String>::new()
        );
        let e = cron(&"x".repeat(53), "  schedule: '61 * * *'\n  concurrencyPolicy: Sometimes\n  failedJobsHistoryLimit: -1\n");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("metadata.name: Invalid value:")
                && e[0].ends_with("must be no more than 52 characters"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "spec.schedule: Invalid value: \"61 * * *\": expected exactly 5 fields"
            ),
            "{e:?}"
        );
        assert_eq!(e[2], "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"");
        assert_eq!(
            e[3],
            "spec.failedJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            cron("tick", "  schedule: ''\n"),
            ["spec.schedule: Required value"]
        );
    }

    #[test]
    fn schedules() {
        for ok in [
            "0 0 * * *",
            "*/15 9-17 * * mon-fri",
            "5,10 * 1 jan,jul 0",
            "@daily",
            "0 0 * * 7",
        ] {
            assert_eq!(schedule(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "@often",
            "5-1 * * * *",
        ] {
            assert!(schedule(bad).is_err(), "{bad}");
        }
    }
}
