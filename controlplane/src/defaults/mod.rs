//! Defaulting, as the API server does it before validation: namespace
//! `default` here, then each kind's own defaults (a file per API group,
//! reached through its descriptor in [`crate::kinds`]). Only fills what
//! is unset; never overrides what the user wrote.

pub(crate) mod apps;
pub mod batch;
pub(crate) mod core;
pub(crate) mod network;

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
    if let Some(hook) = obj.kind().info().strategy.default {
        hook(obj);
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
