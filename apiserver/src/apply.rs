//! Field managers of requests ([`Who`]: managedFields for every write)
//! and server-side apply as a request: `PATCH` with
//! `application/apply-patch+yaml`. Checks the configuration against the
//! URL, merges it through [`crate::fieldmanager::apply`], and writes the
//! result (creating the object when missing). Nothing is written when
//! the apply changes nothing, so the resourceVersion stays.

use controlplane::fields::FieldValidation;
use controlplane::{ControlPlane, Error, Object, ObjectRef};
use serde_json::{json, Value};

use crate::fieldmanager::{self, Conflict};
use crate::server::{checked, json_response, scope_of, warn, Resp};

/// The media type of an apply.
pub const APPLY: &str = "application/apply-patch+yaml";

/// What the request asked besides its body.
pub struct Options<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub fv: FieldValidation,
}

/// Reads and checks an apply body for `what`: a YAML (or JSON) object of
/// the URL's apiVersion, kind, name and namespace.
pub fn configuration(body: &[u8], what: &ObjectRef) -> Result<Value, Error> {
    let mut v: Value = serde_yaml::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))?;
    let Value::Object(m) = &mut v else {
        return Err(Error::BadRequest(
            "error decoding YAML: the apply configuration must be an object".into(),
        ));
    };
    let text = |m: &serde_json::Map<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (version, kind) = (text(m, "apiVersion"), text(m, "kind"));
    let want = what.kind.api_version();
    if version != want {
        return Err(Error::BadRequest(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, expected: {want}"
        )));
    }
    if kind != what.kind.name() {
        return Err(Error::BadRequest(format!(
            "kind: the apply configuration is a {kind:?} but the URL names a {}",
            what.kind.name()
        )));
    }
    let meta = m
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| Error::BadRequest("metadata: must be an object".into()))?;
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("name".into(), what.name.as_str().into());
        }
        Some(n) if n != what.name => {
            return Err(Error::BadRequest(format!(
            "metadata.name: the name of the object ({n}) does not match the name on the URL ({})",
            what.name
        )))
        }
        Some(_) => {}
    }
    if what.kind.namespaced() {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), what.namespace.as_str().into());
            }
            Some(ns) if ns != what.namespace => {
                return Err(Error::BadRequest(format!(
                    "metadata.namespace: the namespace of the provided object ({ns}) does not match the namespace sent on the request ({})",
                    what.namespace
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(field) = fieldmanager::merge::missing_key(&v) {
        return Err(Error::invalid(
            format!("{} {:?}", what.kind.name(), what.name),
            &field,
            "Required value: a key of this list's items",
        ));
    }
    Ok(v)
}

/// kube-apiserver's 409 for an apply that would change fields others
/// own: the message kubectl prints and one cause per field.
pub fn conflict_response(conflicts: &[Conflict]) -> Resp {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict",
                   "message": format!("conflict with {}", c.manager),
                   "field": c.path.to_string()})
        })
        .collect();
    json_response(
        409,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": fieldmanager::conflict_message(conflicts), "reason": "Conflict",
                "details": {"causes": causes}, "code": 409}),
    )
}

/// Applies `config` to `what` for `opts.manager`: 201 with the created
/// object, 200 with the written one (or the unchanged live one), 409 on
/// conflicts. A concurrent write makes it start over.
pub async fn apply(
    cp: &dyn ControlPlane,
    what: &ObjectRef,
    config: &Value,
    opts: &Options<'_>,
) -> Result<Resp, Error> {
    // A resourceVersion in the configuration is a precondition: no retry.
    let pinned = config
        .pointer("/metadata/resourceVersion")
        .is_some_and(|r| !r.is_null());
    for _ in 0..5 {
        let live = match cp.get(what).await {
            Ok(o) => Some(o.to_value()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let merged = match fieldmanager::apply(
            live.as_ref(),
            config,
            opts.manager,
            opts.force,
            &fieldmanager::now(),
        ) {
            Ok(m) => m,
            Err(conflicts) => return Ok(conflict_response(&conflicts)),
        };
        if live.as_ref() == Some(&merged) {
            return Ok(json_response(200, &merged));
        }
        let (obj, warnings) = checked(merged, &scope_of(what), Some(&what.name), opts.fv)?;
        let written = match live {
            Some(_) => cp.update(obj, None).await.map(|o| (200, o)),
            None => cp.create(obj, None).await.map(|o| (201, o)),
        };
        match written {
            Ok((code, o)) => return Ok(warn(json_response(code, &o.to_value()), &warnings)),
            Err(e) if !pinned && (e.is_conflict() || matches!(e, Error::AlreadyExists { .. })) => {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict {
        kind: what.kind,
        name: what.name.clone(),
        reason: "the object kept changing; tried 5 times".into(),
    })
}

/// Who writes, for managedFields: the `fieldManager` asked for, else the
/// client's User-Agent up to its first `/` (`kubectl`), as kube-apiserver
/// names managers.
#[derive(Debug)]
pub struct Who {
    /// `fieldManager` from the query, if given.
    pub asked: Option<String>,
    manager: String,
}

impl Who {
    /// From the request's `fieldManager` and `User-Agent`.
    pub fn of(field_manager: Option<&str>, user_agent: Option<&str>) -> Result<Who, Error> {
        let asked = field_manager.filter(|m| !m.is_empty()).map(str::to_string);
        if let Some(m) = asked.as_deref().filter(|m| m.chars().count() > 128) {
            return Err(Error::invalid(
                "options",
                "fieldManager",
                format!(
                    "Too long: may not be longer than 128 (got {})",
                    m.chars().count()
                ),
            ));
        }
        let agent = user_agent
            .and_then(|a| a.split('/').next())
            .filter(|a| !a.is_empty())
            .unwrap_or("unknown");
        let manager = asked
            .clone()
            .unwrap_or_else(|| agent.chars().take(128).collect());
        Ok(Who { asked, manager })
    }

    fn writer<'a>(&'a self, subresource: &'a str) -> crate::fieldmanager::Writer<'a> {
        crate::fieldmanager::Writer {
            manager: &self.manager,
            subresource,
        }
    }

    /// `obj` as created, with its creator's Update entry (defaults
    /// included, as kube-apiserver defaults before recording).
    pub fn created(&self, mut obj: Object) -> Result<Object, Error> {
        controlplane::defaults::apply(&mut obj);
        let mut v = obj.to_value();
        crate::fieldmanager::update(None, &mut v, self.writer(""), &crate::fieldmanager::now());
        Object::from_value(v).map_err(|e| Error::Internal(format!("managedFields: {e}")))
    }

    /// `obj` replacing `live`, with the writer's Update entry.
    pub fn updated(&self, live: &Object, mut obj: Object) -> Result<Object, Error> {
        controlplane::defaults::apply(&mut obj);
        let mut v = obj.to_value();
        let now = crate::fieldmanager::now();
        crate::fieldmanager::update(Some(&live.to_value()), &mut v, self.writer(""), &now);
        Object::from_value(v).map_err(|e| Error::Internal(format!("managedFields: {e}")))
    }

    /// Records a write through `subresource` (the scale's replicas).
    pub fn marker<'a>(&'a self, subresource: &'a str) -> impl Fn(&Value, &mut Value) + Sync + 'a {
        move |live, new| {
            let now = crate::fieldmanager::now();
            crate::fieldmanager::update(Some(live), new, self.writer(subresource), &now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managers_are_named_as_kube_apiserver_names_them() {
        let ua = Some("kubectl/v1.32.0 (linux/amd64) kubernetes/abc");
        assert_eq!(Who::of(None, ua).unwrap().manager, "kubectl");
        assert_eq!(Who::of(Some(""), ua).unwrap().manager, "kubectl");
        let w = Who::of(Some("kubectl-edit"), ua).unwrap();
        assert_eq!(
            (w.manager.as_str(), w.asked.as_deref()),
            ("kubectl-edit", Some("kubectl-edit"))
        );
        assert_eq!(Who::of(None, None).unwrap().manager, "unknown");
        let e = Who::of(Some(&"m".repeat(129)), ua).unwrap_err();
        assert!(e.to_string().contains("fieldManager: Too long"), "{e}");
    }

    #[test]
    fn configurations_must_match_the_url() {
        let what = ObjectRef::new(controlplane::Kind::ConfigMap, "default", "cm");
        let ok =
            configuration(b"apiVersion: v1\nkind: ConfigMap\ndata: {a: '1'}\n", &what).unwrap();
        assert_eq!(
            ok["metadata"],
            json!({"name": "cm", "namespace": "default"})
        );
        for (body, want) in [
            ("[1, 2]", "must be an object"),
            ("{a: [", "error decoding YAML"),
            (
                "apiVersion: v2\nkind: ConfigMap\n",
                "Specified patch version: v2, expected: v1",
            ),
            (
                "apiVersion: v1\nkind: Secret\n",
                "kind: the apply configuration is a \"Secret\"",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                "metadata.name",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: x}\n",
                "metadata.namespace",
            ),
        ] {
            let e = configuration(body.as_bytes(), &what)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{body:?}: {e}");
        }
    }
}
