//! Defaulting of `apps/v1` as kube-apiserver does it: replicas 1,
//! rolling updates of 25%/25% (Deployment) or 1/0 (DaemonSet), history
//! of 10, and pod defaults in every template.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::core::pod_spec;

const REVISION_HISTORY: i32 = 10;

/// The pod defaults of a template.
pub(crate) fn template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        pod_spec(spec);
    }
}

fn percent(p: &str) -> Option<IntOrString> {
    Some(IntOrString::String(p.to_string()))
}

/// Deployment: replicas 1, RollingUpdate 25%/25%, revisionHistoryLimit 10,
/// progressDeadlineSeconds 600.
pub(crate) fn deployment(d: &mut Deployment) {
    let Some(s) = d.spec.as_mut() else { return };
    s.replicas.get_or_insert(1);
    s.revision_history_limit.get_or_insert(REVISION_HISTORY);
    s.progress_deadline_seconds.get_or_insert(600);
    let strategy = s.strategy.get_or_insert_with(DeploymentStrategy::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if ty == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        if ru.max_unavailable.is_none() {
            ru.max_unavailable = percent("25%");
        }
        if ru.max_surge.is_none() {
            ru.max_surge = percent("25%");
        }
    }
    template(&mut s.template);
}

/// ReplicaSet: replicas 1.
pub(crate) fn replica_set(r: &mut ReplicaSet) {
    let Some(s) = r.spec.as_mut() else { return };
    s.replicas.get_or_insert(1);
    if let Some(t) = s.template.as_mut() {
        template(t);
    }
}

/// DaemonSet: RollingUpdate with maxUnavailable 1 and maxSurge 0,
/// revisionHistoryLimit 10.
pub(crate) fn daemon_set(d: &mut DaemonSet) {
    let Some(s) = d.spec.as_mut() else { return };
    s.revision_history_limit.get_or_insert(REVISION_HISTORY);
    let strategy = s
        .update_strategy
        .get_or_insert_with(DaemonSetUpdateStrategy::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if ty == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDaemonSet::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    template(&mut s.template);
}

/// StatefulSet: replicas 1, podManagementPolicy OrderedReady,
/// RollingUpdate with partition 0, revisionHistoryLimit 10, PVCs retained.
pub(crate) fn stateful_set(st: &mut StatefulSet) {
    let Some(s) = st.spec.as_mut() else { return };
    s.replicas.get_or_insert(1);
    s.revision_history_limit.get_or_insert(REVISION_HISTORY);
    s.pod_management_policy
        .get_or_insert_with(|| "OrderedReady".into());
    let strategy = s
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if ty == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
        ru.partition.get_or_insert(0);
    }
    let retention = s
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    retention
        .when_deleted
        .get_or_insert_with(|| "Retain".into());
    retention.when_scaled.get_or_insert_with(|| "Retain".into());
    template(&mut s.template);
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{json, Value};

    /// The defaulted object of the first document in `yaml`, as JSON.
    pub(crate) fn defaulted(yaml: &str) -> Value {
        let mut o = crate::manifest::parse("t", yaml).unwrap().remove(0);
        crate::defaults::apply(&mut o);
        o.to_value()
    }

    const TEMPLATE: &str = "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox, ports: [{containerPort: 80}]}]}\n";

    #[test]
    fn deployment_defaults() {
        let v = defaulted(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n{TEMPLATE}"
        ));
        let s = &v["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert_eq!(
            s["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        // Pod defaults reach the template.
        assert_eq!(s["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            s["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        assert_eq!(
            s["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        let v = defaulted(&format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  replicas: 0\n  strategy: {{type: Recreate}}\n{TEMPLATE}"));
        assert_eq!(v["spec"]["replicas"], 0);
        assert_eq!(v["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn replica_daemon_and_stateful_set_defaults() {
        let v = defaulted(&format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: r}}\nspec:\n{TEMPLATE}"
        ));
        assert_eq!(v["spec"]["replicas"], 1);
        let v = defaulted(&format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: d}}\nspec:\n{TEMPLATE}"
        ));
        assert_eq!(
            v["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
        );
        assert_eq!(v["spec"]["revisionHistoryLimit"], 10);
        let v = defaulted(&format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec:\n{TEMPLATE}"
        ));
        let s = &v["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            s["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            s["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        let v = defaulted(&format!("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec:\n  updateStrategy: {{type: OnDelete}}\n{TEMPLATE}"));
        assert_eq!(v["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    }
}
