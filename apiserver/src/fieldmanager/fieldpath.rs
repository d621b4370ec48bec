//! Field paths and sets of them in structured-merge-diff's shape: a path
//! is a list of elements (`f:name` a field, `k:{"name":"web"}` a keyed
//! list item, `v:"x"` a set item, `i:3` an index), a set is a tree of
//! them, serialized as `FieldsV1` (`"."` marks a node that is itself a
//! member and has children).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// A field of a map: `f:name`.
    Field(String),
    /// A list item by its keys, as canonical JSON with sorted keys:
    /// `k:{"containerPort":80,"protocol":"TCP"}`.
    Key(String),
    /// A set item by its value, as JSON: `v:"finalizer.example.com"`.
    Value(String),
    /// A list item by position: `i:3`.
    Index(usize),
}

impl Element {
    /// The `FieldsV1` key of this element.
    fn key(&self) -> String {
        match self {
            Element::Field(f) => format!("f:{f}"),
            Element::Key(k) => format!("k:{k}"),
            Element::Value(v) => format!("v:{v}"),
            Element::Index(i) => format!("i:{i}"),
        }
    }

    fn parse(s: &str) -> Option<Element> {
        let (tag, rest) = s.split_once(':')?;
        Some(match tag {
            "f" => Element::Field(rest.to_string()),
            "k" => Element::Key(rest.to_string()),
            "v" => Element::Value(rest.to_string()),
            "i" => Element::Index(rest.parse().ok()?),
            _ => return None,
        })
    }
}

/// A path as structured-merge-diff prints it in conflicts:
/// `.spec.containers[name="web"].image`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Path(pub Vec<Element>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            match e {
                Element::Field(n) => write!(f, ".{n}")?,
                Element::Key(k) => {
                    let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))?
                }
                Element::Value(v) => write!(f, "[={v}]")?,
                Element::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A set of paths.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Set(BTreeMap<Element, Node>);

#[derive(Debug, Clone, PartialEq, Default)]
struct Node {
    member: bool,
    children: Set,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `path` (the empty path is not a member of anything).
    pub fn insert(&mut self, path: &[Element]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let node = self.0.entry(first.clone()).or_default();
        if rest.is_empty() {
            node.member = true;
        } else {
            node.children.insert(rest);
        }
    }

    /// Whether `path` is a member.
    pub fn has(&self, path: &[Element]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        match self.0.get(first) {
            Some(n) if rest.is_empty() => n.member,
            Some(n) => n.children.has(rest),
            None => false,
        }
    }

    /// Whether `path` or anything under it is a member.
    pub fn has_under(&self, path: &[Element]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return !self.is_empty();
        };
        match self.0.get(first) {
            Some(n) if rest.is_empty() => n.member || !n.children.is_empty(),
            Some(n) => n.children.has_under(rest),
            None => false,
        }
    }

    /// Every member, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, prefix: &mut Vec<Element>, out: &mut Vec<Path>) {
        for (e, n) in &self.0 {
            prefix.push(e.clone());
            if n.member {
                out.push(Path(prefix.clone()));
            }
            n.children.walk(prefix, out);
            prefix.pop();
        }
    }

    /// Members of either.
    pub fn union(&self, other: &Set) -> Set {
        let mut s = self.clone();
        for p in other.paths() {
            s.insert(&p.0);
        }
        s
    }

    /// Members of `self` that are not members of `other`.
    pub fn difference(&self, other: &Set) -> Set {
        Set::from_paths(self.paths().into_iter().filter(|p| !other.has(&p.0)))
    }

    /// Members of both.
    pub fn intersection(&self, other: &Set) -> Set {
        Set::from_paths(self.paths().into_iter().filter(|p| other.has(&p.0)))
    }

    pub fn from_paths(paths: impl IntoIterator<Item = Path>) -> Set {
        let mut s = Set::default();
        for p in paths {
            s.insert(&p.0);
        }
        s
    }

    /// The `FieldsV1` JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(e, n)| {
                    let mut v = n.children.to_fields_v1();
                    if n.member && !n.children.is_empty() {
                        v[".".to_string()] = Value::Object(Map::new());
                    }
                    (e.key(), v)
                })
                .collect(),
        )
    }

    /// Reads `FieldsV1` JSON; `None` when it is not that shape.
    pub fn from_fields_v1(v: &Value) -> Option<Set> {
        let Value::Object(m) = v else { return None };
        let mut s = Set::default();
        for (k, child) in m {
            if k == "." {
                continue;
            }
            let e = Element::parse(k)?;
            let Value::Object(cm) = child else {
                return None;
            };
            let children = Set::from_fields_v1(child)?;
            let member = cm.is_empty() || cm.contains_key(".");
            s.0.insert(e, Node { member, children });
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(n: &str) -> Element {
        Element::Field(n.into())
    }

    #[test]
    fn fields_v1_round_trips_with_dot_for_members_with_children() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}},
                       "f:finalizers": {"v:\"a\"": {}}}
        });
        let s = Set::from_fields_v1(&v).unwrap();
        assert!(s.has(&[f("metadata"), f("labels")]));
        assert!(s.has(&[f("metadata"), f("labels"), f("app")]));
        assert!(!s.has(&[f("metadata")]));
        assert!(s.has(&[
            f("spec"),
            f("containers"),
            Element::Key(r#"{"name":"web"}"#.into())
        ]));
        assert_eq!(s.to_fields_v1(), v);
        assert_eq!(Set::from_fields_v1(&json!({"x:y": {}})), None);
    }

    #[test]
    fn set_algebra() {
        let a = Set::from_paths([Path(vec![f("a"), f("b")]), Path(vec![f("a"), f("c")])]);
        let b = Set::from_paths([Path(vec![f("a"), f("c")]), Path(vec![f("d")])]);
        assert_eq!(a.difference(&b).paths(), vec![Path(vec![f("a"), f("b")])]);
        assert_eq!(a.intersection(&b).paths(), vec![Path(vec![f("a"), f("c")])]);
        assert_eq!(a.union(&b).paths().len(), 3);
        assert!(a.has_under(&[f("a")]));
        assert!(!a.has_under(&[f("d")]));
    }

    #[test]
    fn paths_print_as_upstream_does() {
        let p = Path(vec![
            f("spec"),
            f("ports"),
            Element::Key(r#"{"containerPort":80,"protocol":"TCP"}"#.into()),
            f("name"),
        ]);
        assert_eq!(
            p.to_string(),
            r#".spec.ports[containerPort=80,protocol="TCP"].name"#
        );
        let v = Path(vec![
            f("metadata"),
            f("finalizers"),
            Element::Value("\"x\"".into()),
        ]);
        assert_eq!(v.to_string(), r#".metadata.finalizers[="x"]"#);
    }
}
