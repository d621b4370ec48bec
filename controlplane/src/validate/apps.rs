//! Validation of `apps/v1`: Deployment, ReplicaSet, DaemonSet,
//! StatefulSet, ControllerRevision, with kube-apiserver's field paths and
//! messages, and what an update may not change.

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::{required_selector, template, TemplateRules};
use super::Errs;

/// Pods of controllers that keep them running.
const ALWAYS: TemplateRules = TemplateRules {
    restart: &["Always"],
    no_deadline: true,
};

const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// The value of an int-or-percent field, as a number or a percentage;
/// records why it is not one.
fn int_or_percent(v: &IntOrString, path: &str, e: &mut Errs) -> Option<(i64, bool)> {
    match v {
        IntOrString::Int(n) => {
            e.nonnegative(path, Some(*n));
            Some((i64::from(*n), false))
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(p) if s.len() > 1 && s.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                Some((p, true))
            }
            _ => {
                e.invalid(path, format!("{s:?}"), PERCENT_MSG);
                None
            }
        },
    }
}

/// `maxUnavailable` and `maxSurge` of a rolling update at `at`.
pub(crate) fn rolling(
    max_unavailable: Option<&IntOrString>,
    max_surge: Option<&IntOrString>,
    at: &str,
    e: &mut Errs,
) {
    let mu_path = format!("{at}.maxUnavailable");
    let mu = max_unavailable.and_then(|v| int_or_percent(v, &mu_path, e));
    let ms = max_surge.and_then(|v| int_or_percent(v, &format!("{at}.maxSurge"), e));
    if let Some((p, true)) = mu {
        if p > 100 {
            e.invalid(&mu_path, format!("{p}%"), "must not be greater than 100%");
        }
    }
    if mu.is_some_and(|(v, _)| v == 0) && ms.is_none_or(|(v, _)| v == 0) {
        e.invalid(&mu_path, 0, "may not be 0 when `maxSurge` is 0");
    }
}

/// A Deployment.
pub(crate) fn deployment(d: &Deployment, e: &mut Errs) {
    let Some(s) = &d.spec else {
        e.required("spec", "");
        return;
    };
    e.nonnegative("spec.replicas", s.replicas);
    e.nonnegative("spec.minReadySeconds", s.min_ready_seconds);
    e.nonnegative("spec.revisionHistoryLimit", s.revision_history_limit);
    e.nonnegative("spec.progressDeadlineSeconds", s.progress_deadline_seconds);
    if let Some(p) = s.progress_deadline_seconds {
        if p <= s.min_ready_seconds.unwrap_or(0) {
            e.invalid(
                "spec.progressDeadlineSeconds",
                p,
                "must be greater than minReadySeconds",
            );
        }
    }
    required_selector(&s.selector, "spec.selector", e);
    template(&s.selector, &s.template, "spec.template", &ALWAYS, e);
    let strategy = s.strategy.clone().unwrap_or_default();
    let ty = strategy.type_.as_deref().unwrap_or_default();
    match ty {
        "Recreate" if strategy.rolling_update.is_some() => e.forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ),
        "Recreate" => {}
        "RollingUpdate" => {
            let ru = strategy.rolling_update.unwrap_or_default();
            rolling(
                ru.max_unavailable.as_ref(),
                ru.max_surge.as_ref(),
                "spec.strategy.rollingUpdate",
                e,
            );
        }
        "" => e.required("spec.strategy.type", ""),
        other => e.not_supported("spec.strategy.type", other, &["Recreate", "RollingUpdate"]),
    }
}

/// A ReplicaSet.
pub(crate) fn replica_set(r: &ReplicaSet, e: &mut Errs) {
    let Some(s) = &r.spec else {
        e.required("spec", "");
        return;
    };
    e.nonnegative("spec.replicas", s.replicas);
    e.nonnegative("spec.minReadySeconds", s.min_ready_seconds);
    let sel = s.selector.clone();
    required_selector(&sel, "spec.selector", e);
    match &s.template {
        Some(t) => template(&sel, t, "spec.template", &ALWAYS, e),
        None => e.required("spec.template", ""),
    }
}

/// A DaemonSet.
pub(crate) fn daemon_set(d: &DaemonSet, e: &mut Errs) {
    let Some(s) = &d.spec else {
        e.required("spec", "");
        return;
    };
    e.nonnegative("spec.minReadySeconds", s.min_ready_seconds);
    e.nonnegative("spec.revisionHistoryLimit", s.revision_history_limit);
    required_selector(&s.selector, "spec.selector", e);
    template(&s.selector, &s.template, "spec.template", &ALWAYS, e);
    let strategy = s.update_strategy.clone().unwrap_or_default();
    match strategy.type_.as_deref().unwrap_or_default() {
        "RollingUpdate" => {
            let ru = strategy.rolling_update.unwrap_or_default();
            rolling(
                ru.max_unavailable.as_ref(),
                ru.max_surge.as_ref(),
                "spec.updateStrategy.rollingUpdate",
                e,
            );
        }
        "OnDelete" => {}
        "" => e.required("spec.updateStrategy.type", ""),
        other => e.not_supported(
            "spec.updateStrategy.type",
            other,
            &["OnDelete", "RollingUpdate"],
        ),
    }
}

/// A StatefulSet. `volumeClaimTemplates` are refused: knode has no
/// persistent volumes yet.
pub(crate) fn stateful_set(st: &StatefulSet, e: &mut Errs) {
    let Some(s) = &st.spec else {
        e.required("spec", "");
        return;
    };
    match s.pod_management_policy.as_deref().unwrap_or_default() {
        "" => e.required("spec.podManagementPolicy", ""),
        "OrderedReady" | "Parallel" => {}
        other => e.invalid(
            "spec.podManagementPolicy",
            format!("{other:?}"),
            "must be 'OrderedReady' or 'Parallel'",
        ),
    }
    let strategy = s.update_strategy.clone().unwrap_or_default();
    match strategy.type_.as_deref().unwrap_or_default() {
        "" => e.required("spec.updateStrategy", ""),
        "OnDelete" if strategy.rolling_update.is_some() => e.invalid(
            "spec.updateStrategy.rollingUpdate",
            "{...}",
            "only allowed for updateStrategy 'RollingUpdate'",
        ),
        "OnDelete" => {}
        "RollingUpdate" => {
            let ru = strategy.rolling_update.unwrap_or_default();
            e.nonnegative("spec.updateStrategy.rollingUpdate.partition", ru.partition);
        }
        other => e.invalid(
            "spec.updateStrategy",
            format!("{other:?}"),
            "must be 'RollingUpdate' or 'OnDelete'",
        ),
    }
    e.nonnegative("spec.replicas", s.replicas);
    e.nonnegative("spec.minReadySeconds", s.min_ready_seconds);
    e.nonnegative("spec.revisionHistoryLimit", s.revision_history_limit);
    required_selector(&s.selector, "spec.selector", e);
    template(&s.selector, &s.template, "spec.template", &ALWAYS, e);
    if s.volume_claim_templates
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        e.forbidden(
            "spec.volumeClaimTemplates",
            "not supported: knode has no persistent volumes yet (use emptyDir or hostPath volumes in the pod template)",
        );
    }
}

/// A ControllerRevision: data is required, the revision not negative.
pub(crate) fn controller_revision(r: &ControllerRevision, e: &mut Errs) {
    if r.data.is_none() {
        e.required("data", "data is mandatory");
    }
    e.nonnegative("revision", Some(r.revision));
}

/// `spec.selector` may not change (apps/v1).
fn selector_immutable(old: &LabelSelector, new: &LabelSelector, e: &mut Errs) {
    if old != new {
        e.invalid(
            "spec.selector",
            crate::labels::format(new),
            "field is immutable",
        );
    }
}

/// A Deployment's update.
pub(crate) fn deployment_update(old: &Deployment, new: &Deployment, e: &mut Errs) {
    if let (Some(o), Some(n)) = (&old.spec, &new.spec) {
        selector_immutable(&o.selector, &n.selector, e);
    }
}

/// A ReplicaSet's update.
pub(crate) fn replica_set_update(old: &ReplicaSet, new: &ReplicaSet, e: &mut Errs) {
    if let (Some(o), Some(n)) = (&old.spec, &new.spec) {
        selector_immutable(&o.selector, &n.selector, e);
    }
}

/// A DaemonSet's update.
pub(crate) fn daemon_set_update(old: &DaemonSet, new: &DaemonSet, e: &mut Errs) {
    if let (Some(o), Some(n)) = (&old.spec, &new.spec) {
        selector_immutable(&o.selector, &n.selector, e);
    }
}

/// A StatefulSet's update: only some fields may change.
pub(crate) fn stateful_set_update(old: &StatefulSet, new: &StatefulSet, e: &mut Errs) {
    let fixed = |s: &Option<StatefulSetSpec>| {
        s.clone().map(|s| StatefulSetSpec {
            replicas: None,
            ordinals: None,
            template: Default::default(),
            update_strategy: None,
            revision_history_limit: None,
            persistent_volume_claim_retention_policy: None,
            min_ready_seconds: None,
            ..s
        })
    };
    if fixed(&old.spec) != fixed(&new.spec) {
        e.forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        );
    }
}

/// A ControllerRevision's data may not change.
pub(crate) fn controller_revision_update(
    old: &ControllerRevision,
    new: &ControllerRevision,
    e: &mut Errs,
) {
    if old.data != new.data {
        e.invalid("data", "{...}", "field is immutable");
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::create_errors;

    const TEMPLATE: &str = "  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox}]}\n";

    fn apps(kind: &str, spec: &str) -> Vec<String> {
        create_errors(&format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: web}}\nspec:\n{spec}"
        ))
    }

    #[test]
    fn good_workloads_pass() {
        let sel = "  selector: {matchLabels: {app: web}}\n";
        for kind in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"] {
            assert_eq!(
                apps(kind, &format!("{sel}{TEMPLATE}")),
                Vec::<String>::new(),
                "{kind}"
            );
        }
    }

    #[test]
    fn selector_is_required_and_must_match_the_template() {
        for kind in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"] {
            assert_eq!(
                apps(kind, TEMPLATE),
                ["spec.selector: Required value"],
                "{kind}"
            );
            let e = apps(
                kind,
                &format!("  selector: {{matchLabels: {{app: db}}}}\n{TEMPLATE}"),
            );
            assert_eq!(
                e,
                ["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"],
                "{kind}"
            );
        }
        let e = apps(
            "Deployment",
            &format!("  selector: {{matchExpressions: [{{key: app, operator: In}}]}}\n{TEMPLATE}"),
        );
        assert!(
            e.contains(&"spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn deployment_numbers_and_strategy() {
        let e = apps(
            "Deployment",
            &format!("  replicas: -1\n  minReadySeconds: 30\n  progressDeadlineSeconds: 20\n  strategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 0, maxSurge: 0}}}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(
            e,
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.progressDeadlineSeconds: Invalid value: 20: must be greater than minReadySeconds",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
            ]
        );
        let e = apps(
            "Deployment",
            &format!("  progressDeadlineSeconds: 0\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(
            e,
            ["spec.progressDeadlineSeconds: Invalid value: 0: must be greater than minReadySeconds"]
        );
        let e = apps(
            "Deployment",
            &format!("  strategy: {{type: Recreate, rollingUpdate: {{maxSurge: 1}}}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(
            e,
            ["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"]
        );
        let e = apps(
            "Deployment",
            &format!("  strategy: {{rollingUpdate: {{maxUnavailable: 120%, maxSurge: lots}}}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("spec.strategy.rollingUpdate.maxSurge: Invalid value: \"lots\": a valid percent string"), "{e:?}");
        assert_eq!(e[1], "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 120%: must not be greater than 100%");
    }

    #[test]
    fn pods_of_controllers_restart_always() {
        let e = apps(
            "ReplicaSet",
            "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {restartPolicy: Never, activeDeadlineSeconds: 5, containers: [{name: c}]}\n",
        );
        assert_eq!(
            e,
            [
                "spec.template.spec.containers[0].image: required",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.template.spec.activeDeadlineSeconds: Invalid value: 5: must not be specified",
            ]
        );
    }

    #[test]
    fn stateful_sets_refuse_volume_claim_templates_and_bad_policies() {
        let e = apps(
            "StatefulSet",
            &format!("  podManagementPolicy: Random\n  updateStrategy: {{type: OnDelete, rollingUpdate: {{partition: 1}}}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}  volumeClaimTemplates: [{{metadata: {{name: data}}}}]\n"),
        );
        assert_eq!(
            e,
            [
                "spec.podManagementPolicy: Invalid value: \"Random\": must be 'OrderedReady' or 'Parallel'",
                "spec.updateStrategy.rollingUpdate: Invalid value: {...}: only allowed for updateStrategy 'RollingUpdate'",
                "spec.volumeClaimTemplates: Forbidden: not supported: knode has no persistent volumes yet (use emptyDir or hostPath volumes in the pod template)",
            ]
        );
        let e = apps(
            "StatefulSet",
            &format!("  updateStrategy: {{rollingUpdate: {{partition: -2}}}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(
            e,
            ["spec.updateStrategy.rollingUpdate.partition: Invalid value: -2: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn daemon_set_strategy() {
        let e = apps(
            "DaemonSet",
            &format!("  updateStrategy: {{type: Sometimes}}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"),
        );
        assert_eq!(
            e,
            ["spec.updateStrategy.type: Unsupported value: \"Sometimes\": supported values: \"OnDelete\", \"RollingUpdate\""]
        );
    }

    #[test]
    fn controller_revisions_need_data() {
        let e = create_errors("apiVersion: apps/v1\nkind: ControllerRevision\nmetadata: {name: web-1}\nrevision: -1\n");
        assert_eq!(
            e,
            [
                "data: Required value: data is mandatory",
                "revision: Invalid value: -1: must be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn updates_may_not_change_the_selector_or_fixed_statefulset_fields() {
        let parse = |yaml: &str| {
            let mut o = crate::manifest::parse("t", yaml).unwrap().remove(0);
            crate::defaults::apply(&mut o);
            o
        };
        let d = |app: &str| {
            parse(&format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 3\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata: {{labels: {{app: {app}}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n"))
        };
        let e = crate::validate::validate_update(&d("web"), &d("db")).unwrap_err();
        assert_eq!(
            e.errors[0].to_string(),
            "spec.selector: Invalid value: app=db: field is immutable"
        );
        assert!(crate::validate::validate_update(&d("web"), &d("web")).is_ok());
        let s = |replicas: u32, service: &str| {
            parse(&format!("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  serviceName: {service}\n  selector: {{matchLabels: {{app: web}}}}\n{TEMPLATE}"))
        };
        assert!(crate::validate::validate_update(&s(1, "a"), &s(5, "a")).is_ok());
        let e = crate::validate::validate_update(&s(1, "a"), &s(1, "b")).unwrap_err();
        assert!(
            e.errors[0].to_string().starts_with(
                "spec: Forbidden: updates to statefulset spec for fields other than 'replicas'"
            ),
            "{e}"
        );
    }
}
