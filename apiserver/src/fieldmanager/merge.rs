//! Structured merge over JSON objects: which fields a value sets, how an
//! applied configuration merges into a live object, what an update
//! changed, and removing a path. Maps merge field by field, lists of
//! objects with keys merge item by item (`x-kubernetes-list-map-keys`),
//! `finalizers` is a set, every other list and the selector maps are
//! atomic (replaced whole), as Kubernetes' schemas declare them.

use serde_json::{Map, Value};

use super::fieldpath::{Element, Path, Set};

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Items are identified by these fields (`x-kubernetes-list-type: map`).
    Map(&'static [&'static str]),
    /// Items are scalars identified by value (`set`).
    Set,
    /// Replaced whole (`atomic`).
    Atomic,
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// The list type of the list at field path `fields` (field names only,
/// list items skipped), as Kubernetes' OpenAPI declares it.
pub fn list_type(fields: &[String]) -> ListType {
    let last = fields.last().map(String::as_str).unwrap_or_default();
    let parent = fields.len().checked_sub(2).map(|i| fields[i].as_str());
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => ListType::Map(&["name"]),
        "volumeMounts" => ListType::Map(&["mountPath"]),
        "volumeDevices" => ListType::Map(&["devicePath"]),
        "hostAliases" => ListType::Map(&["ip"]),
        "conditions" => ListType::Map(&["type"]),
        "ownerReferences" => ListType::Map(&["uid"]),
        "topologySpreadConstraints" => ListType::Map(&["topologyKey", "whenUnsatisfiable"]),
        "ports" if parent.is_some_and(|p| CONTAINER_LISTS.contains(&p)) => {
            ListType::Map(&["containerPort", "protocol"])
        }
        // A Service's ports.
        "ports" if fields.len() == 2 && fields[0] == "spec" => ListType::Map(&["port", "protocol"]),
        "finalizers" => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// Whether the map at `fields` is atomic (label selectors, node selectors).
pub fn atomic_map(fields: &[String]) -> bool {
    matches!(
        fields.last().map(String::as_str),
        Some("selector" | "podSelector" | "namespaceSelector" | "labelSelector" | "nodeSelector")
    )
}

/// Whether the map at `fields` is one of the structs Kubernetes' Go
/// types hold by value (always present in a typed object, so never
/// "added" and never owned as a whole: no `"."` in FieldsV1).
fn value_struct(fields: &[String]) -> bool {
    matches!(
        fields.last().map(String::as_str),
        Some("metadata" | "spec" | "template" | "strategy" | "updateStrategy" | "resources")
    )
}

/// The value a list-map key takes when an item leaves it out (the
/// schema's default).
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::from("TCP"))
}

/// The key element of a list-map item; `None` when it lacks a key.
pub fn key_of(item: &Value, keys: &[&str]) -> Option<Element> {
    let mut m = Map::new();
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    for k in sorted {
        let v = item.get(k).cloned().or_else(|| key_default(k))?;
        if !(v.is_string() || v.is_number() || v.is_boolean()) {
            return None;
        }
        m.insert(k.to_string(), v);
    }
    Some(Element::Key(Value::Object(m).to_string()))
}

fn value_element(v: &Value) -> Element {
    Element::Value(v.to_string())
}

/// The first list item without its keys, as a field path naming it
/// (`spec.containers[1].name`); `None` when every keyed item has them.
pub fn missing_key(v: &Value) -> Option<String> {
    fn walk(v: &Value, fields: &mut Vec<String>, at: &str) -> Option<String> {
        match v {
            Value::Object(m) if !atomic_map(fields) => m.iter().find_map(|(k, c)| {
                fields.push(k.clone());
                let at = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let r = walk(c, fields, &at);
                fields.pop();
                r
            }),
            Value::Array(items) => match list_type(fields) {
                ListType::Map(keys) => items.iter().enumerate().find_map(|(i, item)| {
                    let at = format!("{at}[{i}]");
                    if let Some(k) = keys
                        .iter()
                        .find(|k| item.get(**k).is_none() && key_default(k).is_none())
                    {
                        return Some(format!("{at}.{k}"));
                    }
                    walk(item, fields, &at)
                }),
                _ => None,
            },
            _ => None,
        }
    }
    walk(v, &mut Vec::new(), "")
}

/// Every field `v` sets: leaves, atomic lists and maps, empty maps, and
/// each list-map and set item itself.
pub fn fields_of(v: &Value) -> Set {
    let mut out = Set::default();
    if let Value::Object(m) = v {
        collect_children(m, &mut Vec::new(), &mut Vec::new(), &mut out, false);
    }
    out
}

/// `own`: maps (other than by-value structs) are members themselves, as
/// kube-apiserver records a map an update added.
fn collect_children(
    m: &Map<String, Value>,
    fields: &mut Vec<String>,
    path: &mut Vec<Element>,
    out: &mut Set,
    own: bool,
) {
    for (k, c) in m {
        fields.push(k.clone());
        path.push(Element::Field(k.clone()));
        collect(c, fields, path, out, own);
        path.pop();
        fields.pop();
    }
}

fn collect(v: &Value, fields: &mut Vec<String>, path: &mut Vec<Element>, out: &mut Set, own: bool) {
    match v {
        Value::Object(m) if !m.is_empty() && !atomic_map(fields) => {
            if own && !value_struct(fields) {
                out.insert(path);
            }
            collect_children(m, fields, path, out, own)
        }
        Value::Array(items) => match list_type(fields) {
            ListType::Map(keys) if items.iter().all(|i| key_of(i, keys).is_some()) => {
                for item in items {
                    let Some(k) = key_of(item, keys) else {
                        continue;
                    };
                    path.push(k);
                    out.insert(path);
                    if let Value::Object(m) = item {
                        collect_children(m, fields, path, out, own);
                    }
                    path.pop();
                }
            }
            ListType::Set => {
                for item in items {
                    path.push(value_element(item));
                    out.insert(path);
                    path.pop();
                }
            }
            _ => out.insert(path),
        },
        _ => out.insert(path),
    }
}

/// Merges `applied` into `live`: maps field by field, list-maps item by
/// item (new items appended), sets by union; anything else replaced.
pub fn merge(live: &mut Value, applied: &Value) {
    merge_at(live, applied, &mut Vec::new())
}

fn merge_at(live: &mut Value, applied: &Value, fields: &mut Vec<String>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !atomic_map(fields) => {
            for (k, av) in a {
                fields.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge_at(lv, av, fields),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                fields.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_type(fields) {
            ListType::Map(keys) if a.iter().chain(l.iter()).all(|i| key_of(i, keys).is_some()) => {
                for ai in a {
                    let key = key_of(ai, keys);
                    match l.iter_mut().find(|li| key_of(li, keys) == key) {
                        Some(li) => merge_at(li, ai, fields),
                        None => l.push(ai.clone()),
                    }
                }
            }
            ListType::Set => {
                for ai in a {
                    if !l.contains(ai) {
                        l.push(ai.clone());
                    }
                }
            }
            _ => *l = a.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// What turned `old` into `new`: the fields set or changed (a map or
/// list item that appeared is itself a member, as kube-apiserver records
/// it), and the fields that went away.
pub fn changes(old: &Value, new: &Value) -> (Set, Set) {
    let (mut changed, mut removed) = (Set::default(), Set::default());
    diff(
        old,
        new,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut changed,
        &mut removed,
    );
    (changed, removed)
}

fn diff(
    old: &Value,
    new: &Value,
    fields: &mut Vec<String>,
    path: &mut Vec<Element>,
    changed: &mut Set,
    removed: &mut Set,
) {
    let added = |v: &Value, fields: &mut Vec<String>, path: &mut Vec<Element>, out: &mut Set| {
        if !(v.is_object() && value_struct(fields)) {
            out.insert(path);
        }
        collect(v, fields, path, out, true);
    };
    match (old, new) {
        (Value::Object(o), Value::Object(n)) if !atomic_map(fields) => {
            for (k, nv) in n {
                fields.push(k.clone());
                path.push(Element::Field(k.clone()));
                match o.get(k) {
                    Some(ov) => diff(ov, nv, fields, path, changed, removed),
                    None => added(nv, fields, path, changed),
                }
                path.pop();
                fields.pop();
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                path.push(Element::Field(k.clone()));
                removed.insert(path);
                path.pop();
            }
        }
        (Value::Array(o), Value::Array(n)) if old != new => match list_type(fields) {
            ListType::Map(keys) if o.iter().chain(n).all(|i| key_of(i, keys).is_some()) => {
                for ni in n {
                    let key = key_of(ni, keys);
                    path.push(key.clone().unwrap_or(Element::Index(0)));
                    match o.iter().find(|oi| key_of(oi, keys) == key) {
                        Some(oi) => diff(oi, ni, fields, path, changed, removed),
                        None => {
                            changed.insert(path);
                            if let Value::Object(m) = ni {
                                collect_children(m, fields, path, changed, true);
                            }
                        }
                    }
                    path.pop();
                }
                for oi in o {
                    let key = key_of(oi, keys);
                    if !n.iter().any(|ni| key_of(ni, keys) == key) {
                        path.extend(key);
                        removed.insert(path);
                        path.pop();
                    }
                }
            }
            ListType::Set => {
                for ni in n.iter().filter(|ni| !o.contains(ni)) {
                    path.push(value_element(ni));
                    changed.insert(path);
                    path.pop();
                }
                for oi in o.iter().filter(|oi| !n.contains(oi)) {
                    path.push(value_element(oi));
                    removed.insert(path);
                    path.pop();
                }
            }
            _ => changed.insert(path),
        },
        _ if old != new => added(new, fields, path, changed),
        _ => {}
    }
}

/// The value at `path` in `v`.
pub fn get<'a>(v: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut fields = Vec::new();
    let mut v = v;
    for e in &path.0 {
        v = step(v, e, &mut fields)?;
    }
    Some(v)
}

fn step<'a>(v: &'a Value, e: &Element, fields: &mut Vec<String>) -> Option<&'a Value> {
    match e {
        Element::Field(k) => {
            fields.push(k.clone());
            v.get(k)
        }
        Element::Key(_) => {
            let ListType::Map(keys) = list_type(fields) else {
                return None;
            };
            v.as_array()?
                .iter()
                .find(|i| key_of(i, keys).as_ref() == Some(e))
        }
        Element::Value(j) => v.as_array()?.iter().find(|i| &i.to_string() == j),
        Element::Index(i) => v.get(*i),
    }
}

/// Removes what `path` names from `v` (nothing when it is not there).
pub fn remove(v: &mut Value, path: &Path) {
    let Some((last, parents)) = path.0.split_last() else {
        return;
    };
    let mut fields = Vec::new();
    let mut at = v;
    for e in parents {
        // Walk by position so the borrow stays mutable.
        let next = match e {
            Element::Field(k) => {
                fields.push(k.clone());
                at.get_mut(k)
            }
            _ => {
                let i = index_of(at, e, &fields);
                match i {
                    Some(i) => at.get_mut(i),
                    None => None,
                }
            }
        };
        let Some(next) = next else { return };
        at = next;
    }
    match last {
        Element::Field(k) => {
            if let Value::Object(m) = at {
                m.remove(k);
            }
        }
        e => {
            if let Some(i) = index_of(at, e, &fields) {
                if let Value::Array(a) = at {
                    a.remove(i);
                }
            }
        }
    }
}

fn index_of(list: &Value, e: &Element, fields: &[String]) -> Option<usize> {
    let items = list.as_array()?;
    match e {
        Element::Index(i) => (*i < items.len()).then_some(*i),
        Element::Value(j) => items.iter().position(|i| &i.to_string() == j),
        Element::Key(_) => {
            let ListType::Map(keys) = list_type(fields) else {
                return None;
            };
            items
                .iter()
                .position(|i| key_of(i, keys).as_ref() == Some(e))
        }
        Element::Field(_) => None,
    }
}
