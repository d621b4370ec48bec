//! The part of `/openapi/v3` kubectl reads before `apply`/`create`: per
//! group/version, a PATCH operation per kind tagged with its
//! group/version/kind and the `fieldValidation` query parameter, so
//! kubectl leaves validation to the server instead of downloading full
//! schemas (controlplane::fields does it: Strict refuses unknown fields,
//! Warn answers with Warning headers). Schemas themselves (`kubectl
//! explain`) are not served yet.

use controlplane::Kind;
use serde_json::{json, Map, Value};

/// The path of a group/version in `/openapi/v3` (`api/v1`, `apis/apps/v1`).
fn gv_path(gv: &str) -> String {
    if gv == "v1" {
        "api/v1".into()
    } else {
        format!("apis/{gv}")
    }
}

/// `/openapi/v3`: where each group/version's document is.
pub fn index() -> Value {
    let mut paths = Map::new();
    for k in Kind::ALL {
        let p = gv_path(k.api_version());
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv path>`, or `None` when nothing is served there.
pub fn group_version(path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for k in Kind::ALL
        .into_iter()
        .filter(|k| gv_path(k.api_version()) == path)
    {
        let i = k.info();
        let ns = if i.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        paths.insert(
            format!("/{path}{ns}/{}/{{name}}", i.plural),
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": i.group(), "version": i.version(), "kind": i.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    (!paths.is_empty()).then(|| {
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths})
    })
}
