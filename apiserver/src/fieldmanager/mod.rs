//! `metadata.managedFields` and server-side apply, after kube-apiserver's
//! field manager over structured-merge-diff: every write through the API
//! records which manager set which fields (an `Update` entry for create,
//! update and patch; an `Apply` entry for an apply), and an apply merges
//! the manager's configuration into the object, removes what it applied
//! before and no longer does (unless someone else owns it), and refuses
//! to change fields another manager owns unless forced. Pure functions
//! over JSON; the request plumbing stays in `server.rs`.

pub mod fieldpath;
pub mod merge;

use serde_json::{json, Value};

use fieldpath::{Element, Path, Set};

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: Set,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// How conflicts name this manager, as kube-apiserver prints it:
    /// `"kubectl-edit" using apps/v1`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s += &format!(" with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s += &format!(" using {}", self.api_version);
        }
        s
    }

    fn to_value(&self) -> Value {
        let mut v = json!({
            "manager": self.manager, "operation": self.operation,
            "apiVersion": self.api_version, "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            v["time"] = t.as_str().into();
        }
        if !self.subresource.is_empty() {
            v["subresource"] = self.subresource.as_str().into();
        }
        v
    }

    fn of(v: &Value) -> Option<Entry> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Entry {
            manager: text("manager")?,
            operation: text("operation")?,
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time"),
            subresource: text("subresource").unwrap_or_default(),
            fields: fieldpath::Set::from_fields_v1(v.get("fieldsV1")?)?,
        })
    }
}

/// The entries of `obj` (those that do not parse are dropped, as
/// kube-apiserver resets managedFields it cannot decode).
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::of).collect())
        .unwrap_or_default()
}

fn set_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_value)
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// `obj` without its managedFields (what the fields are computed over).
fn without_managed(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Fields nobody manages: identity and bookkeeping the server owns, and
/// status (written through its own subresource).
fn managed_only(set: Set) -> Set {
    const META: &[&str] = &[
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ];
    Set::from_paths(set.paths().into_iter().filter(|p| match p.0.as_slice() {
        [Element::Field(f), ..] if matches!(f.as_str(), "apiVersion" | "kind" | "status") => false,
        [Element::Field(m), Element::Field(f), ..] if m == "metadata" => {
            !META.contains(&f.as_str())
        }
        _ => true,
    }))
}

/// `set` without `gone` and everything under `gone`'s members.
fn without_subtrees(set: &Set, gone: &Set) -> Set {
    let gone = gone.paths();
    Set::from_paths(
        set.paths()
            .into_iter()
            .filter(|p| !gone.iter().any(|g| p.0.starts_with(&g.0))),
    )
}

/// Now, as managedFields times are written.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Who writes: the manager's name, and the subresource written through
/// (`""` for the object itself).
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: &'a str,
}

/// Records an update by `who` from `live` (`None`: a create) to `new`:
/// the fields it set or changed become its own (and nobody else's), the
/// fields it removed nobody's. `new` carrying no managedFields keeps
/// `live`'s; carrying some (a client sending back what it read, or `[]`
/// to reset them), uses those.
pub fn update(live: Option<&Value>, new: &mut Value, who: Writer, time: &str) {
    let sent = new
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null());
    let mut entries = match (live, sent) {
        (Some(_), true) => entries_of(new),
        (Some(l), false) => entries_of(l),
        (None, _) => Vec::new(),
    };
    let empty = json!({});
    let old = without_managed(live.unwrap_or(&empty));
    let (changed, removed) = merge::changes(&old, &without_managed(new));
    let (changed, removed) = (managed_only(changed), managed_only(removed));
    if !changed.is_empty() || !removed.is_empty() {
        for e in &mut entries {
            e.fields = without_subtrees(&e.fields.difference(&changed), &removed);
        }
        let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
        match entries
            .iter_mut()
            .find(|e| e.is(who.manager, "Update", who.subresource))
        {
            Some(e) => {
                e.fields = e.fields.union(&changed);
                e.api_version = api_version;
                e.time = Some(time.to_string());
            }
            None => entries.push(Entry {
                manager: who.manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: Some(time.to_string()),
                subresource: who.subresource.to_string(),
                fields: changed,
            }),
        }
    }
    set_entries(new, entries);
}

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner as kube-apiserver names it (`"kubectl-edit" using v1`).
    pub manager: String,
    pub path: Path,
}

/// kube-apiserver's message for failed apply:
/// `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let body = match conflicts {
        [c] => format!("conflict with {}: {}", c.manager, c.path),
        _ => {
            let mut managers: Vec<&str> = Vec::new();
            for c in conflicts {
                if !managers.contains(&c.manager.as_str()) {
                    managers.push(&c.manager);
                }
            }
            managers
                .iter()
                .map(|m| {
                    let paths: Vec<String> = conflicts
                        .iter()
                        .filter(|c| c.manager == *m)
                        .map(|c| format!("- {}", c.path))
                        .collect();
                    format!("conflicts with {m}:\n{}", paths.join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    format!(
        "Apply failed with {n} conflict{}: {body}",
        if n == 1 { "" } else { "s" }
    )
}

/// Server-side apply of `config` by `manager` onto `live` (`None`: the
/// object does not exist yet): the object to write, managedFields
/// included, or the conflicts that stop it. With `force`, conflicting
/// fields are taken from their owners instead.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    time: &str,
) -> Result<Value, Vec<Conflict>> {
    let config = without_managed(config);
    let applied = managed_only(merge::fields_of(&config));
    let mut entries = live.map(entries_of).unwrap_or_default();
    let before = without_managed(live.unwrap_or(&json!({})));
    let mut merged = before.clone();
    merge::merge(&mut merged, &config);

    // What this apply changes: leaves whose value differs, items it adds.
    let changing = Set::from_paths(applied.paths().into_iter().filter(|p| {
        let was = merge::get(&before, p);
        match p.0.last() {
            Some(Element::Key(_) | Element::Value(_)) => was.is_none(),
            _ => was != merge::get(&merged, p),
        }
    }));
    let force = force || upgrading_client_side_apply(live, manager, &changing, &entries);
    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| !e.is(manager, "Apply", "")) {
        let owned = e.fields.intersection(&changing);
        if owned.is_empty() {
            continue;
        }
        if force {
            e.fields = e.fields.difference(&owned);
        } else {
            conflicts.extend(owned.paths().into_iter().map(|path| Conflict {
                manager: e.describe(),
                path,
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // What it applied before and no longer does goes, unless another
    // manager owns it (or something under it).
    let mine = entries.iter().position(|e| e.is(manager, "Apply", ""));
    let previous = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();
    let others = entries
        .iter()
        .filter(|e| !e.is(manager, "Apply", ""))
        .fold(Set::default(), |acc, e| acc.union(&e.fields));
    for p in previous.difference(&applied).paths() {
        if !others.has_under(&p.0) {
            merge::remove(&mut merged, &p);
        }
    }

    let api_version = config["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match mine {
        Some(i) => {
            let e = &mut entries[i];
            if e.fields != applied || e.api_version != api_version {
                e.time = Some(time.to_string());
            }
            e.fields = applied;
            e.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: Some(time.to_string()),
            subresource: String::new(),
            fields: applied,
        }),
    }
    set_entries(&mut merged, entries);
    Ok(merged)
}

/// kubectl's annotation for client-side apply.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether an apply by `kubectl` may take over what it conflicts with
/// because those fields are all in the object's client-side
/// last-applied configuration: kube-apiserver's upgrade path from
/// `kubectl apply` to `kubectl apply --server-side` (its
/// lastAppliedManager). Other managers get their conflicts.
fn upgrading_client_side_apply(
    live: Option<&Value>,
    manager: &str,
    changing: &Set,
    entries: &[Entry],
) -> bool {
    if manager != "kubectl" {
        return false;
    }
    let Some(last) = live
        .and_then(|l| l.pointer("/metadata/annotations"))
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return false;
    };
    let allowed = managed_only(merge::fields_of(&last));
    entries
        .iter()
        .filter(|e| !e.is(manager, "Apply", ""))
        .all(|e| {
            e.fields
                .intersection(changing)
                .difference(&allowed)
                .is_empty()
        })
}

#[cfg(test)]
mod tests;
