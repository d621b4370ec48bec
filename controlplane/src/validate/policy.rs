//! Validation of `policy/v1` PodDisruptionBudget.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::label_selector;
use super::Errs;

/// A PodDisruptionBudget: at most one of minAvailable and maxUnavailable,
/// each a non-negative number or a percentage up to 100%.
pub(crate) fn pod_disruption_budget(p: &PodDisruptionBudget, e: &mut Errs) {
    let Some(s) = &p.spec else {
        return;
    };
    if s.min_available.is_some() && s.max_unavailable.is_some() {
        e.invalid(
            "spec",
            "{...}",
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for (path, v) in [
        ("spec.minAvailable", &s.min_available),
        ("spec.maxUnavailable", &s.max_unavailable),
    ] {
        match v {
            Some(IntOrString::Int(n)) => e.nonnegative(path, Some(*n)),
            Some(IntOrString::String(pct)) => {
                match pct.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if n > 100 => {
                        e.invalid(path, format!("{pct:?}"), "must not be greater than 100%")
                    }
                    Some(_) => {}
                    None => e.invalid(
                        path,
                        format!("{pct:?}"),
                        "a valid percent string must be a numeric string followed by an ending '%'",
                    ),
                }
            }
            None => {}
        }
    }
    if let Some(sel) = &s.selector {
        label_selector(sel, "spec.selector", e);
    }
    if let Some(pol) = s.unhealthy_pod_eviction_policy.as_deref() {
        if pol != "IfHealthyBudget" && pol != "AlwaysAllow" {
            e.not_supported(
                "spec.unhealthyPodEvictionPolicy",
                pol,
                &["AlwaysAllow", "IfHealthyBudget"],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::create_errors;

    #[test]
    fn budgets() {
        let pdb = |spec: &str| {
            create_errors(&format!("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: b}}\nspec:\n{spec}"))
        };
        assert_eq!(
            pdb("  minAvailable: 50%\n  selector: {matchLabels: {app: web}}\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            pdb("  minAvailable: -1\n  maxUnavailable: 150%\n  unhealthyPodEvictionPolicy: Never\n"),
            [
                "spec: Invalid value: {...}: minAvailable and maxUnavailable cannot be both set",
                "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
                "spec.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
                "spec.unhealthyPodEvictionPolicy: Unsupported value: \"Never\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
            ]
        );
    }

    #[test]
    fn events_stay_in_their_namespace() {
        let ev = |ns: &str, ty: &str| {
            create_errors(&format!("apiVersion: v1\nkind: Event\nmetadata: {{name: web.1, namespace: a}}\ninvolvedObject: {{kind: Pod, name: web, namespace: {ns}}}\ntype: {ty}\nreason: Started\n"))
        };
        assert_eq!(ev("a", "Normal"), Vec::<String>::new());
        assert_eq!(
            ev("b", "Loud"),
            [
                "involvedObject.namespace: Invalid value: \"b\": does not match event.namespace",
                "type: Unsupported value: \"Loud\": supported values: \"Normal\", \"Warning\"",
            ]
        );
    }
}
