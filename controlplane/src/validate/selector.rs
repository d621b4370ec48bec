//! Validation of label selectors and of the pod templates that workloads
//! stamp out under them (shared by `apps` and `batch`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{core::pod_spec, labels_ok, Errs};
use crate::labels;

/// A selector's labels and expressions (apimachinery's ValidateLabelSelector).
pub(crate) fn label_selector(sel: &LabelSelector, path: &str, e: &mut Errs) {
    if let Some(m) = &sel.match_labels {
        labels_ok(e, &format!("{path}.matchLabels"), m);
    }
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => e.required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => e.forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => e.invalid(
                format!("{at}.operator"),
                format!("{op:?}"),
                "not a valid selector operator",
            ),
        }
        let key: BTreeMap<String, String> = [(r.key.clone(), String::new())].into();
        labels_ok(e, &format!("{at}.key"), &key);
    }
}

/// A workload's selector: required (an absent one decodes as empty), then
/// valid.
pub(crate) fn required_selector(sel: &LabelSelector, path: &str, e: &mut Errs) {
    if labels::is_empty(sel) {
        e.required(path, "");
    } else {
        label_selector(sel, path, e);
    }
}

/// Go's rendering of a label map in an `Invalid value` (`map[string]string{"app":"web"}`).
pub(crate) fn go_map(m: Option<&BTreeMap<String, String>>) -> String {
    let inner: Vec<String> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// What a workload asks of its pod template.
pub(crate) struct TemplateRules<'a> {
    /// The restart policies its pods may have.
    pub restart: &'a [&'a str],
    /// Whether `activeDeadlineSeconds` is refused (controllers that keep
    /// pods running).
    pub no_deadline: bool,
}

/// A pod template at `at` (`spec.template`) under `sel`: its labels match
/// the selector, its spec is a valid pod spec with an allowed restart
/// policy.
pub(crate) fn template(
    sel: &LabelSelector,
    t: &PodTemplateSpec,
    at: &str,
    rules: &TemplateRules,
    e: &mut Errs,
) {
    let tlabels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    if !labels::is_empty(sel) && !labels::matches(sel, tlabels.unwrap_or(&BTreeMap::new())) {
        e.invalid(
            format!("{at}.metadata.labels"),
            go_map(tlabels),
            "`selector` does not match template `labels`",
        );
    }
    if let Some(l) = tlabels {
        labels_ok(e, &format!("{at}.metadata.labels"), l);
    }
    let Some(spec) = &t.spec else {
        e.required(format!("{at}.spec"), "");
        return;
    };
    pod_spec(spec, &format!("{at}.spec"), e);
    let restart = spec.restart_policy.as_deref().unwrap_or_default();
    if !rules.restart.contains(&restart) {
        e.not_supported(format!("{at}.spec.restartPolicy"), restart, rules.restart);
    }
    if rules.no_deadline {
        if let Some(s) = spec.active_deadline_seconds {
            e.invalid(
                format!("{at}.spec.activeDeadlineSeconds"),
                s,
                "must not be specified",
            );
        }
    }
}
