//! Defaulting of `batch/v1` as kube-apiserver does it (Job: completions
//! and parallelism 1, backoffLimit 6, NonIndexed; CronJob: Allow, history
//! 3/1, not suspended), and the selector a Job gets at create.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::apps::template;

/// The labels kube-apiserver gives a Job's pods and selects them by.
pub const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];
/// The controller-uid labels; the selector uses the second.
pub const CONTROLLER_UID_LABELS: [&str; 2] =
    ["controller-uid", "batch.kubernetes.io/controller-uid"];

/// Job: completions and parallelism 1 when neither is given, parallelism
/// 1, backoffLimit 6, completionMode NonIndexed, not suspended, pods
/// replaced once terminated or failed.
pub(crate) fn job(j: &mut Job) {
    let Some(s) = j.spec.as_mut() else { return };
    if s.completions.is_none() && s.parallelism.is_none() {
        s.completions = Some(1);
    }
    s.parallelism.get_or_insert(1);
    let backoff = if s.backoff_limit_per_index.is_some() {
        i32::MAX
    } else {
        6
    };
    s.backoff_limit.get_or_insert(backoff);
    s.completion_mode.get_or_insert_with(|| "NonIndexed".into());
    s.suspend.get_or_insert(false);
    let replace = if s.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    s.pod_replacement_policy
        .get_or_insert_with(|| replace.into());
    s.manual_selector.get_or_insert(false);
    template(&mut s.template);
}

/// At create, unless `manualSelector`: labels the template with the Job's
/// name and uid and selects its pods by the uid (kube-apiserver's
/// generateSelector); clears the status.
pub(crate) fn job_create(j: &mut Job) {
    j.status = None;
    let name = j.metadata.name.clone().unwrap_or_default();
    let uid = j.metadata.uid.clone().unwrap_or_default();
    let Some(s) = j.spec.as_mut() else { return };
    if s.manual_selector == Some(true) {
        return;
    }
    let meta = s.template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for l in JOB_NAME_LABELS {
        labels.entry(l.into()).or_insert_with(|| name.clone());
    }
    for l in CONTROLLER_UID_LABELS {
        labels.entry(l.into()).or_insert_with(|| uid.clone());
    }
    let sel = s.selector.get_or_insert_with(LabelSelector::default);
    sel.match_labels
        .get_or_insert_with(BTreeMap::new)
        .entry(CONTROLLER_UID_LABELS[1].into())
        .or_insert(uid);
}

/// CronJob: concurrencyPolicy Allow, not suspended, keeps 3 successful and
/// 1 failed Job; pod defaults in the job template.
pub(crate) fn cron_job(c: &mut CronJob) {
    let Some(s) = c.spec.as_mut() else { return };
    s.concurrency_policy.get_or_insert_with(|| "Allow".into());
    s.suspend.get_or_insert(false);
    s.successful_jobs_history_limit.get_or_insert(3);
    s.failed_jobs_history_limit.get_or_insert(1);
    if let Some(js) = s.job_template.spec.as_mut() {
        template(&mut js.template);
    }
}

/// A Job applied again without the selector generated at create keeps
/// it, and its template keeps the labels that selector needs.
pub(crate) fn carry_job(current: &Job, want: &mut Job) {
    let (Some(cs), Some(ws)) = (&current.spec, &mut want.spec) else {
        return;
    };
    if ws.manual_selector == Some(true) || ws.selector.is_some() {
        return;
    }
    ws.selector = cs.selector.clone();
    let current_labels = cs
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let labels = ws
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    for l in JOB_NAME_LABELS.into_iter().chain(CONTROLLER_UID_LABELS) {
        if let Some(v) = current_labels.get(l) {
            labels.entry(l.into()).or_insert_with(|| v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::defaults::apps::tests::defaulted;

    const POD: &str = "    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n";

    #[test]
    fn job_defaults() {
        let v = defaulted(&format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  template:\n{POD}"
        ));
        let s = &v["spec"];
        assert_eq!(
            (s["completions"].clone(), s["parallelism"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(s["backoffLimit"], 6);
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["podReplacementPolicy"], "TerminatingOrFailed");
        // Parallelism alone leaves completions unset (a work queue).
        let v = defaulted(&format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  parallelism: 3\n  template:\n{POD}"));
        assert_eq!(v["spec"]["completions"], json!(null));
        assert_eq!(v["spec"]["parallelism"], 3);
        let v = defaulted(&format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  completions: 5\n  backoffLimitPerIndex: 1\n  completionMode: Indexed\n  template:\n{POD}"));
        assert_eq!(v["spec"]["parallelism"], 1);
        assert_eq!(v["spec"]["backoffLimit"], i32::MAX);
    }

    #[test]
    fn job_selector_is_generated_from_the_uid() {
        let mut o = crate::manifest::parse(
            "t",
            &format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  template:\n{POD}"
            ),
        )
        .unwrap()
        .remove(0);
        o.meta_mut().uid = Some("u-1".into());
        if let crate::Object::Job(j) = &mut o {
            super::job_create(j);
        }
        let v = o.to_value();
        assert_eq!(
            v["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"],
            json!({"batch.kubernetes.io/controller-uid": "u-1", "batch.kubernetes.io/job-name": "j",
                   "controller-uid": "u-1", "job-name": "j"})
        );
    }

    #[test]
    fn cron_job_defaults() {
        let v = defaulted("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '@hourly'\n  jobTemplate:\n    spec:\n      template:\n        spec: {containers: [{name: c, image: busybox}]}\n");
        let s = &v["spec"];
        assert_eq!(s["concurrencyPolicy"], "Allow");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["successfulJobsHistoryLimit"], 3);
        assert_eq!(s["failedJobsHistoryLimit"], 1);
        assert_eq!(
            s["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
    }

    #[test]
    fn endpoint_slice_ports_default_to_tcp() {
        let v = defaulted("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\nports: [{port: 80}]\n");
        assert_eq!(
            v["ports"],
            json!([{"name": "", "port": 80, "protocol": "TCP"}])
        );
    }
}
