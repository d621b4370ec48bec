//! Discovery documents, read from the kinds table: `/version`, `/api`,
//! `/apis`, and an `APIResourceList` per group/version with names, short
//! names, categories, verbs and subresources. Plain (unaggregated)
//! discovery: kubectl falls back to it when `/api` and `/apis` answer
//! `application/json` instead of an `APIGroupDiscoveryList`.

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
}
