//! Authorization until RBAC comes: who may do what, in the shape of
//! kube-apiserver's defaults.
//!
//! - `system:masters` may do everything.
//! - Every authenticated user may read discovery, version, health and
//!   OpenAPI, and ask what they may do (SelfSubjectAccessReview), as the
//!   `system:discovery` and `system:basic-user` roles allow.
//! - A node (`system:node:<name>` in `system:nodes`) may do what a kubelet,
//!   kube-proxy and flannel need and no more, as the Node authorizer and
//!   the NodeRestriction admission allow: write its own Node and Lease,
//!   the status of the pods bound to it, read what it serves (Services,
//!   Endpoints, EndpointSlices, NetworkPolicies, Namespaces, Nodes, Pods),
//!   and get only the Secrets and ConfigMaps its pods use. The graph kube
//!   keeps for that last rule is read here from the pods themselves.
//! - Everyone else is refused.

use std::sync::Arc;

use async_trait::async_trait;
use controlplane::{ControlPlane, Kind, Object, ObjectRef, Scope};
use k8s_openapi::api::core::v1::Pod;

use crate::auth::{Attributes, Authorizer, User};

/// The group of nodes' identities, and their user name prefix.
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
/// The namespace of node heartbeat Leases.
const NODE_LEASES: &str = "kube-node-lease";

/// Paths every authenticated user may GET.
fn discovery(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    let depth = p.split('/').count();
    matches!(
        p,
        "/version"
            | "/api"
            | "/apis"
            | "/healthz"
            | "/livez"
            | "/readyz"
            | "/openapi/v2"
            | "/openapi/v3"
    ) || (p.starts_with("/api/") && depth <= 3)
        || (p.starts_with("/apis/") && depth <= 4)
        || p.starts_with("/openapi/v3/")
}

/// The authorizer the agent serves with.
pub struct Cluster {
    cp: Arc<dyn ControlPlane>,
}

impl Cluster {
    pub fn new(cp: Arc<dyn ControlPlane>) -> Cluster {
        Cluster { cp }
    }

    async fn node(&self, node: &str, a: &Attributes) -> Result<(), String> {
        let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
        let write = matches!(a.verb.as_str(), "create" | "update" | "patch");
        let deny = || Err(format!("node {node:?} may not {} {}", a.verb, what(a)));
        match (a.group.as_str(), a.resource.as_str()) {
            ("", "nodes") if read => Ok(()),
            // Its own Node (and status); never delete one.
            ("", "nodes") if write && a.name == node => Ok(()),
            ("coordination.k8s.io", "leases")
                if a.namespace == NODE_LEASES
                    && a.name == node
                    && (read || write || a.verb == "delete") =>
            {
                Ok(())
            }
            // The overlay's leases: read all, write (one per node).
            ("knode.io", "subnetleases") if read || write || a.verb == "delete" => Ok(()),
            ("", "services" | "endpoints" | "namespaces")
            | ("discovery.k8s.io", "endpointslices")
            | ("networking.k8s.io", "networkpolicies")
                if read =>
            {
                Ok(())
            }
            ("", "pods") if read && a.subresource.is_empty() => Ok(()),
            // Status and deletion of the pods bound to it.
            ("", "pods")
                if (a.subresource == "status" && write)
                    || (a.subresource.is_empty() && a.verb == "delete") =>
            {
                match self.pod_node(&a.namespace, &a.name).await {
                    Some(n) if n == node => Ok(()),
                    _ => Err(format!("node {node:?} may only change pods bound to it")),
                }
            }
            ("", "events") if write => Ok(()),
            ("events.k8s.io", "events") if write => Ok(()),
            // Secrets and ConfigMaps its pods use: get only.
            ("", kind @ ("secrets" | "configmaps")) if a.verb == "get" => {
                if self.used_by_node(node, kind, &a.namespace, &a.name).await {
                    Ok(())
                } else {
                    Err(format!(
                        "no relationship found between node {node:?} and this object"
                    ))
                }
            }
            _ => deny(),
        }
    }

    /// The node a pod is bound to.
    async fn pod_node(&self, ns: &str, name: &str) -> Option<String> {
        match self.cp.get(&ObjectRef::new(Kind::Pod, ns, name)).await {
            Ok(Object::Pod(p)) => p.spec.and_then(|s| s.node_name),
            _ => None,
        }
    }

    /// Whether a pod bound to `node` uses the Secret or ConfigMap `name`.
    async fn used_by_node(&self, node: &str, kind: &str, ns: &str, name: &str) -> bool {
        let Ok(list) = self.cp.list(&Scope::namespaced(Kind::Pod, ns)).await else {
            return false;
        };
        list.items.iter().any(|o| match o {
            Object::Pod(p) => {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && references(p, kind, name)
            }
            _ => false,
        })
    }
}

/// `pods/status "web"`, for messages.
fn what(a: &Attributes) -> String {
    let mut r = a.resource.clone();
    if !a.subresource.is_empty() {
        r = format!("{r}/{}", a.subresource);
    }
    if a.name.is_empty() {
        r
    } else {
        format!("{r} {:?}", a.name)
    }
}

/// Whether `pod` refers to the Secret (`kind` "secrets") or ConfigMap
/// ("configmaps") `name`: volumes (also projected), env, envFrom and image
/// pull secrets.
pub fn references(pod: &Pod, kind: &str, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let secret = kind == "secrets";
    let is = |n: Option<&str>| n == Some(name);
    let volumes = spec.volumes.iter().flatten().any(|v| {
        if secret {
            is(v.secret.as_ref().and_then(|s| s.secret_name.as_deref()))
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| is(s.secret.as_ref().map(|s| s.name.as_str())))
        } else {
            is(v.config_map.as_ref().map(|c| c.name.as_str()))
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| is(s.config_map.as_ref().map(|c| c.name.as_str())))
        }
    });
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let env = containers.clone().any(|c| {
        c.env.iter().flatten().any(|e| {
            let from = e.value_from.as_ref();
            if secret {
                is(from
                    .and_then(|f| f.secret_key_ref.as_ref())
                    .map(|r| r.name.as_str()))
            } else {
                is(from
                    .and_then(|f| f.config_map_key_ref.as_ref())
                    .map(|r| r.name.as_str()))
            }
        }) || c.env_from.iter().flatten().any(|f| {
            if secret {
                is(f.secret_ref.as_ref().map(|r| r.name.as_str()))
            } else {
                is(f.config_map_ref.as_ref().map(|r| r.name.as_str()))
            }
        })
    });
    let pull = secret
        && spec
            .image_pull_secrets
            .iter()
            .flatten()
            .any(|r| r.name == name);
    volumes || env || pull
}

#[async_trait]
impl Authorizer for Cluster {
    async fn authorize(&self, user: &User, a: &Attributes) -> Result<(), String> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(());
        }
        if a.resource.is_empty() && a.verb == "get" && discovery(&a.path) {
            return Ok(());
        }
        if a.group == "authorization.k8s.io"
            && matches!(
                a.resource.as_str(),
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            )
            && a.verb == "create"
        {
            return Ok(());
        }
        if let Some(node) = user.name.strip_prefix(NODE_PREFIX) {
            if user.groups.iter().any(|g| g == NODES_GROUP) && !node.is_empty() {
                return self.node(node, a).await;
            }
        }
        Err(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn node(name: &str) -> User {
        User {
            name: format!("{NODE_PREFIX}{name}"),
            uid: String::new(),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        }
    }

    async fn cluster() -> (Cluster, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("knode-authz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cp = controlplane::backend::open(
            &controlplane::backend::Backend::Embedded,
            &dir,
            Default::default(),
        )
        .await
        .unwrap();
        for y in [
            "apiVersion: v1\nkind: Pod\nmetadata: {name: mine, namespace: default}\nspec:\n  nodeName: n1\n  volumes: [{name: v, secret: {secretName: s1}}]\n  containers: [{name: c, image: i, envFrom: [{configMapRef: {name: cm1}}]}]\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: theirs, namespace: default}\nspec:\n  nodeName: n2\n  volumes: [{name: v, secret: {secretName: s2}}]\n  containers: [{name: c, image: i}]\n",
        ] {
            let o = controlplane::manifest::parse("t", y).unwrap().remove(0);
            cp.create(o, None).await.unwrap();
        }
        (Cluster::new(cp), dir)
    }

    #[tokio::test]
    async fn a_node_may_do_what_a_kubelet_needs_and_no_more() {
        let (c, dir) = cluster().await;
        let n1 = node("n1");
        let leases = NODE_LEASES;
        let lease = "coordination.k8s.io";
        let slices = "discovery.k8s.io";
        #[rustfmt::skip]
        let cases = [
            // verb, group, resource, subresource, namespace, name, allowed
            ("list", "", "pods", "", "", "", true),
            ("update", "", "nodes", "status", "", "n1", true),
            ("update", "", "nodes", "", "", "n2", false),
            ("delete", "", "nodes", "", "", "n1", false),
            ("update", lease, "leases", "", leases, "n1", true),
            ("update", lease, "leases", "", leases, "n2", false),
            ("patch", "", "pods", "status", "default", "mine", true),
            ("patch", "", "pods", "status", "default", "theirs", false),
            ("delete", "", "pods", "", "default", "theirs", false),
            ("get", "", "secrets", "", "default", "s1", true),
            ("get", "", "configmaps", "", "default", "cm1", true),
            ("get", "", "secrets", "", "default", "s2", false),
            ("list", "", "secrets", "", "default", "", false),
            ("create", "", "pods", "", "default", "", false),
            // Not even into its own pods: exec is an admin's.
            ("create", "", "pods", "exec", "default", "mine", false),
            ("create", "", "pods", "attach", "default", "mine", false),
            ("create", "", "pods", "portforward", "default", "mine", false),
            ("create", "", "events", "", "default", "", true),
            ("list", slices, "endpointslices", "", "", "", true),
        ];
        for (verb, group, res, sub, ns, name, allowed) in cases {
            let got = c
                .authorize(&n1, &attrs(verb, group, res, sub, ns, name))
                .await;
            assert_eq!(
                got.is_ok(),
                allowed,
                "{verb} {res}/{sub} {ns}/{name}: {got:?}"
            );
        }
        let e = c
            .authorize(&n1, &attrs("get", "", "secrets", "", "default", "s2"))
            .await
            .unwrap_err();
        assert!(e.contains("no relationship"), "{e}");
        // Anyone authenticated: discovery and SelfSubjectAccessReview.
        let bob = User {
            name: "bob".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
        };
        let mut d = attrs("get", "", "", "", "", "");
        d.path = "/apis/apps/v1".into();
        assert!(c.authorize(&bob, &d).await.is_ok());
        let ssar = attrs(
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
            "",
            "",
        );
        assert!(c.authorize(&bob, &ssar).await.is_ok());
        assert!(c
            .authorize(&bob, &attrs("list", "", "pods", "", "", ""))
            .await
            .is_err());
        // A user named like a node but not in system:nodes is not one.
        let fake = User {
            groups: vec!["system:authenticated".into()],
            ..node("n1")
        };
        assert!(c
            .authorize(&fake, &attrs("list", "", "pods", "", "", ""))
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
