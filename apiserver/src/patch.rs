//! The three patch types kubectl sends: JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902), and strategic merge patch in the subset that client
//! side `kubectl apply` and `kubectl patch` use (lists of objects merged by
//! their merge key, `$patch: delete|replace`, other `$` directives
//! dropped). Pure functions over JSON values; a patch that does not apply
//! is an error, never a half-applied object.

use serde_json::{Map, Value};

/// A patch that cannot be applied, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

type Result<T> = std::result::Result<T, PatchError>;

/// RFC 7386: objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The keys by which lists of objects are merged, as Kubernetes' types
/// declare them (`patchMergeKey`); the first one an item has is used.
const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "mountPath",
    "devicePath",
    "ip",
    "type",
    "port",
];

fn merge_key(items: &[Value]) -> Option<&'static str> {
    MERGE_KEYS
        .iter()
        .copied()
        .find(|k| !items.is_empty() && items.iter().all(|i| i.get(k).is_some()))
}

/// Strategic merge patch (the subset described in the module header).
pub fn strategic(target: &mut Value, patch: &Value) -> Result<()> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        match (t.get_mut(k), v) {
            (_, Value::Null) => {
                t.remove(k);
            }
            (Some(Value::Array(cur)), Value::Array(items)) => {
                if let Some(key) = merge_key(items).filter(|_| cur.iter().all(Value::is_object)) {
                    merge_list(cur, items, key)?;
                } else {
                    *cur = items.clone();
                }
            }
            (Some(cur), v) if v.is_object() => strategic(cur, v)?,
            (_, v) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, v)?;
                t.insert(k.clone(), strip_directives(fresh));
            }
        }
    }
    Ok(())
}

fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        v => v,
    }
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], key: &str) -> Result<()> {
    for item in items {
        let id = &item[key];
        let pos = cur.iter().position(|c| &c[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut cur[i], item)?,
            (None, false) => cur.push(strip_directives(item.clone())),
        }
    }
    Ok(())
}

/// RFC 6901: `/a/b~1c` to its unescaped tokens.
fn pointer_tokens(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError(format!("path {path:?} must start with /")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_of<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value> {
    let mut v = doc;
    for t in tokens {
        v = match v {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError(format!("path element {t:?} not found")))?;
    }
    Ok(v)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<()> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_of(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => a.insert(i, value),
            _ => return Err(PatchError(format!("array index {last:?} out of range"))),
        },
        _ => return Err(PatchError(format!("cannot add at {path:?}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value> {
    let tokens = pointer_tokens(path)?;
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| PatchError("cannot remove the whole document".into()))?;
    match parent_of(doc, parents)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Some(a.remove(i)),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| PatchError(format!("nothing to remove at {path:?}")))
}

/// RFC 6902 JSON patch; all operations or none.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError("a JSON patch must be an array of operations".into()))?;
    let mut out = doc.clone();
    for op in ops {
        let field = |k: &str| {
            op.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError(format!("operation {op}: {k:?} required")))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError(format!("operation {op}: \"value\" required")))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut out, field("from")?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let from = pointer_tokens(field("from")?)?;
                let v = parent_of(&mut out, &from)?.clone();
                add(&mut out, path, v)?;
            }
            "test" => {
                let tokens = pointer_tokens(path)?;
                if *parent_of(&mut out, &tokens)? != value()? {
                    return Err(PatchError(format!("test at {path:?} failed")));
                }
            }
            other => return Err(PatchError(format!("unknown operation {other:?}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut v, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_applies_all_or_nothing() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1, 2]}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/spec/x/0", "value": 9},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "test", "path": "/spec/x/1", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b/c": "2"}}, "spec": {"x": [9, 2]}})
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
        assert!(json_patch(
            &doc,
            &json!([{"op": "add", "path": "/spec/x/7", "value": 1}])
        )
        .is_err());
    }

    #[test]
    fn strategic_merge_keeps_other_list_items_by_merge_key() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx"}]}});
        strategic(&mut pod, &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "busybox:2"}, {"name": "b", "$patch": "delete"}]}}))
        .unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
            {"name": "a", "image": "busybox:2", "ports": [{"containerPort": 80}]}]}})
        );
        let mut m = json!({"metadata": {"labels": {"x": "1", "y": "2"}}});
        strategic(
            &mut m,
            &json!({"metadata": {"labels": {"y": null, "z": "3"}}}),
        )
        .unwrap();
        assert_eq!(m, json!({"metadata": {"labels": {"x": "1", "z": "3"}}}));
    }
}
