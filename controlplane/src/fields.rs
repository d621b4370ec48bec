//! Field validation of request bodies, as kube-apiserver's
//! `fieldValidation` query parameter asks: `Strict` refuses a body with a
//! field the kind does not have, `Warn` (the server's default) accepts it
//! and warns, `Ignore` drops it silently.
//!
//! A field is unknown when decoding the body into its kind and encoding it
//! again loses it: the typed model is the schema. Explicit nulls are not
//! unknown (`creationTimestamp: null` is what `kubectl create --dry-run`
//! writes). Duplicate keys are not detected: JSON bodies are parsed into
//! maps before this sees them, and the last value wins.

use serde_json::Value;

use crate::api::Error;
use crate::objects::Object;

/// What to do with unknown fields in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    /// The `fieldValidation` query parameter (absent: `Warn`, the server's
    /// default). Values are compared without regard to case, as
    /// kube-apiserver does.
    pub fn parse(v: Option<&str>) -> Result<FieldValidation, Error> {
        match v.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("warn") => Ok(FieldValidation::Warn),
            Some("strict") => Ok(FieldValidation::Strict),
            Some("ignore") => Ok(FieldValidation::Ignore),
            Some(_) => Err(Error::BadRequest(format!(
                "fieldValidation: invalid value {:?}: want one of Ignore, Warn, Strict",
                v.unwrap_or_default()
            ))),
        }
    }

    /// Checks `body` (the JSON the client sent, after any patch) against
    /// `decoded` (the object it decoded to). `Strict` fails naming every
    /// unknown field; otherwise the warnings to send back (none for
    /// `Ignore`).
    pub fn check(self, body: &Value, decoded: &Object) -> Result<Vec<String>, Error> {
        if self == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let unknown = unknown_fields(body, &decoded.to_value());
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let each: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match self {
            FieldValidation::Strict => Err(Error::BadRequest(format!(
                "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                decoded.kind(),
                decoded.kind().api_version(),
                decoded.kind(),
                each.join(", ")
            ))),
            _ => Ok(each),
        }
    }
}

/// The paths (`spec.containers[0].imagePullPolicyy`) of the fields of
/// `sent` that `kept` does not have, in document order.
pub fn unknown_fields(sent: &Value, kept: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(sent, kept, &mut String::new(), &mut out);
    out
}

fn walk(sent: &Value, kept: &Value, path: &mut String, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, v) in s {
                if v.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match k.get(key) {
                    Some(kv) => walk(v, kv, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (v, kv)) in s.iter().zip(k).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(v, kv, path, out);
                path.truncate(len);
            }
        }
        // A value of another shape was converted (an int-or-string, a
        // quantity), not lost.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: Value) -> Value {
        let mut v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        merge(&mut v, extra);
        v
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn check(mode: FieldValidation, body: Value) -> Result<Vec<String>, Error> {
        let obj = Object::from_value(body.clone()).unwrap();
        mode.check(&body, &obj)
    }

    #[test]
    fn a_known_body_passes_in_every_mode() {
        for m in [
            FieldValidation::Strict,
            FieldValidation::Warn,
            FieldValidation::Ignore,
        ] {
            assert_eq!(check(m, pod(json!({}))).unwrap(), Vec::<String>::new());
        }
    }

    #[test]
    fn strict_names_every_unknown_field_with_its_path() {
        let body = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "busybox",
            "imagePullPolicyy": "Always"}], "bogus": 1}, "extra": true}),
        );
        let e = check(FieldValidation::Strict, body)
            .unwrap_err()
            .to_string();
        assert!(e.contains("strict decoding error"), "{e}");
        assert!(
            e.contains(r#"unknown field "spec.containers[0].imagePullPolicyy""#),
            "{e}"
        );
        assert!(e.contains(r#"unknown field "spec.bogus""#), "{e}");
        assert!(e.contains(r#"unknown field "extra""#), "{e}");
    }

    #[test]
    fn warn_returns_warnings_and_ignore_none() {
        let body = pod(json!({"spec": {"bogus": 1}}));
        assert_eq!(
            check(FieldValidation::Warn, body.clone()).unwrap(),
            vec![r#"unknown field "spec.bogus""#.to_string()]
        );
        assert!(check(FieldValidation::Ignore, body).unwrap().is_empty());
    }

    #[test]
    fn converted_values_and_nulls_are_not_unknown() {
        let body = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80}],
            "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
            "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}],
            "nodeName": null}}),
        );
        assert!(check(FieldValidation::Strict, body).unwrap().is_empty());
    }

    #[test]
    fn the_parameter_is_read_without_regard_to_case() {
        assert_eq!(FieldValidation::parse(None).unwrap(), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::parse(Some("strict")).unwrap(),
            FieldValidation::Strict
        );
        assert_eq!(
            FieldValidation::parse(Some("Ignore")).unwrap(),
            FieldValidation::Ignore
        );
        let e = FieldValidation::parse(Some("Lenient"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fieldValidation") && e.contains("Lenient"),
            "{e}"
        );
    }
}
