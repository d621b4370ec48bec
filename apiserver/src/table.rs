//! Server-side `Table` output (`Accept: application/json;as=Table;...`):
//! column definitions and one row of cells per object, as kube-apiserver
//! answers `kubectl get`. The columns of each kind come from a
//! [`Columns`] the caller supplies (the agent hands over the CLI's
//! printers, so `knode get` and `kubectl get` show the same); without
//! one, a generic NAME/AGE table.

use controlplane::{Kind, Object};
use serde_json::{json, Value};

/// The columns of a kind's table.
pub trait Columns: Send + Sync {
    /// Headers with `wide` (every column) or without (the default ones);
    /// the default ones come first.
    fn headers(&self, kind: Kind, wide: bool) -> Vec<&'static str>;
    /// One row's cells, all columns.
    fn cells(&self, obj: &Object) -> Vec<String>;
}

/// NAME and AGE for every kind.
pub struct NameAge;

impl Columns for NameAge {
    fn headers(&self, _: Kind, _: bool) -> Vec<&'static str> {
        vec!["NAME", "AGE"]
    }

    fn cells(&self, obj: &Object) -> Vec<String> {
        let age = obj.meta().creation_timestamp.as_ref().map_or_else(
            || "<unknown>".to_string(),
            |t| {
                let secs = jiff::Timestamp::now().duration_since(t.0).as_secs().max(0);
                match secs {
                    s if s < 120 => format!("{s}s"),
                    s if s < 3 * 3600 => format!("{}m", s / 60),
                    s if s < 48 * 3600 => format!("{}h", s / 3600),
                    s => format!("{}d", s / 86400),
                }
            },
        );
        vec![obj.name().to_string(), age]
    }
}

/// The column definitions of `kind` (wide ones with priority 1).
pub fn column_definitions(cols: &dyn Columns, kind: Kind) -> Value {
    let default = cols.headers(kind, false).len();
    let defs: Vec<Value> = cols
        .headers(kind, true)
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            json!({"name": h, "type": "string", "format": if i == 0 { "name" } else { "" },
                   "description": "", "priority": u8::from(i >= default)})
        })
        .collect();
    Value::Array(defs)
}

/// One table row; `full` embeds the whole object, else its metadata as
/// `PartialObjectMetadata` (what kubectl asks for by default).
pub fn row(cols: &dyn Columns, obj: &Object, full: bool) -> Value {
    let object = if full {
        obj.to_value()
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
               "metadata": serde_json::to_value(obj.meta()).unwrap_or_default()})
    };
    json!({"cells": cols.cells(obj), "object": object})
}

/// A `Table` of `items`.
pub fn table(
    cols: &dyn Columns,
    kind: Kind,
    items: &[Object],
    revision: Option<u64>,
    full: bool,
) -> Value {
    let mut meta = json!({});
    if let Some(r) = revision {
        meta["resourceVersion"] = r.to_string().into();
    }
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
        "columnDefinitions": column_definitions(cols, kind),
        "rows": items.iter().map(|o| row(cols, o, full)).collect::<Vec<_>>(),
    })
}
