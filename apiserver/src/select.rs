//! List and watch filters from query parameters: `labelSelector`
//! (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and
//! `fieldSelector` (`metadata.name`, `metadata.namespace`, `spec.nodeName`,
//! `status.phase` with `=`, `==`, `!=`). Parsing refuses what it does not
//! understand instead of matching everything.

use controlplane::Object;

/// One requirement on a label or a field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed selector pair; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

/// Splits at commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn set_of(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_term(t: &str) -> Option<Req> {
    if let Some((k, v)) = t.split_once("!=") {
        return Some(Req::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Some(Req::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once(" notin ") {
        return Some(Req::NotIn(k.trim().into(), set_of(v)?));
    }
    if let Some((k, v)) = t.split_once(" in ") {
        return Some(Req::In(k.trim().into(), set_of(v)?));
    }
    if let Some(k) = t.strip_prefix('!') {
        return Some(Req::Absent(k.trim().into()));
    }
    (!t.contains(' ')).then(|| Req::Exists(t.into()))
}

/// The fields a field selector may name (for Events, the ones
/// `kubectl describe` and `kubectl get events --field-selector` use).
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

impl Selector {
    /// Parses the two query values; the error says which part is wrong.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let parse = |s: &str| {
            terms(s)
                .into_iter()
                .map(|t| parse_term(t).ok_or_else(|| format!("unable to parse requirement: {t:?}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let labels = labels.map(parse).transpose()?.unwrap_or_default();
        let fields = fields.map(parse).transpose()?.unwrap_or_default();
        for f in &fields {
            match f {
                Req::Eq(k, _) | Req::Ne(k, _) if FIELDS.contains(&k.as_str()) => {}
                Req::Eq(k, _) | Req::Ne(k, _) => {
                    return Err(format!("field label not supported: {k}"));
                }
                _ => return Err("field selectors take only =, == and !=".into()),
            }
        }
        Ok(Selector { labels, fields })
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Object) -> bool {
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        let empty = Default::default();
        let labels = obj.meta().labels.as_ref().unwrap_or(&empty);
        let label_ok = self
            .labels
            .iter()
            .all(|r| holds(r, |k| labels.get(k).cloned()));
        if !label_ok {
            return false;
        }
        let v = if self.fields.is_empty() {
            serde_json::Value::Null
        } else {
            obj.to_value()
        };
        self.fields.iter().all(|r| {
            holds(r, |k| {
                let got = k.split('.').try_fold(&v, |v, p| v.get(p));
                Some(got.and_then(|g| g.as_str()).unwrap_or_default().to_string())
            })
        })
    }
}

fn holds(r: &Req, get: impl Fn(&str) -> Option<String>) -> bool {
    match r {
        Req::Eq(k, v) => get(k).as_deref() == Some(v),
        Req::Ne(k, v) => get(k).as_deref() != Some(v),
        Req::In(k, vs) => get(k).is_some_and(|g| vs.contains(&g)),
        Req::NotIn(k, vs) => get(k).is_none_or(|g| !vs.contains(&g)),
        Req::Exists(k) => get(k).is_some(),
        Req::Absent(k) => get(k).is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, node: &str) -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap()
    }

    #[test]
    fn label_and_field_selectors_select() {
        let a = pod("a", json!({"app": "web", "tier": "fe"}), "n1");
        let b = pod("b", json!({"app": "db"}), "n2");
        let s = |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).unwrap();
        assert!(s(Some("app=web"), None).matches(&a) && !s(Some("app=web"), None).matches(&b));
        assert!(s(Some("app in (web, db),!canary"), None).matches(&b));
        assert!(s(Some("tier"), None).matches(&a) && !s(Some("tier"), None).matches(&b));
        assert!(s(Some("app notin (web)"), None).matches(&b));
        assert!(s(None, Some("metadata.name=a")).matches(&a));
        assert!(!s(None, Some("spec.nodeName!=n1")).matches(&a));
        assert!(s(None, Some("metadata.namespace==default,spec.nodeName=n2")).matches(&b));
        assert!(Selector::parse(None, Some("spec.foo=x")).is_err());
        assert!(Selector::parse(Some("a in x"), None).is_err());
    }

    #[test]
    fn events_are_selected_as_kubectl_describe_asks() {
        let ev = Object::from_value(json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u-1"},
            "reason": "Started", "type": "Normal"}))
        .unwrap();
        let s = |f: &str| Selector::parse(None, Some(f)).unwrap().matches(&ev);
        assert!(s(
            "involvedObject.name=web,involvedObject.namespace=default,involvedObject.uid=u-1"
        ));
        assert!(!s("involvedObject.uid=u-2"));
        assert!(s("type=Normal,reason=Started"));
    }
}
