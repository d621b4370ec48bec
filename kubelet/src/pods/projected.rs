//! The payloads of downwardAPI and projected volumes, as kubelet's
//! downwardapi and projected plugins collect them: fieldRef (the pod's
//! metadata) and resourceFieldRef files, and for projected volumes the
//! union of configMap, secret and downwardAPI sources. Pure: objects come
//! through lookups; `volumes` writes the result.

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, Pod, ProjectedVolumeSource, Secret,
};

use super::env::{resource_value, volume_field_value};
use super::volumes::{config, config_map_data, item, mode, payload, secret_data, Payload, Result};

/// The files of a downwardAPI volume (or source): one per item, its value
/// from `fieldRef` or `resourceFieldRef`, its mode the item's or `default`.
pub(super) fn downward_api(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default: u32,
    field: &str,
) -> Result<Payload> {
    let mut out = Payload::new();
    for (i, it) in items.iter().enumerate() {
        let f = format!("{field}.items[{i}]");
        let m = item(&it.path, it.mode, default, &f)?;
        let value = match (&it.field_ref, &it.resource_field_ref) {
            (Some(r), None) => volume_field_value(pod, r)
                .map_err(|e| config(format!("{f}.fieldRef.fieldPath"), e.0))?,
            (None, Some(r)) => {
                if r.container_name.as_deref().unwrap_or_default().is_empty() {
                    return Err(config(
                        format!("{f}.resourceFieldRef.containerName"),
                        "is required in a volume",
                    ));
                }
                resource_value(pod, None, r)
                    .map_err(|e| config(format!("{f}.resourceFieldRef"), e.0))?
            }
            _ => {
                return Err(config(
                    &f,
                    "exactly one of fieldRef and resourceFieldRef is required",
                ))
            }
        };
        out.insert(it.path.clone(), (value.into_bytes(), m));
    }
    Ok(out)
}

/// The files of a projected volume: every source's files in one
/// directory, under the volume's `defaultMode`; two sources may not write
/// the same path. serviceAccountToken and clusterTrustBundle sources are
/// refused: this node has no ServiceAccount tokens or trust bundles.
pub(super) fn projected(
    pod: &Pod,
    p: &ProjectedVolumeSource,
    field: &str,
    config_maps: &dyn Fn(&str) -> Option<ConfigMap>,
    secrets: &dyn Fn(&str) -> Option<Secret>,
) -> Result<Payload> {
    let default = mode(p.default_mode, || format!("{field}.defaultMode"))?;
    let mut out = Payload::new();
    for (j, s) in p.sources.iter().flatten().enumerate() {
        let f = format!("{field}.sources[{j}]");
        let files = if let Some(c) = &s.config_map {
            let f = format!("{f}.configMap");
            let optional = c.optional == Some(true);
            match config_maps(&c.name) {
                Some(cm) => payload(
                    config_map_data(cm),
                    c.items.as_deref(),
                    Some(default as i32),
                    optional,
                    &f,
                    |k| format!("configmap references non-existent config key: {k}"),
                )?,
                None if optional => Payload::new(),
                None => return Err(config(&f, format!("configmap {:?} not found", c.name))),
            }
        } else if let Some(sec) = &s.secret {
            let f = format!("{f}.secret");
            let optional = sec.optional == Some(true);
            match secrets(&sec.name) {
                Some(data) => payload(
                    secret_data(data),
                    sec.items.as_deref(),
                    Some(default as i32),
                    optional,
                    &f,
                    |k| format!("references non-existent secret key: {k}"),
                )?,
                None if optional => Payload::new(),
                None => return Err(config(&f, format!("secret {:?} not found", sec.name))),
            }
        } else if let Some(d) = &s.downward_api {
            downward_api(
                pod,
                d.items.as_deref().unwrap_or_default(),
                default,
                &format!("{f}.downwardAPI"),
            )?
        } else if s.service_account_token.is_some() {
            return Err(config(
                format!("{f}.serviceAccountToken"),
                "is not supported by this node: it issues no ServiceAccount tokens yet",
            ));
        } else if s.cluster_trust_bundle.is_some() {
            return Err(config(
                format!("{f}.clusterTrustBundle"),
                "is not supported by this node",
            ));
        } else {
            return Err(config(
                &f,
                "names no source (configMap, secret, downwardAPI)",
            ));
        };
        for (path, file) in files {
            if out.contains_key(&path) {
                return Err(config(
                    &f,
                    format!("path {path:?} is written by an earlier source"),
                ));
            }
            out.insert(path, file);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    /// The payload as text, for asserting.
    fn text(p: &Payload) -> BTreeMap<String, (String, u32)> {
        p.iter()
            .map(|(k, (v, m))| (k.clone(), (String::from_utf8_lossy(v).into_owned(), *m)))
            .collect()
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "tier": "front"}, "annotations": {"note": "a \"b\""}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "b",
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}]},
        }))
        .unwrap()
    }

    fn items(v: serde_json::Value) -> Vec<DownwardAPIVolumeFile> {
        serde_json::from_value(v).unwrap()
    }

    fn err(r: Result<Payload>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn downward_api_files_follow_kubelet() {
        let files = items(json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}, "mode": 0o600},
            {"path": "meta/annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1m"}},
        ]));
        let p = downward_api(&pod(), &files, 0o644, "spec.volumes[0].downwardAPI").unwrap();
        let t = text(&p);
        assert_eq!(t["name"], ("web".into(), 0o644));
        assert_eq!(t["ns"].0, "shop");
        assert_eq!(t["uid"].0, "u-1");
        assert_eq!(t["labels"], ("app=\"web\"\ntier=\"front\"".into(), 0o600));
        assert_eq!(t["meta/annotations"].0, "note=\"a \\\"b\\\"\"");
        assert_eq!(t["app"].0, "web");
        assert_eq!(t["mem"].0, "64");
        assert_eq!(t["cpu"].0, "500");
    }

    #[test]
    fn downward_api_bad_items_name_the_field() {
        let one = |v| {
            err(downward_api(
                &pod(),
                &items(json!([v])),
                0o644,
                "spec.volumes[2].downwardAPI",
            ))
        };
        let e = one(json!({"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}));
        assert!(
            e.starts_with("spec.volumes[2].downwardAPI.items[0].fieldRef.fieldPath: unsupported fieldPath in a volume: status.podIP"),
            "{e}"
        );
        let e = one(json!({"path": "m", "resourceFieldRef": {"resource": "limits.memory"}}));
        assert_eq!(
            e,
            "spec.volumes[2].downwardAPI.items[0].resourceFieldRef.containerName: is required in a volume"
        );
        let e = one(
            json!({"path": "m", "resourceFieldRef": {"containerName": "nope", "resource": "limits.memory"}}),
        );
        assert!(e.contains("container nope not found"), "{e}");
        let e = one(json!({"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}));
        assert!(
            e.starts_with("spec.volumes[2].downwardAPI.items[0].path: "),
            "{e}"
        );
        let e = one(json!({"path": "x"}));
        assert!(
            e.contains("exactly one of fieldRef and resourceFieldRef"),
            "{e}"
        );
        let e =
            one(json!({"path": "x", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o1000}));
        assert!(
            e.starts_with("spec.volumes[2].downwardAPI.items[0].mode: "),
            "{e}"
        );
    }

    fn source(v: serde_json::Value) -> ProjectedVolumeSource {
        serde_json::from_value(v).unwrap()
    }

    fn cms(n: &str) -> Option<ConfigMap> {
        (n == "cfg").then(|| {
            serde_json::from_value(
                json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}}),
            )
            .unwrap()
        })
    }

    fn secs(n: &str) -> Option<Secret> {
        (n == "db").then(|| {
            serde_json::from_value(
                json!({"metadata": {"name": "db"}, "data": {"pw": "aHVudGVyMg=="}}),
            )
            .unwrap()
        })
    }

    #[test]
    fn projected_joins_its_sources() {
        let p = source(json!({"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a"}]}},
            {"secret": {"name": "db", "items": [{"key": "pw", "path": "pw", "mode": 0o400}]}},
            {"secret": {"name": "gone", "optional": true}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ]}));
        let t = text(&projected(&pod(), &p, "spec.volumes[0].projected", &cms, &secs).unwrap());
        assert_eq!(t.len(), 3);
        assert_eq!(t["conf/a"], ("1".into(), 0o440));
        assert_eq!(t["pw"], ("hunter2".into(), 0o400));
        assert_eq!(t["labels"].1, 0o440);
        let all = source(json!({"sources": [{"configMap": {"name": "cfg"}}]}));
        let t = text(&projected(&pod(), &all, "f", &cms, &secs).unwrap());
        assert_eq!(t["b"], ("2".into(), 0o644), "every key, the default mode");
    }

    #[test]
    fn projected_refusals_name_the_field() {
        let e = |v| {
            err(projected(
                &pod(),
                &source(v),
                "spec.volumes[1].projected",
                &cms,
                &secs,
            ))
        };
        assert_eq!(
            e(json!({"sources": [{"configMap": {"name": "cfg"}},
                {"serviceAccountToken": {"path": "token"}}]})),
            "spec.volumes[1].projected.sources[1].serviceAccountToken: is not supported by this node: \
             it issues no ServiceAccount tokens yet"
        );
        assert_eq!(
            e(json!({"sources": [{"secret": {"name": "missing"}}]})),
            "spec.volumes[1].projected.sources[0].secret: secret \"missing\" not found"
        );
        assert!(e(json!({"sources": [{"configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}]}))
            .starts_with("spec.volumes[1].projected.sources[0].configMap.items[0].key: "));
        assert_eq!(
            e(json!({"sources": [{"configMap": {"name": "cfg"}}, {"configMap": {"name": "cfg"}}]})),
            "spec.volumes[1].projected.sources[1]: path \"a\" is written by an earlier source"
        );
        assert!(e(json!({"defaultMode": 0o7777, "sources": []}))
            .starts_with("spec.volumes[1].projected.defaultMode: "));
    }
}
