//! Defaulting, as the API server does it before validation: namespace
//! `default`, Pod and container defaults, Service defaults. Only fills
//! what is unset; never overrides what the user wrote.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::Object;

/// The namespace objects land in when their manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Fills the defaults of `obj` in place.
pub fn apply(obj: &mut Object) {
    if obj.kind().namespaced()
        && obj
            .meta()
            .namespace
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    {
        obj.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    match obj {
        Object::Pod(p) => pod(p),
        Object::Service(s) => service(s),
        Object::Secret(s) => {
            s.type_.get_or_insert_with(|| "Opaque".to_string());
        }
        _ => {}
    }
}

/// `Always` when the image has no tag or the `latest` tag, else `IfNotPresent`.
pub fn image_pull_policy(image: &str) -> &'static str {
    let name = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn pod(p: &mut Pod) {
    let Some(spec) = p.spec.as_mut() else { return };
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.enable_service_links.get_or_insert(true);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy =
                Some(image_pull_policy(c.image.as_deref().unwrap_or_default()).into());
        }
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        for port in c.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

fn service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    spec.session_affinity.get_or_insert_with(|| "None".into());
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        if port.target_port.is_none() {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn one(yaml: &str) -> Object {
        let mut o = manifest::parse("t", yaml).unwrap().remove(0);
        apply(&mut o);
        o
    }

    #[test]
    fn pod_defaults() {
        let o = one("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: busybox, ports: [{containerPort: 80}]}\n  - {name: b, image: 'reg:5000/x:1.2'}\n");
        let v = o.to_value();
        assert_eq!(v["metadata"]["namespace"], "default");
        assert_eq!(v["spec"]["restartPolicy"], "Always");
        assert_eq!(v["spec"]["enableServiceLinks"], true);
        assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(v["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(v["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            v["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn user_values_win() {
        let o = one("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team}\nspec:\n  restartPolicy: Never\n  containers: [{name: a, image: busybox, imagePullPolicy: Never}]\n");
        let v = o.to_value();
        assert_eq!(v["metadata"]["namespace"], "team");
        assert_eq!(v["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["containers"][0]["imagePullPolicy"], "Never");
    }

    #[test]
    fn service_defaults() {
        let o = one("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: NodePort\n  ports: [{port: 80}]\n");
        let v = o.to_value();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(v["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(v["spec"]["sessionAffinity"], "None");
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(image_pull_policy("busybox"), "Always");
        assert_eq!(image_pull_policy("busybox:latest"), "Always");
        assert_eq!(image_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            image_pull_policy("localhost:5000/busybox:1.36"),
            "IfNotPresent"
        );
        assert_eq!(image_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
