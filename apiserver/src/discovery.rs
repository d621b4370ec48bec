//! Discovery documents, read from the kinds table: `/version`, `/api`,
//! `/apis`, and an `APIResourceList` per group/version with names, short
//! names, categories, verbs and subresources; and aggregated discovery
//! (`apidiscovery.k8s.io/v2`, and v2beta1 for kubectl 1.26-1.29): `/api`
//! and `/apis` answer an `APIGroupDiscoveryList` holding every resource
//! of every group/version when the client's Accept asks for one, so a
//! client discovers the server in two requests instead of one per
//! group/version.

use controlplane::kinds::Subresource;
use controlplane::Kind;
use serde_json::{json, Value};

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": controlplane::kinds::KUBE_MAJOR, "minor": controlplane::kinds::KUBE_MINOR,
        "gitVersion": controlplane::kinds::kube_version(),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "rustc", "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// The group/versions served outside the core group, in table order.
fn group_versions() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in Kind::ALL {
        let gv = k.api_version();
        if gv != "v1" && !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every named group.
pub fn groups() -> Value {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .filter_map(|gv| gv.split_once('/'))
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`; `None` when nothing is served
/// there.
pub fn resources(group_version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == group_version)
    {
        let i = k.info();
        resources.push(json!({
            "name": i.plural, "singularName": i.singular, "namespaced": i.namespaced,
            "kind": i.kind, "verbs": i.verbs, "shortNames": i.short_names,
            "categories": i.categories,
        }));
        for sub in i.subresources {
            let (kind, verbs, gv) = match sub {
                Subresource::Status => (i.kind, vec!["get", "patch", "update"], None),
                Subresource::Scale => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                Subresource::Binding => ("Binding", vec!["create"], None),
            };
            let mut r = json!({
                "name": format!("{}/{}", i.plural, sub.name()), "singularName": "",
                "namespaced": i.namespaced, "kind": kind, "verbs": verbs,
            });
            if let Some((g, v)) = gv {
                r["group"] = g.into();
                r["version"] = v.into();
            }
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources}))
}

/// The aggregated discovery versions served, in order of preference.
const AGGREGATED: [&str; 2] = ["v2", "v2beta1"];

/// The aggregated discovery version the client's `Accept` asks for first
/// (JSON only), if any: client-go sends
/// `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...`.
pub fn aggregated_wanted(accept: &str) -> Option<&'static str> {
    accept.split(',').find_map(|media| {
        let mut parts = media.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("application/json") {
            return None;
        }
        let (mut g, mut v, mut r#as) = (None, None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = Some(x),
                Some(("v", x)) => v = Some(x),
                Some(("as", x)) => r#as = Some(x),
                _ => {}
            }
        }
        if g != Some("apidiscovery.k8s.io") || r#as != Some("APIGroupDiscoveryList") {
            return None;
        }
        AGGREGATED.into_iter().find(|a| Some(*a) == v)
    })
}

/// The content type of an aggregated document of `version`.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// The `APIGroupDiscoveryList` of `/api` (`core`) or `/apis`, as
/// aggregated discovery `version` (v2 and v2beta1 have one shape).
pub fn aggregated(core: bool, version: &str) -> Value {
    let gvs: Vec<&str> = match core {
        true => vec!["v1"],
        false => group_versions(),
    };
    let mut items: Vec<Value> = Vec::new();
    for gv in gvs {
        let (group, v) = gv.split_once('/').unwrap_or(("", gv));
        let resources: Vec<Value> = Kind::ALL
            .into_iter()
            .filter(|k| k.api_version() == gv)
            .map(|k| resource_discovery(k, group, v))
            .collect();
        let version_doc = json!({"version": v, "resources": resources, "freshness": "Current"});
        // One item per group; a group with several versions lists them
        // in table order (the first is the preferred one).
        match items.iter_mut().find(|i| i["metadata"]["name"] == group) {
            Some(i) => {
                if let Some(vs) = i["versions"].as_array_mut() {
                    vs.push(version_doc);
                }
            }
            None => items.push(json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": [version_doc],
            })),
        }
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// One kind's `APIResourceDiscovery` (empty lists left out, as Go's
/// `omitempty` leaves them).
fn resource_discovery(k: Kind, group: &str, version: &str) -> Value {
    let i = k.info();
    let mut r = json!({
        "resource": i.plural,
        "responseKind": {"group": group, "version": version, "kind": i.kind},
        "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": i.singular,
        "verbs": i.verbs,
    });
    if !i.short_names.is_empty() {
        r["shortNames"] = json!(i.short_names);
    }
    if !i.categories.is_empty() {
        r["categories"] = json!(i.categories);
    }
    let subs: Vec<Value> = i
        .subresources
        .iter()
        .map(|sub| {
            let (kind, verbs) = match sub {
                Subresource::Status => (
                    json!({"group": group, "version": version, "kind": i.kind}),
                    vec!["get", "patch", "update"],
                ),
                Subresource::Scale => (
                    json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                    vec!["get", "patch", "update"],
                ),
                Subresource::Binding => (
                    json!({"group": "", "version": "v1", "kind": "Binding"}),
                    vec!["create"],
                ),
            };
            json!({"subresource": sub.name(), "responseKind": kind, "verbs": verbs})
        })
        .collect();
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_kind_once_with_its_subresources() {
        let core = resources("v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods") && names.contains(&"pods/status"),
            "{names:?}"
        );
        let pods = &core["resources"][names.iter().position(|n| *n == "pods").unwrap()];
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        let apps = resources("apps/v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        let listed: usize = std::iter::once("v1")
            .chain(group_versions())
            .map(|gv| {
                resources(gv).unwrap()["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| !r["name"].as_str().unwrap().contains('/'))
                    .count()
            })
            .sum();
        assert_eq!(listed, Kind::ALL.len());
        assert!(resources("apps/v2").is_none());
        assert!(groups()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "apps"));
    }

    #[test]
    fn the_accept_header_chooses_aggregated_discovery() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_wanted(kubectl), Some("v2"));
        assert_eq!(
            aggregated_wanted(
                "application/json; g=apidiscovery.k8s.io; v=v2beta1; as=APIGroupDiscoveryList"
            ),
            Some("v2beta1")
        );
        assert_eq!(aggregated_wanted("application/json, */*"), None);
        assert_eq!(aggregated_wanted(""), None);
        // Protobuf is not served; the JSON entry after it is.
        assert_eq!(
            aggregated_wanted("application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
            Some("v2")
        );
        assert_eq!(
            aggregated_wanted(
                "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"
            ),
            None
        );
    }

    #[test]
    fn aggregated_discovery_holds_what_plain_discovery_lists() {
        let core = aggregated(true, "v2");
        assert_eq!(core["kind"], "APIGroupDiscoveryList");
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = core["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "");
        let pods = items[0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert!(
            subs.contains(&"status") && subs.contains(&"binding"),
            "{subs:?}"
        );
        let named = aggregated(false, "v2beta1");
        assert_eq!(named["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let apps = named["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        // Every kind once, as in plain discovery.
        let count = |doc: &Value| -> usize {
            doc["items"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["versions"].as_array().unwrap())
                .map(|v| v["resources"].as_array().unwrap().len())
                .sum()
        };
        assert_eq!(count(&core) + count(&named), Kind::ALL.len());
    }
}
